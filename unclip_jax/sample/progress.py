"""A progress bar over the stages of one request (clip+prior, decoder, upsamplers, ...).

`StageBar` is a tqdm bar counting stages whose postfix names the stage now running; the web
demo follows it through `gr.Progress(track_tqdm=True)`. The stage in progress is kept on the
`StageBar`, so the bar counts a stage when the next one starts (or at `advance(bar, None)`).
"""
from __future__ import annotations

from tqdm.auto import tqdm


class StageBar:
    """tqdm over `total` stages, titled `desc`; hidden when not `enabled`."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.tqdm = tqdm(total=total, desc=desc, unit="stage", disable=not enabled,
                         leave=False)
        self.current: str | None = None

    def __enter__(self) -> "StageBar":
        return self

    def __exit__(self, *exc) -> None:
        self.tqdm.close()


def advance(bar: StageBar | None, name: str | None) -> None:
    """Count the stage in progress as done (if any) and show `name` as running (None: the
    request is finished). A None bar does nothing."""
    if bar is None:
        return
    if bar.current is not None:
        bar.tqdm.update(1)
    bar.current = name
    if name is not None:
        bar.tqdm.set_postfix_str(name)
