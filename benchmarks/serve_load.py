"""Load check of `unclip-jax serve`: N generate requests queued at once must all complete.

Starts the server (bundled model unless --checkpoint) on a free port, submits N requests
through Gradio's own client at the same moment (the server's queue runs them one at a
time), waits for all of them, and samples the server's resident memory every 0.2 s.
Prints one JSON object: requests done and failed, wall time, the sampling time of the first
request and the median of the others (as each page reports it), RSS after the first result
and at the end, the largest sample after the first result, and the peak (VmHWM).

    python benchmarks/serve_load.py --requests 20
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

PROMPTS = ["a small red circle on the left", "a large blue square at the top",
           "a green triangle in the middle", "a yellow star on the right",
           "a purple circle at the bottom"]


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--log", default=os.devnull, help="server output goes here")
    args = ap.parse_args()
    from gradio_client import Client

    from unclip_jax.serve import server as serve

    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    extra = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    with open(args.log, "w") as log, serve.running(extra, log=log) as (server, url):
        def sample_rss():
            while not stop.is_set() and server.poll() is None:
                try:
                    samples.append((time.time(), _rss_kib(server.pid)))
                except OSError:
                    break
                time.sleep(0.2)
        threading.Thread(target=sample_rss, daemon=True).start()
        client = Client(url, verbose=False)
        t0 = time.time()
        # the Generate tab's fields: prompts, n, seed, prior, negative, prior steps/guidance,
        # eta, decoder steps/guidance, upsampler steps (empty: the model's defaults)
        jobs = [client.submit(PROMPTS[i % len(PROMPTS)], 1, i, "diffusion", "", "", None, 0.0,
                              "", None, "", api_name="/generate")
                for i in range(args.requests)]
        done, failed, seconds, first_done = 0, [], [], None
        for job in jobs:
            grid, files, status = job.result(timeout=3600)
            if grid and status.startswith("1 image of"):
                done += 1
                seconds.append(float(status.rsplit(" in ", 1)[1].split()[0]))  # "... in 4.2 s"
            else:
                failed.append(status)
            if first_done is None:
                first_done = time.time()
        wall = time.time() - t0
        rss_first = next((r for t, r in samples if t >= first_done), samples[-1][1])
        peak = _rss_kib(server.pid, "VmHWM")
        end_rss = _rss_kib(server.pid)
        alive = server.poll() is None
        stop.set()
    rest = sorted(seconds[1:])
    print(json.dumps({
        "requests": args.requests, "completed": done, "failed": failed,
        "server_alive_after": alive, "wall_s": round(wall, 1),
        "first_request_s": seconds[0] if seconds else None,        # as the page reports it
        "median_request_s_after_first": rest[len(rest) // 2] if rest else None,
        "rss_mib_after_first": round(rss_first / 1024, 1),
        "rss_mib_end": round(end_rss / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
        "rss_mib_max_sampled_after_first": round(max(
            r for t, r in samples if t >= first_done) / 1024, 1),
    }, indent=1))
    return 0 if done == args.requests and alive else 1


if __name__ == "__main__":
    sys.exit(main())
