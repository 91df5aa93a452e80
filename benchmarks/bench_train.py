"""Train-step throughput of every stage (configs/shapes.py, synthetic data) on this CPU, and
data- vs fsdp-parallel on 8 simulated CPU devices.

    python benchmarks/bench_train.py [--stages prior,decoder] [--steps 10] [--batch 8]

Reports steps/s, examples/s and achieved FLOP/s (XLA cost analysis of the compiled step ×
steps/s) as measured by the trainer itself (`metrics.jsonl`, compile time excluded).
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from unclip_jax.configs import shapes  # noqa: E402
from unclip_jax.train.loop import train  # noqa: E402

STAGES = ["clip", "prior", "ar_prior", "decoder", "upsampler1", "upsampler2"]


def config_for(stage, steps, batch, mesh=None):
    cfg = shapes.get_config(stage)
    with cfg.unlocked():
        cfg.data.name = "synthetic"
        cfg.train.update(dict(batch_size=batch, steps=steps, warmup=1, log_every=steps,
                              ckpt_every=0, sample_every=0))
        if mesh:
            cfg.mesh.update(mesh)
    return cfg


def measure(stage, steps, batch, devices, mesh=None):
    cfg = config_for(stage, steps, batch, mesh)
    with tempfile.TemporaryDirectory() as wd:
        out = train(cfg, wd, devices=devices, progress=False)   # compile time is not timed
        row = json.loads(open(os.path.join(wd, "metrics.jsonl")).readlines()[-1])
    return {"stage": stage, "devices": len(devices), "mesh": mesh or {"data": len(devices)},
            "batch": batch, "steps_per_s": row["steps_per_s"],
            "examples_per_s": row["examples_per_s"], "gflops_per_s": row.get("flops_per_s", 0) / 1e9,
            "gflop_per_step": (out["flops_per_step"] or 0) / 1e9}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--mesh-stages", default="prior,decoder",
                   help="stages compared on 8 devices, data vs fsdp")
    a = p.parse_args()
    rows = []
    for s in filter(None, a.stages.split(",")):
        rows.append(measure(s, a.steps, a.batch, jax.devices()[:1]))
        print(json.dumps(rows[-1]), flush=True)
    for s in filter(None, a.mesh_stages.split(",")):
        for mesh in ({"data": 8, "fsdp": 1}, {"data": 1, "fsdp": 8}):
            rows.append(measure(s, a.steps, a.batch, jax.devices()[:8], mesh))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| stage | devices | mesh | batch | steps/s | examples/s | GFLOP/step | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items())
        print(f"| {r['stage']} | {r['devices']} | {mesh} | {r['batch']} | {r['steps_per_s']:.2f} "
              f"| {r['examples_per_s']:.1f} | {r['gflop_per_step']:.2f} | {r['gflops_per_s']:.1f} |")


if __name__ == "__main__":
    main()
