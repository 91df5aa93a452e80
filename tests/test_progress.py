"""Progress while sampling: the stage bar says when a program compiles, each stage shows its
diffusion steps as they run, and the step reports change no pixel."""
import jax
import numpy as np
import pytest

from pipeline_fixtures import CAPTIONS, dirs, pipe  # noqa: F401  (fixtures)
from unclip_jax.sample import progress
from unclip_jax.sample.unclip import UnCLIP

STEPS = dict(prior_steps="3", decoder_steps="3", upsampler_steps="ddim2")


@pytest.fixture(autouse=True)
def own_programs():
    """Programs compiled here leave the process-wide cache afterwards (other tests count the
    programs of the shared tiny checkpoints)."""
    from unclip_jax.sample.programs import PROGRAMS
    before = dict(PROGRAMS)
    yield
    PROGRAMS.clear()
    PROGRAMS.update(before)


def test_step_bar_counts_distinct_timesteps(capsys):
    progress.report_step(5)                                   # no request: nothing to count
    with progress.StageBar(2, "generate") as bar:
        assert progress.active() is bar
        progress.advance(bar, "decoder")
        bar.begin_steps("decoder", 3)
        for t in (999, 999, 500, 0, 500):                     # repeats: several devices, RePaint
            progress.report_step(t)
        assert bar.steps.n == 3
        progress.advance(bar, None)
        assert bar.steps is None
    assert progress.active() is None
    with progress.StageBar(1, "hidden", enabled=False):
        assert progress.active() is None                      # a hidden bar traces no reports


def test_reports_count_every_step_of_a_sharded_sampler_and_change_nothing(devices8):
    """A DDIM loop vmapped per example over 8 devices, as the stage programs run: traced with
    step reports, the host counts each of its 7 steps once, and the samples are the same."""
    from unclip_jax.diffusion import samplers
    from unclip_jax.diffusion.schedules import respace
    from unclip_jax.sample.programs import Programs, example_keys, per_example

    sched = respace("cosine", 1000, [0, 100, 300, 500, 700, 850, 999])
    programs = Programs(devices8)
    (x,), idx, n = programs.pad(np.random.default_rng(0).normal(size=(8, 4, 4, 3)))

    def program():        # a new function per call, as the stage runs make them
        def fn(sched, key, idx, x):
            def one(k, x):
                model = lambda x_t, t: 0.1 * x_t * (t[:, None, None, None] / 1e3)  # noqa: E731
                return samplers.ddim_sample(progress.reporting_steps(model), sched, x.shape, k,
                                            predict="eps", eta=0.5, x_T=x)
            return per_example(one, example_keys(key, idx), x)
        return fn

    args = (sched, jax.random.key(0), idx, x)
    plain = programs.run("t", ("d", "i"), (False,), program(), args)
    with progress.StageBar(1, "test") as bar:
        bar.begin_steps("t", sched.num_steps)
        with progress.tracing_step_reports(True):
            shown = programs.run("t", ("d", "i"), (True,), program(), args)
        np.testing.assert_array_equal(np.asarray(shown), np.asarray(plain))
        bar.end_steps()
    assert bar.counted == [("t", 7, 7)]


@pytest.mark.slow       # the tiny chain compiled twice (~40 s on 2 cores)
def test_generate_shows_compiling_and_steps_and_the_same_pixels(dirs, pipe, capsys,  # noqa: F811
                                                                 monkeypatch):
    shown = UnCLIP.from_directory(dirs["root"], progress=True)
    bars = []
    make = shown.bar
    monkeypatch.setattr(shown, "bar", lambda *a: bars.append(make(*a)) or bars[-1])
    a = shown.generate(CAPTIONS[:1], 3, **STEPS)
    assert "clip+prior (compiling…)" in capsys.readouterr().err    # the first request compiles
    # every diffusion step of every stage was counted on the host while the program ran
    assert bars[0].counted == [("prior", 3, 3), ("decoder", 3, 3), ("upsampler1", 2, 2),
                               ("upsampler2", 2, 2)]
    b = pipe.generate(CAPTIONS[:1], 3, **STEPS)                  # no bar: no step reports
    np.testing.assert_array_equal(a, b)
    shown.generate(CAPTIONS[:1], 3, **STEPS)                     # compiled: no notice now
    assert "(compiling…)" not in capsys.readouterr().err
