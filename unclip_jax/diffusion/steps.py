"""The steps grammar: one string that says how many sampling steps a stage runs and how.

    "25"        25 steps, the stage's configured sampler, evenly spaced (Improved DDPM)
    "10,10,5"   0..T-1 split into 3 equal sections with 10, 10 and 5 steps (Improved DDPM)
    "ddim25"    25 steps of DDIM with an even integer stride

Case and surrounding spaces are ignored; an int N means "N". This module is the one parser
of that grammar: `schedules.space_timesteps` turns a parsed string into timesteps, the
sampling engine validates user input with `check` and picks the sampler with `uses_ddim`.
"""
from __future__ import annotations

import dataclasses
import re

from unclip_jax.errors import UserError

_GRAMMAR = re.compile(r"^(ddim)?(\d+(?:,\d+)*)$")
EXAMPLES = "e.g. '250', 'ddim25' or '10,10,5'"


class StepsError(ValueError):
    """A steps string that does not parse or does not fit; `reason` is the message without
    the string itself (callers name the setting it came from)."""

    def __init__(self, steps, reason: str):
        super().__init__(f"respacing {steps!r} {reason}")
        self.steps, self.reason = steps, reason


@dataclasses.dataclass(frozen=True)
class Steps:
    """A parsed steps string: `ddim` (the DDIM form) and the step count of each section."""
    ddim: bool
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)


def normalize(steps) -> str:
    """The canonical spelling: str, stripped, lower case ('DDIM25 ' → 'ddim25')."""
    return str(steps).strip().lower()


def parse(steps, timesteps: int | None = None) -> Steps:
    """'25' / 'ddim25' / '10,10,5' (or an int) → Steps; StepsError when it does not parse,
    a count is < 1, 'ddim' has several counts, or (timesteps given) the total exceeds T."""
    if isinstance(steps, bool):
        raise StepsError(steps, f"is not a step count; use {EXAMPLES}")
    m = _GRAMMAR.match(normalize(steps))
    if not m:
        raise StepsError(steps, f"is not a step count; use {EXAMPLES}")
    counts = tuple(int(c) for c in m.group(2).split(","))
    if min(counts) < 1:
        raise StepsError(steps, f"asks for {min(counts)} steps: the number of steps must be "
                                "at least 1")
    if m.group(1) and len(counts) != 1:
        raise StepsError(steps, "has several counts but 'ddim' takes a single count, e.g. "
                                "'ddim25'")
    parsed = Steps(bool(m.group(1)), counts)
    if timesteps is not None and parsed.total > int(timesteps):
        raise StepsError(steps, f"asks for {parsed.total} steps but the model was trained with "
                                f"T={int(timesteps)} steps; use at most {int(timesteps)} steps")
    return parsed


def check(name: str, steps, timesteps: int) -> str:
    """Validate user input against the trained T → its normalised string; UserError naming
    the setting (`name`, e.g. 'decoder steps') otherwise."""
    try:
        parse(steps, timesteps)
    except StepsError as e:
        raise UserError(f"{name}={steps!r} {e.reason}") from None
    return normalize(steps)


def uses_ddim(steps, default_sampler: str) -> bool:
    """'ddimN' always means DDIM; a plain count uses the stage's configured sampler."""
    return parse(steps).ddim or default_sampler == "ddim"


def as_ddim(steps) -> str:
    """A single plain count 'N' → 'ddimN' (the DDIM form of the same count); anything else
    normalised and unchanged (an invalid string is left for `check` to report)."""
    s = normalize(steps)
    try:
        parsed = parse(s)
    except StepsError:
        return s
    return f"ddim{s}" if not parsed.ddim and len(parsed.counts) == 1 else s


def with_count(config_steps, count: int) -> str:
    """`count` steps with the sampler `config_steps` names: 'ddimN' when it is the DDIM
    form, else 'N'."""
    return f"ddim{int(count)}" if parse(config_steps).ddim else str(int(count))
