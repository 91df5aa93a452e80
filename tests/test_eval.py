"""Evaluation: metric math against analytic answers, the attribute classifier on a small
`unclip_shapes` build, and `unclip-jax eval` on tiny random checkpoints."""
import json
import os

import jax
import numpy as np
import pytest

from pipeline_fixtures import checkpoints
from unclip_jax import cli
from unclip_jax.sample.images import to_uint8
from unclip_jax.errors import UserError
from unclip_jax.eval import metrics
from unclip_jax.eval.data import ATTRIBUTES
from unclip_jax.eval.upsamplers import bicubic, psnr, upsampler_scores


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return checkpoints(tmp_path_factory)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from unclip_jax.data import shapes
    d = str(tmp_path_factory.mktemp("shapes_small"))
    shapes.build(d, "small")
    return d


@pytest.fixture(scope="module")
def classifier(shapes_dir, tmp_path_factory):
    from unclip_jax.eval.attributes import train_attribute_classifier
    out = str(tmp_path_factory.mktemp("clf") / "attributes")
    return train_attribute_classifier(shapes_dir, out_dir=out, image_size=16, steps=120,
                                      batch_size=32, learning_rate=3e-3, seed=0)


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --------------------------------------------------------------------------- Fréchet distance

def test_frechet_identical_sets_is_zero():
    f = np.random.default_rng(0).normal(size=(200, 6))
    assert metrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    assert metrics.frechet_distance(f, f + 1.0) == pytest.approx(6.0, rel=1e-6)  # ‖Δμ‖² only


def test_frechet_closed_form_diagonal_and_general():
    rng = np.random.default_rng(1)
    # diagonal covariances: d² = ‖μ1 − μ2‖² + Σ (σ1 − σ2)²
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    got = metrics.frechet_distance_from_stats(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2))
    assert got == pytest.approx(want, rel=1e-8)
    # general covariances: tr (C1 C2)^½ = tr (C1^½ C2 C1^½)^½ via symmetric eigendecompositions
    c1, c2 = _random_cov(rng, 5), _random_cov(rng, 5)
    w, v = np.linalg.eigh(c1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(r1 @ c2 @ r1)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    want = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.sum(np.sqrt(inner))
    got = metrics.frechet_distance_from_stats(m1, c1, m2, c2)
    assert got == pytest.approx(want, rel=1e-6)


def test_frechet_of_samples_approaches_the_gaussians_distance():
    rng = np.random.default_rng(2)
    c1, c2 = _random_cov(rng, 3), _random_cov(rng, 3)
    mu1, mu2 = np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 2.0])
    a = rng.multivariate_normal(mu1, c1, size=40000)
    b = rng.multivariate_normal(mu2, c2, size=40000)
    want = metrics.frechet_distance_from_stats(mu1, c1, mu2, c2)
    assert metrics.frechet_distance(a, b) == pytest.approx(want, rel=0.03)
    assert want > 6.0   # the means alone contribute ‖Δμ‖² = 6


def test_frechet_singular_covariances_stay_real_and_finite():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))   # rank-4 covariances in 16-D
    d = metrics.frechet_distance(a, b)
    assert np.isfinite(d) and d > 0


# --------------------------------------------------------------------------- other metrics

def test_clip_score_is_the_cosine(ckpt):
    from unclip_jax.sample.unclip import UnCLIP
    pipe = UnCLIP.from_directory(ckpt["root"], progress=False)
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    img = pipe.encode_images(images)
    txt = pipe.encode_text(["a red circle", "a blue square", "a green triangle on the left"])
    txt = txt["embeds"]
    got = metrics.clip_score(img, txt)
    direct = [float(np.dot(i, t) / np.sqrt(np.dot(i, i) * np.dot(t, t))) for i, t in zip(img, txt)]
    np.testing.assert_allclose(got["cosine"], direct, rtol=1e-5, atol=1e-6)
    assert got["score"] == pytest.approx(100 * np.mean(direct), rel=1e-5)


def test_diversity():
    rng = np.random.default_rng(5)
    one = rng.normal(size=(3, 1, 8))
    same = np.repeat(one, 4, axis=1)                           # identical images per prompt
    np.testing.assert_allclose(metrics.per_prompt_diversity(same), 0.0, atol=1e-12)
    np.testing.assert_allclose(metrics.per_prompt_diversity(same, "l2"), 0.0, atol=1e-12)
    # two points at distance 5 → mean pairwise L2 distance 5; opposite vectors → cosine distance 2
    pair = np.array([[[0.0, 0.0], [3.0, 4.0]]])
    assert metrics.per_prompt_diversity(pair, "l2")[0] == pytest.approx(5.0)
    assert metrics.per_prompt_diversity(np.array([[[1.0, 0], [-1.0, 0]]]))[0] == pytest.approx(2.0)
    with pytest.raises(UserError, match="at least 2 images per prompt"):
        metrics.per_prompt_diversity(one)


def test_prior_metrics():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(10, 16))
    assert metrics.retrieval_top1(z, z).all()
    np.testing.assert_allclose(metrics.prior_cosine(z, 3.0 * z), 1.0, rtol=1e-12)
    eye = np.eye(5)
    assert not metrics.retrieval_top1(np.roll(eye, 1, axis=0), eye).any()   # every one misses
    np.testing.assert_allclose(metrics.prior_cosine(eye, np.roll(eye, 1, axis=0)), 0.0)


def test_bootstrap_ci_contains_mean_narrows_and_is_reproducible():
    rng = np.random.default_rng(7)
    key = jax.random.key(0)
    small = metrics.bootstrap_ci(rng.normal(size=50), key)
    large = metrics.bootstrap_ci(rng.normal(size=5000), key)
    for ci in (small, large):
        assert ci["lo"] < ci["mean"] < ci["hi"]
    assert (large["hi"] - large["lo"]) < 0.3 * (small["hi"] - small["lo"])   # ∝ 1/√n: ≈ 0.1
    v = rng.normal(size=30)
    assert metrics.bootstrap_ci(v, key) == metrics.bootstrap_ci(v, key)
    # the interval of a standard normal's mean (n = 5000) is ≈ ±1.96/√n
    assert large["hi"] - large["lo"] == pytest.approx(2 * 1.96 / np.sqrt(5000), rel=0.15)
    fd = metrics.bootstrap_statistic(metrics.frechet_distance,
                                     (rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 2),
                                     key, num_resamples=50)
    assert fd["lo"] <= fd["value"] <= fd["hi"] and fd["value"] == pytest.approx(8.0, rel=0.2)


def test_metric_input_errors():
    with pytest.raises(UserError, match="at least one prompt"):
        metrics.bootstrap_ci([], jax.random.key(0))
    with pytest.raises(UserError, match="equal shapes"):
        metrics.cosine(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(UserError, match="NaN"):
        metrics.frechet_distance(np.full((3, 2), np.nan), np.ones((3, 2)))
    with pytest.raises(UserError, match="at least 2 feature vectors"):
        metrics.frechet_distance(np.ones((1, 2)), np.ones((3, 2)))


# --------------------------------------------------------------------------- classifier

@pytest.mark.slow   # trains the attribute classifier: ~50 s
def test_attribute_classifier_learns_colour(classifier):
    acc = classifier["validation_accuracy"]
    assert classifier["num_validation"] >= 10
    assert acc["colour"] > 0.6, acc                  # chance is 1/8
    from unclip_jax.eval.attributes import AttributeClassifier, accuracy
    clf = AttributeClassifier.load(classifier["directory"])
    assert clf.config.stage == "attributes" and clf.image_size == 16
    assert clf.extra["validation_accuracy"] == acc
    # the saved classifier predicts the same on any input size (downsampled to 16 px)
    from unclip_jax.eval.data import load_examples
    val = load_examples(clf.config.data.data_dir, "validation", image_size=64)
    assert accuracy(clf.predict(val["image"]), val)["colour"] > 0.6


# --------------------------------------------------------------------------- unclip-jax eval

def _eval_args(ckpt, data_dir, out, *extra):
    return ["eval", "--checkpoint", ckpt, "--data_dir", data_dir, "--out", str(out),
            "--num_prompts", "3", "--images_per_prompt", "2", "--prior_steps", "2",
            "--decoder_steps", "2", "--upsampler_steps", "2", "--num_resamples", "50",
            "--chunk", "4", *extra]


@pytest.mark.slow   # trains the attribute classifier: ~50 s
def test_eval_cli_writes_every_metric(ckpt, shapes_dir, classifier, tmp_path, capsys):
    out, md = tmp_path / "results.json", tmp_path / "results.md"
    assert cli.main(_eval_args(ckpt["root"], shapes_dir, out, "--classifier",
                               classifier["directory"], "--markdown", str(md),
                               "--upsampler_images", "2")) == 0
    res = json.loads(out.read_text())
    heads = set(ATTRIBUTES) | {"all"}
    for name in ("unclip", "zeroshot_text"):
        m = res["variants"][name]
        assert set(m) == {"clip_score", "clip_cosine", "fd_clip", "diversity", "attributes"}
        assert set(m["attributes"]) == heads
        for ci in (m["clip_score"], m["clip_cosine"], m["diversity"], *m["attributes"].values()):
            assert ci["lo"] <= ci["mean"] <= ci["hi"]
        assert m["clip_score"]["mean"] == pytest.approx(100 * m["clip_cosine"]["mean"])
        assert m["fd_clip"]["value"] > 0 and m["diversity"]["n"] == 3
        assert m["attributes"]["colour"]["n"] == 6
    for key in ("prior", "prior_text_baseline"):
        assert set(res[key]) == {"cosine", "top1"}
    assert set(res["real"]["attributes"]) == heads
    assert res["classifier"]["validation_accuracy"] == classifier["validation_accuracy"]
    assert res["settings"]["split"] == "validation" and res["settings"]["num_prompts"] == 3
    printed = capsys.readouterr().out
    assert "| prior + decoder (unCLIP) |" in printed and md.read_text() in printed
    assert set(res["upsamplers"]) == {"upsampler1", "upsampler2"}
    assert "| upsampler2 | 16 → 32 px |" in printed


def test_decode_in_chunks_pads_without_changing_rows(ckpt):
    """6 rows in chunks of 4 (the last chunk padded): each chunk's rows equal that chunk
    decoded alone, so padding never leaks into results."""
    from unclip_jax.eval.evaluate import decode_in_chunks
    from unclip_jax.sample.unclip import UnCLIP
    pipe = UnCLIP.from_directory(ckpt["root"], progress=False)
    text = pipe.encode_text(["a red circle", "a blue square"] * 3)
    z = np.random.default_rng(8).normal(size=(6, 16)).astype(np.float32)
    kw = dict(decoder_steps="2", upsampler_steps="2")
    key = jax.random.key(3)
    both = decode_in_chunks(pipe, z, text, key, 4, kw)
    assert both.shape == (6, 32, 32, 3) and both.dtype == np.uint8
    rows = [4, 5, 0, 1]                               # other padding than the call's [4, 5, 5, 5]
    out = pipe.decode(z[rows], jax.random.fold_in(key, 1), text={k: v[rows] for k, v in text.items()},
                      **kw)
    tail = to_uint8(out["upsampler2"])[:2]
    np.testing.assert_array_equal(both[4:], tail)


def test_eval_real_clip_score_matches_direct_computation(ckpt, shapes_dir, tmp_path):
    """The 'real' row's CLIP cosine is the cosine between the split's real images and their
    captions in the checkpoint's CLIP, computed here independently of evaluate()."""
    from unclip_jax.eval.evaluate import evaluate
    from unclip_jax.eval.data import load_examples
    from unclip_jax.sample.unclip import UnCLIP
    res = evaluate(ckpt["root"], shapes_dir, num_prompts=3, images_per_prompt=1,
                   prior_steps="2", decoder_steps="2", upsampler_steps="2",
                   variants=("zeroshot_text",), num_resamples=50)
    pipe = UnCLIP.from_directory(ckpt["root"], progress=False)
    size = pipe.image_size("upsampler2")                 # the chain's output size
    real = load_examples(shapes_dir, "validation", image_size=size, limit=3)
    img = pipe.encode_images(real["image"])
    txt = pipe.encode_text(real["caption"])["embeds"]
    cos = np.sum(img * txt, -1) / np.linalg.norm(img, axis=-1) / np.linalg.norm(txt, axis=-1)
    assert res["real"]["clip_cosine"]["mean"] == pytest.approx(cos.mean(), abs=1e-5)
    assert "diversity" not in res["variants"]["zeroshot_text"]     # 1 image per prompt


def test_eval_compares_the_diffusion_and_ar_priors(ckpt, shapes_dir, tmp_path):
    """With prior/ and ar_prior/ in one model, 'unclip' samples z_i with the diffusion prior and
    'unclip_ar' with the AR prior; both get prior metrics and a row in the table."""
    from unclip_jax.eval.evaluate import evaluate
    from unclip_jax.eval.report import format_markdown
    root = tmp_path / "both"
    root.mkdir()
    for n in ("clip", "tokenizer", "prior", "ar_prior", "decoder"):
        os.symlink(ckpt[n], root / n)
    res = evaluate(str(root), shapes_dir, num_prompts=3, images_per_prompt=1,
                   prior_steps="2", decoder_steps="2", variants=("unclip", "unclip_ar"),
                   num_resamples=50)
    assert set(res["variants"]) == {"unclip", "unclip_ar"}
    for key in ("prior", "prior_ar"):
        assert -1.0 <= res[key]["cosine"]["mean"] <= 1.0 and set(res[key]) == {"cosine", "top1"}
    assert res["prior"]["cosine"]["mean"] != res["prior_ar"]["cosine"]["mean"]
    table = format_markdown(res)
    assert "| AR prior + decoder |" in table and "| AR prior sample |" in table


@pytest.mark.parametrize("change, message", [
    (("--checkpoint", "MISSING"), "does not exist"),
    (("--split", "training"), "unknown split 'training'; choose one of"),
    (("--num_prompts", "0"), "num_prompts=0 must be an integer ≥ 1"),
    (("--variants", "unclip,best"), "unknown variant 'best'"),
])
def test_eval_cli_bad_inputs(ckpt, shapes_dir, tmp_path, capsys, change, message):
    flag, value = change
    if value == "MISSING":
        value = str(tmp_path / "no_such_model")
    args = _eval_args(ckpt["root"], shapes_dir, tmp_path / "r.json") + [flag, value]  # last wins
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("unclip-jax: error: ") and message in err
    assert not (tmp_path / "r.json").exists()


def test_eval_errors_name_the_fix(shapes_dir, tmp_path, capsys):
    from unclip_jax.eval.data import resolve_dataset
    with pytest.raises(UserError, match="data build shapes"):
        resolve_dataset(str(tmp_path / "nothing"))
    assert cli.main(["eval", "--checkpoint", "x", "--data_dir", shapes_dir, "--out", "o.json",
                     "--train_classifier"]) == 2
    assert "--train-classifier needs --classifier DIR" in capsys.readouterr().err
    assert cli.main(["eval", "--data_dir", shapes_dir, "--out", "o.json"]) == 2
    assert "eval needs --checkpoint MODEL_DIR" in capsys.readouterr().err
    from unclip_jax.eval import evaluate
    with pytest.raises(UserError, match="images_per_prompt=0 must be an integer"):
        evaluate.evaluate(str(tmp_path), shapes_dir, images_per_prompt=0)


def test_merge_unites_variants_of_one_evaluation():
    from unclip_jax.eval.report import format_markdown, merge
    settings = dict(split="validation", num_prompts=3, images_per_prompt=2, seed=0,
                    num_reference=6)
    entry = {"mean": 0.5, "lo": 0.4, "hi": 0.6, "n": 3}
    a = {"settings": settings, "variants": {"unclip": {"clip_score": entry}},
         "prior": {"cosine": entry, "top1": entry}, "real": {"clip_score": entry},
         "timings_s": {"unclip": 1.0}}
    b = {"settings": dict(settings), "variants": {"unclip_ar": {"clip_score": entry}},
         "prior_ar": {"cosine": entry, "top1": entry}, "real": {"clip_score": entry},
         "timings_s": {"unclip_ar": 2.0}}
    m = merge(a, b)
    assert list(m["variants"]) == ["unclip", "unclip_ar"] and "prior_ar" in m
    assert m["timings_s"] == {"unclip": 1.0, "unclip_ar": 2.0}
    table = format_markdown(m)
    assert "| AR prior + decoder |" in table and "| diffusion prior sample |" in table
    with pytest.raises(ValueError, match="different splits"):
        merge(a, dict(b, settings=dict(settings, split="test_heldout")))


# --------------------------------------------------------------------------- upsamplers

def test_psnr_analytic():
    a = np.full((2, 4, 4, 3), 100, np.uint8)
    b = a.copy()
    b[0] += 5                                   # every value off by 5 → MSE 25
    b[1, 0, 0, 0] += 8                          # one value of 48 off by 8 → MSE 64/48
    got = psnr(b, a)
    np.testing.assert_allclose(got, [20 * np.log10(255 / 5), 10 * np.log10(255 ** 2 * 48 / 64)])
    assert psnr(a, a)[0] == pytest.approx(10 * np.log10(255 ** 2 / 0.01))
    with pytest.raises(ValueError, match="equal shapes"):
        psnr(a, a[:, :2])


def test_bicubic_of_a_constant_image_is_constant():
    x = np.full((1, 4, 4, 3), 77, np.uint8)
    np.testing.assert_array_equal(bicubic(x, 12), np.full((1, 12, 12, 3), 77, np.uint8))


def test_upsampler_scores_match_an_independent_computation(ckpt, shapes_dir):
    from unclip_jax.eval.data import load_examples
    from unclip_jax.sample.unclip import UnCLIP
    pipe = UnCLIP.from_directory(ckpt["root"], progress=False)
    res = upsampler_scores(pipe, shapes_dir, "validation", num_images=3, key=jax.random.key(0),
                           steps="2", chunk=2, num_resamples=20)
    assert list(res) == ["upsampler1", "upsampler2"]
    assert (res["upsampler1"]["input_size"], res["upsampler1"]["output_size"]) == (8, 16)
    assert (res["upsampler2"]["input_size"], res["upsampler2"]["output_size"]) == (16, 32)
    for stage, u in res.items():
        hi = load_examples(shapes_dir, "validation", image_size=u["output_size"], limit=3)["image"]
        lo = load_examples(shapes_dir, "validation", image_size=u["input_size"], limit=3)["image"]
        up = jax.image.resize(lo.astype(np.float32), (3, u["output_size"], u["output_size"], 3),
                              "bicubic")
        ref = np.clip(np.round(np.asarray(up)), 0, 255)
        mse = ((ref - hi.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
        assert u["psnr_bicubic"]["mean"] == pytest.approx(
            np.mean(10 * np.log10(255 ** 2 / mse)), abs=0.05)
        assert u["psnr"]["n"] == 3 and u["psnr"]["lo"] <= u["psnr"]["mean"] <= u["psnr"]["hi"]
        # a random network is far worse than interpolation
        assert u["psnr"]["mean"] < u["psnr_bicubic"]["mean"]


def test_eval_true_z_i_variant_decodes_the_real_images_embeddings(ckpt, shapes_dir):
    """'true_z_i' feeds the decoder each prompt's own real-image z_i (the decoder's ceiling):
    the same images as decoding those embeddings directly."""
    from unclip_jax.eval.evaluate import decode_in_chunks, evaluate
    from unclip_jax.eval.data import load_examples
    from unclip_jax.sample.unclip import UnCLIP
    kw = dict(decoder_steps="2", upsampler_steps="2")
    res = evaluate(ckpt["root"], shapes_dir, num_prompts=2, images_per_prompt=2,
                   variants=("true_z_i",), num_resamples=20, **kw)
    assert set(res["variants"]) == {"true_z_i"}
    pipe = UnCLIP.from_directory(ckpt["root"], progress=False)
    real = load_examples(shapes_dir, "validation", image_size=pipe.image_size("upsampler2"),
                         limit=4)
    z = np.repeat(pipe.encode_images(real["image"])[:2], 2, axis=0)
    text = pipe.encode_text([c for c in real["caption"][:2] for _ in range(2)])
    images = decode_in_chunks(pipe, z, text, jax.random.key(0), 64, kw)
    feats = pipe.encode_images(images)
    cos = np.sum(feats * text["embeds"], -1) / np.linalg.norm(feats, axis=-1) / np.linalg.norm(
        text["embeds"], axis=-1)
    assert res["variants"]["true_z_i"]["clip_cosine"]["mean"] == pytest.approx(cos.mean(),
                                                                               abs=1e-4)
