"""Text rendering of benchmark results (markdown tables) and the machine description."""
from __future__ import annotations

import os
import platform
from typing import Sequence


def machine(devices: Sequence) -> dict:
    """Platform, CPU count, JAX version/backend and the devices used."""
    import jax
    backend = jax.default_backend()
    return {"platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "backend": backend,
            "num_devices": len(devices), "device_kind": devices[0].device_kind,
            "xla_threads": ("one XLA CPU intra-op thread pool over all cores, shared by all "
                            "simulated devices") if backend == "cpu" else None}


def _g(x: float | None, unit: float = 1e9) -> str:
    return "—" if x is None else f"{x / unit:.2f}"


def _row(name: str, part: str, m: dict, state_bytes: int | None) -> str:
    return (f"| {name} | {part} | {m['seconds'] * 1e3:.1f} | {m['examples_per_s']:.1f} | "
            f"{_g(m.get('flops_per_device'))} | {_g(m.get('flops_per_s_per_device'))} | "
            f"{'—' if m.get('fraction_of_peak') is None else format(m['fraction_of_peak'], '.1%')}"
            f" | {'' if state_bytes is None else format(state_bytes / 2**20, '.2f')} |")


def stage_table(r: dict) -> str:
    """Markdown tables of one `benchmark_stage` result: modes, then the PyTorch comparison."""
    lines = [f"\n### {r['stage']}: batch {r['batch_size']}, {r['num_devices']} devices, "
             f"{r['params']:,} parameters",
             "| mode | program | ms / call | examples/s | GFLOP / device / call | "
             "GFLOP/s / device | of peak | params+opt MiB / device |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in r["modes"].items():
        for part in ("train", "sample_step", "sample_loop"):
            label = part if part == "train" else f"{part} ({m[part]['steps']} steps)"
            lines.append(_row(name, label, m[part],
                              m["state_bytes_per_device"] if part == "train" else None))
    c = r["check"]
    lines.append(f"\nfirst-step loss {c[c['reference']]['loss']:.6g}; vs {c['reference']}: " +
                 ", ".join(f"{k} loss Δ {v['loss_diff']:.2g}, params Δ {v['param_diff']:.2g}, "
                           f"sample Δ {v['sample_diff']:.2g}"
                           for k, v in c.items() if isinstance(v, dict) and "loss_diff" in v))
    t = r.get("torch")
    if t:
        lines += [f"\nPyTorch (diffusers) vs JAX jit on one device, torch threads "
                  f"{t['torch_threads']}; parameters: ours {t['params_ours']:,}, diffusers "
                  f"{t['params_torch']:,} ({t['params_torch'] / t['params_ours'] - 1:+.1%})",
                  "| program | JAX ms | PyTorch ms | JAX / PyTorch time | JAX GFLOP/s | JAX of peak |",
                  "|---|---|---|---|---|---|"]
        for part, ratio in t["time_ratio_jax_over_torch"].items():
            j = t["jax_1device"][part]
            lines.append(f"| {part} | {j['seconds'] * 1e3:.1f} | "
                         f"{t['torch'][part]['seconds'] * 1e3:.1f} | {ratio:.2f} | "
                         f"{_g(j.get('flops_per_s_per_device'))} | "
                         f"{'—' if j.get('fraction_of_peak') is None else format(j['fraction_of_peak'], '.1%')} |")
    return "\n".join(lines)


def peak_line(results: dict) -> str:
    p = results["peak"]
    return (f"matmul peak (f32, {p['all_devices']['size']}², all devices at once): "
            f"{p['all_devices']['peak_flops_per_s_per_device'] / 1e9:.1f} GFLOP/s per device; "
            f"one device alone: {p['one_device']['peak_flops_per_s_per_device'] / 1e9:.1f} GFLOP/s")
