"""Progress of one request: a bar over its stages (clip+prior, decoder, upsamplers, ...),
and within the stage in progress a bar over its diffusion steps.

`StageBar` is a tqdm bar counting stages whose postfix names the stage now running; the web
demo follows it through `gr.Progress(track_tqdm=True)`. The stage in progress is kept on the
`StageBar`, so the bar counts a stage when the next one starts (or at `advance(bar, None)`).

Steps: a stage's sampler is one compiled loop, so the host cannot count its steps from
outside. When the request shows a bar, the stage programs are traced with
`reporting_steps(model_fn)`, which adds a `jax.debug.callback` per model call carrying the
timestep; `report_step` counts distinct timesteps on the step bar of the active `StageBar`.
The callback changes no value (the step bar is display only), but JAX does not write
programs with host callbacks to its persistent compilation cache, so they are traced only
while a bar is shown (the flag is part of the program cache key: `tracing_step_reports`).
"""
from __future__ import annotations

import contextlib

from tqdm.auto import tqdm

_ACTIVE: list["StageBar"] = []       # the bars of requests in progress (innermost last)
_TRACE_REPORTS = [False]              # set while a stage program is traced with step reports


class StageBar:
    """tqdm over `total` stages, titled `desc`; hidden when not `enabled`."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.enabled = enabled
        self.tqdm = tqdm(total=total, desc=desc, unit="stage", disable=not enabled,
                         leave=False)
        self.current: str | None = None
        self.steps = None                # tqdm over the steps of the stage in progress
        self.seen: set[int] = set()
        self.counted: list[tuple[str, int, int]] = []   # (program, steps seen, of total)

    def __enter__(self) -> "StageBar":
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        self.end_steps()
        self.tqdm.close()

    def begin_steps(self, name: str, total: int) -> None:
        """Show a bar over `total` steps of program `name` (replacing the previous one)."""
        self.end_steps()
        self.seen = set()
        self.steps = tqdm(total=total, desc=f"  {name}", unit="step", leave=False,
                          disable=not self.enabled)

    def step(self, t: int) -> None:
        """Count timestep t as done (repeats of a timestep, e.g. from several devices or
        RePaint's resampling, count once)."""
        if self.steps is not None and t not in self.seen:
            self.seen.add(t)
            self.steps.update(1)

    def end_steps(self) -> None:
        if self.steps is not None:
            self.counted.append((self.steps.desc.strip(), self.steps.n, self.steps.total))
            self.steps.close()
            self.steps = None

    def compiling(self, name: str, on: bool) -> None:
        """Say in the postfix that program `name` is compiling (`on`), or stop saying it."""
        if not self.enabled:
            return
        stage = self.current or name
        self.tqdm.set_postfix_str(f"{stage} (compiling…)" if on else stage)


def active() -> StageBar | None:
    """The bar of the request in progress, if one is shown."""
    return next((b for b in reversed(_ACTIVE) if b.enabled), None)


def advance(bar: StageBar | None, name: str | None) -> None:
    """Count the stage in progress as done (if any) and show `name` as running (None: the
    request is finished). A None bar does nothing."""
    if bar is None:
        return
    if bar.current is not None:
        bar.tqdm.update(1)
    bar.end_steps()
    bar.current = name
    if name is not None:
        bar.tqdm.set_postfix_str(name)


def report_step(t) -> None:
    """Host side of a step report: count timestep `t` on the active bar's step bar."""
    bar = active()
    if bar is not None:
        bar.step(int(t))


@contextlib.contextmanager
def tracing_step_reports(on: bool):
    """While tracing a stage program: whether `reporting_steps` adds step reports."""
    before = _TRACE_REPORTS[0]
    _TRACE_REPORTS[0] = bool(on)
    try:
        yield
    finally:
        _TRACE_REPORTS[0] = before


def reporting_steps(model_fn):
    """model_fn(x_t, t [B]) that also reports t[0] to the host at each call, when traced
    inside `tracing_step_reports(True)`; else `model_fn` itself."""
    if not _TRACE_REPORTS[0]:
        return model_fn
    import jax

    def fn(x_t, t):
        jax.debug.callback(report_step, t.reshape(-1)[0])
        return model_fn(x_t, t)
    return fn
