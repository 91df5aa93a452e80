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
        lines += ["", torch_table(t)]
    return "\n".join(lines)


def _ms(m: dict) -> str:
    """'median (min–max)' in ms."""
    return f"{m['seconds'] * 1e3:.1f} ({m['min'] * 1e3:.1f}–{m['max'] * 1e3:.1f})"


def torch_table(t: dict) -> str:
    """Markdown table of a `torch_comparison` result: medians with their range, ratios."""
    names = list(t["torch"])
    load = t["load_average_1min"]
    lines = [f"PyTorch {t['torch_version']} (diffusers models) vs JAX jit on one device; "
             f"{t['cores']} cores; parameters: ours {t['params_ours']:,}, diffusers "
             f"{t['params_torch']:,} ({t['params_torch'] / t['params_ours'] - 1:+.1%}); "
             f"runs interleaved, {t['jax_1device']['train']['runs']} each; 1-min load average "
             f"{load['before']:.2f} before, {load['after']:.2f} after",
             "| program | JAX ms | " + " | ".join(f"PyTorch {n.split('_')[1].rstrip('t')} "
                                                  f"thread(s) ms" for n in names)
             + " | " + " | ".join(f"JAX / PyTorch {n.split('_')[1].rstrip('t')}t" for n in names)
             + " | JAX GFLOP/s |",
             "|---" * (3 + 2 * len(names)) + "|"]
    for part, j in t["jax_1device"].items():
        label = part if part == "train" else f"{part} ({j['steps']} steps)"
        lines.append(f"| {label} | {_ms(j)} | "
                     + " | ".join(_ms(t["torch"][n][part]) for n in names) + " | "
                     + " | ".join(f"{t['time_ratio_jax_over_torch'][n][part]:.2f}" for n in names)
                     + f" | {_g(j.get('flops_per_s_per_device'))} |")
    return "\n".join(lines)


def peak_line(results: dict) -> str:
    p = results["peak"]
    return (f"matmul peak (f32, {p['all_devices']['size']}², all devices at once): "
            f"{p['all_devices']['peak_flops_per_s_per_device'] / 1e9:.1f} GFLOP/s per device; "
            f"one device alone: {p['one_device']['peak_flops_per_s_per_device'] / 1e9:.1f} GFLOP/s")
