"""`data.caption_colour_swap`: the ids a decoder's own caption encoder reads are, with the given
probability, those of its scene's caption with one object's colour changed — one colour word,
never into a held-out pair — while the CLIP states and z_i stay the true caption's."""
import numpy as np
import pytest

from unclip_jax.data import hard_negatives as hn, render, shapes, sources
from unclip_jax.data.pipeline import make_pipeline
from unclip_jax.errors import UserError
from tests.test_data_pipeline import _fake_embeddings, config

LENGTH = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("swap_data"))
    shapes.build(d, "small")
    return d


class WordTokenizer:
    """Whole words → ids (0 = padding), mask = the words present; decodes back."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, captions):
        ids = np.zeros((len(captions), LENGTH), np.int32)
        for i, c in enumerate(captions):
            words = c.replace(",", " ,").split()[:LENGTH]
            ids[i, :len(words)] = [self.vocab.setdefault(w, len(self.vocab) + 1) for w in words]
        return ids, ids > 0

    def words(self, row):
        inverse = {v: k for k, v in self.vocab.items()}
        return [inverse[int(i)] for i in row if i]


def _changed(before: list[str], after: list[str]) -> list[int]:
    assert len(before) == len(after)
    return [j for j, (a, b) in enumerate(zip(before, after)) if a != b]


def _check_one_colour_swapped(before: list[str], after: list[str]):
    """`after` is `before` with one colour word changed, into a pair that is not held out."""
    (j,) = _changed(before, after)
    assert before[j] in render.COLOURS and after[j] in render.COLOURS
    assert after[j + 1] in render.SHAPES            # object phrase: size colour shape
    assert (after[j], after[j + 1]) not in render.HELDOUT_PAIRS


def test_swapped_captions_change_one_colour_never_into_a_heldout_pair():
    scenes = [hn.scene(0, "train", i) for i in range(300)]
    captions = [s[2] for s in scenes]
    seeds = np.stack([np.arange(300), np.full(300, 7)], axis=1)
    out = hn.batch_colour_swaps(captions, scenes, seeds, 1.0)
    for before, after in zip(captions, out):
        _check_one_colour_swapped(before.replace(",", " ,").split(),
                                  after.replace(",", " ,").split())
    # the held-out pairs' other colours do occur: a swap moves a shape next to a new colour
    assert len({(a, b) for c in out for a, b in zip(c.split(), c.split()[1:])
                if a in render.COLOURS and b in render.SHAPES}) > 30
    assert hn.batch_colour_swaps(captions, scenes, seeds, 0.0) == captions
    assert hn.batch_colour_swaps(captions, scenes, seeds, 1.0) == out       # seeded
    with pytest.raises(UserError, match="is not its scene's"):
        hn.batch_colour_swaps(["a small red circle"], scenes[:1], seeds[:1], 1.0)


def test_the_pipeline_swaps_the_caption_ids_only(data_dir, tmp_path):
    _fake_embeddings(str(tmp_path), "validation", 64)
    records = sources.read_records(sources.builder_for("unclip_shapes/small", data_dir),
                                   "validation")
    caption = {int(e["index"]): e["caption"].decode() for e in records.as_numpy_iterator()}

    def batch(p, tok):
        cfg = config("decoder", data_dir, batch_size=64, embeddings_dir=str(tmp_path),
                     caption_colour_swap=p)
        with cfg.unlocked():
            cfg.model.caption_vocab, cfg.model.caption_len = 256, LENGTH

        def tok_full_mask(captions):     # the fake embeddings' mask is all True
            return tok(captions)[0], np.ones((len(captions), LENGTH), bool)
        return next(make_pipeline(cfg, "validation", process_index=0, process_count=1,
                                  keep_index=True, tokenizer=tok_full_mask))

    tok = WordTokenizer()
    plain, swapped = batch(0.0, tok), batch(0.3, tok)
    np.testing.assert_array_equal(plain["index"], swapped["index"])
    for k in ("z_i", "text_states", "text_mask", "image"):          # the rest is untouched
        np.testing.assert_array_equal(plain[k], swapped[k])
    n = 0
    for row, i in zip(swapped["caption_ids"], swapped["index"]):
        words = tok.words(row)
        true = caption[int(i)].replace(",", " ,").split()
        if words != true:
            _check_one_colour_swapped(true, words)
            n += 1
    assert 5 <= n <= 35                 # Binomial(64, 0.3): mean 19, sd 3.7
    np.testing.assert_array_equal(batch(0.3, tok)["caption_ids"], swapped["caption_ids"])


def test_bad_colour_swap_settings_are_clear_errors(data_dir, tmp_path):
    _fake_embeddings(str(tmp_path), "validation", 64)
    cfg = config("decoder", data_dir, batch_size=8, embeddings_dir=str(tmp_path),
                 caption_colour_swap=0.3)
    with pytest.raises(UserError, match="this decoder has none .model.caption_vocab = 0."):
        make_pipeline(cfg, "validation", process_index=0, process_count=1)
    with cfg.unlocked():
        cfg.model.caption_vocab, cfg.model.caption_len = 256, 32
        cfg.data.caption_colour_swap = 1.5
    with pytest.raises(UserError, match="is a probability; give one in"):
        make_pipeline(cfg, "validation", process_index=0, process_count=1,
                      tokenizer=WordTokenizer())


def test_colour_swaps_need_scene_labels():
    from unclip_jax.data.decoder_captions import colour_swap
    cfg = config("decoder", "unused", caption_colour_swap=0.3, name="image_folder")
    with cfg.unlocked():
        cfg.model.caption_vocab = 256
    with pytest.raises(UserError, match="needs scene labels, which only unclip_shapes has "
                                        ".dataset 'image_folder'.; set it to 0"):
        colour_swap(cfg, None, "train")
