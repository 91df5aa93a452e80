"""The steps grammar ('25', 'ddim25', '10,10,5') has one parser (`unclip_jax.diffusion.steps`):
the respacing (`schedules.space_timesteps`), the sampling engine's checks and the DDIM form
of the manipulations all go through it and agree with the analytic answers."""
import pytest

from unclip_jax.diffusion import schedules
from unclip_jax.diffusion import steps as S
from unclip_jax.errors import UserError
from unclip_jax.sample.diffusers_style import steps_with_count

T = 30
# string → (ddim, counts, timesteps kept out of 0..T-1 (worked out by hand), DDIM form)
VALID = {
    "25": (False, (25,), None, "ddim25"),
    " 3 ": (False, (3,), [0, 14, 29], "ddim3"),            # stride 29/2 = 14.5 → round to 14
    "ddim10": (True, (10,), list(range(0, 30, 3)), "ddim10"),
    "DDIM15": (True, (15,), list(range(0, 30, 2)), "ddim15"),
    "10,10,5": (False, (10, 10, 5), list(range(20)) + [20, 22, 24, 27, 29], "10,10,5"),
    "2,1": (False, (2, 1), [0, 14, 15], "2,1"),
    7: (False, (7,), None, "ddim7"),
}
MALFORMED = ["fast", "ddim", "", "0", "ddim0", "ddim10,5", "5,,5", "-3", "2.5"]
TOO_MANY = ["31", "ddim31", "20,20"]          # well formed, but more than the T = 30 steps


@pytest.mark.parametrize("text", list(VALID), ids=str)
def test_valid_strings_parse_the_same_everywhere(text):
    ddim, counts, kept, ddim_form = VALID[text]
    parsed = S.parse(text, T)
    assert (parsed.ddim, parsed.counts, parsed.total) == (ddim, counts, sum(counts))
    assert S.check("decoder steps", text, T) == str(text).strip().lower()
    assert S.uses_ddim(text, "ddpm") is ddim and S.uses_ddim(text, "ddim") is True
    assert S.as_ddim(text) == ddim_form
    timesteps = schedules.space_timesteps(T, text)
    assert len(timesteps) == sum(counts)
    if kept is not None:
        assert timesteps == kept
    assert len(schedules.respace("cosine", T, S.check("x", text, T)).timesteps) == sum(counts)


@pytest.mark.parametrize("text", MALFORMED + TOO_MANY)
def test_invalid_strings_are_rejected_everywhere(text):
    with pytest.raises(S.StepsError):
        S.parse(text, T)
    with pytest.raises(ValueError):
        schedules.space_timesteps(T, text)
    with pytest.raises(UserError, match=r"^prior steps=.* (is not a step count|at least 1|"
                                         r"single count|at most 30 steps)"):
        S.check("prior steps", text, T)


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_strings_keep_their_text_for_the_check_to_report(text):
    assert S.as_ddim(text) == text.strip().lower()


def test_every_entry_point_uses_the_one_parser(monkeypatch):
    seen = []
    real = S.parse

    def spy(steps, timesteps=None):
        seen.append(steps)
        return real(steps, timesteps)
    monkeypatch.setattr(S, "parse", spy)
    schedules.space_timesteps(T, "5")
    S.check("decoder steps", "6", T)
    S.as_ddim("7")
    S.uses_ddim("ddim8", "ddpm")
    steps_with_count("ddim50", 9)
    assert seen == ["5", "6", "7", "ddim8", "ddim50"]
