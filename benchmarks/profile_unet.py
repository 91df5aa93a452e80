"""Where a UNet step's time goes on the CPU, per op class, from JAX's profiler.

    python benchmarks/profile_unet.py [--stage decoder|upsampler1] [--batch 8] [--iters 3]

Builds the benchmark configurations of docs/benchmarks.md (decoder: 32 px, 64 channels ×
(1, 2, 3), 2 blocks per level, attention at 16 and 8 px; upsampler: 64 px, 64 channels, conv
only), compiles the training step (forward + backward + AdamW) and one guided sampling step
(the decoder's cond/uncond batch of 2B), runs each `--iters` times inside
`jax.profiler.trace`, and sums the XLA op events of the trace by class:

  convolution     XLA convolutions (forward, input and weight gradients)
  dot             matrix products (attention, projections, time embedding)
  layout          transposes and copies (layout changes around convolutions)
  reduce          reductions (GroupNorm statistics, loss)
  elementwise     other fusions (GroupNorm apply, SiLU, scale-shift, residual adds, AdamW)
  other           everything else the runtime reports per op

The numbers are each class's share of the summed op time and ms per call. Run it on an idle
machine; the XLA flags of `unclip_jax.runtime` apply (set UNCLIP_JAX_XLA_DEFAULTS=0 to see
XLA's defaults).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import unclip_jax  # noqa: E402,F401  (applies the XLA CPU settings before JAX starts)
import jax  # noqa: E402

from unclip_jax.configs import shapes  # noqa: E402
from unclip_jax.bench import modes as modes_lib  # noqa: E402
from unclip_jax.bench.workload import build_workload  # noqa: E402

CLASSES = ("convolution", "dot", "layout", "reduce", "elementwise", "other")
# opcode → class; a fusion takes the class of the first of these it contains
OPCODE_CLASS = (("convolution", "convolution"), ("dot", "dot"), ("reduce", "reduce"),
                ("reduce-window", "reduce"), ("transpose", "layout"), ("copy", "layout"))
INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[^=]*?\s([\w\-]+)\(")
COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
CALLS = re.compile(r"calls=%?([\w.\-]+)")


def configs(stage: str):
    if stage == "decoder":
        cfg = shapes.get_config("decoder")
        with cfg.unlocked():
            cfg.model.update(dict(image_size=32, model_channels=64, channel_mult=(1, 2, 3),
                                  num_res_blocks=2, attention_resolutions=(16, 8),
                                  num_head_channels=32, norm_groups=32, text_width=64))
            cfg.data.image_size = 32
        return cfg
    cfg = shapes.get_config(stage)
    with cfg.unlocked():
        cfg.model.update(dict(model_channels=64, norm_groups=32))
    return cfg


def op_classes(hlo_text: str) -> dict[str, str]:
    """{instruction name: class} for every instruction of a compiled program's HLO text; a
    fusion (or call) is classed by the opcodes of the computation it calls."""
    comps: dict[str, list[tuple[str, str, str]]] = {}
    current = None
    for line in hlo_text.splitlines():
        m = COMP.match(line)
        if m and "=" not in line.split("{")[0]:
            current = comps.setdefault(m.group(1), [])
            continue
        m = INSTR.match(line)
        if m and current is not None:
            called = CALLS.search(line)
            current.append((m.group(1), m.group(2), called.group(1) if called else ""))

    def opcodes(comp: str, seen=()) -> set[str]:
        out = set()
        for _, op, called in comps.get(comp, []):
            out.add(op)
            if called and called not in seen:
                out |= opcodes(called, seen + (called,))
        return out

    classes = {}
    for instrs in comps.values():
        for name, op, called in instrs:
            ops = {op} | (opcodes(called) if called else set())
            classes[name] = next((c for o, c in OPCODE_CLASS if o in ops),
                                 "elementwise" if op in ("fusion", "add", "multiply", "select",
                                                         "exponential", "logistic", "tanh",
                                                         "rsqrt", "divide", "subtract",
                                                         "maximum", "broadcast", "convert")
                                 else "other")
    return classes


def op_times(trace_dir: str, classes: dict[str, str]) -> dict[str, float]:
    """Summed microseconds per op class of the perfetto trace written to `trace_dir`."""
    path = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    out: dict[str, float] = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in classes:
            out[classes[e["name"]]] += float(e.get("dur", 0.0))
    return out


def profile(fn, compiled, iters: int) -> dict[str, float]:
    """ms per call of each op class of `compiled` (run as `fn()`), over `iters` calls."""
    classes = op_classes(compiled.as_text())
    fn()
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(iters):
                fn()
        return {k: v / iters / 1e3 for k, v in op_times(d, classes).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="decoder", choices=("decoder", "upsampler1"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args(argv)
    w = build_workload(configs(args.stage), args.batch)
    mode = modes_lib.setup(w, jax.devices()[:1], "dp")
    sample = mode.compile_sample(1)

    def train():
        mode.params, mode.opt_state, loss = mode.train(mode.params, mode.opt_state, mode.batch)
        jax.block_until_ready(loss)

    rows = {"train step": profile(train, mode.train, args.iters),
            "sampling step": profile(lambda: jax.block_until_ready(
                sample(mode.params, mode.sample_inputs)), sample, args.iters)}
    print(f"{args.stage}, batch {args.batch}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
          f"load average {os.getloadavg()[0]:.2f}")
    names = list(CLASSES)
    print("| program | op time ms | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 2) + "|")
    for prog, t in rows.items():
        total = sum(t.values())
        print(f"| {prog} | {total:.1f} | " + " | ".join(
            f"{t.get(n, 0.0):.1f} ({t.get(n, 0.0) / total:.0%})" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
