"""Caption tokenizers: built BPE round trip, HF loading, padding/truncation, pooling position."""
import numpy as np
import pytest

from unclip_jax.clip.model import pooled_index
from unclip_jax.clip.tokenizer import Tokenizer, build_tokenizer, normalize_caption
from unclip_jax.errors import UserError

CAPTIONS = [
    "A red circle on a blue background.",
    "two  green squares, small and bright",
    "a big Yellow triangle above a purple star",
    "Three small circles: red, green and blue!",
    "an orange square next to a grey triangle",
]
CTX = 12


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_tokenizer(CAPTIONS * 3, 120, str(tmp_path_factory.mktemp("tok")), CTX)


@pytest.fixture(scope="module")
def tok(tok_dir):
    return Tokenizer(tok_dir, CTX)


def test_round_trip_and_hf_loading(tok, tok_dir):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    novel = "a purple circle  above an ORANGE star."    # unseen combination of seen words
    for caption in CAPTIONS + [novel]:
        ids = tok.hf(caption)["input_ids"]
        assert tok.decode(ids) == normalize_caption(caption)
    assert normalize_caption(novel) == "a purple circle above an orange star."
    for cls in (AutoTokenizer, PreTrainedTokenizerFast):
        other = cls.from_pretrained(tok_dir)
        assert other(novel)["input_ids"] == tok.hf(novel)["input_ids"]
    assert tok.pad_token_id == 0 and tok.hf.bos_token_id == 1
    assert tok.eos_token_id == tok.vocab_size - 1 <= 119


def test_padding_mask_and_pooled_position(tok):
    ids, mask = tok(["a red circle", "two green squares"])
    assert ids.dtype == np.int32 and ids.shape == (2, CTX) and mask.dtype == bool
    np.testing.assert_array_equal(mask, ids != tok.pad_token_id)
    n = mask.sum(1)
    assert np.all(ids[:, 0] == 1) and np.all(ids[np.arange(2), n - 1] == tok.eos_token_id)
    # where the text model pools: legacy rule (configs/shapes.py: eos_token_id 2) and first match
    np.testing.assert_array_equal(pooled_index(ids, 2), n - 1)
    np.testing.assert_array_equal(pooled_index(ids, tok.eos_token_id), n - 1)


def test_truncation_warns_and_keeps_eos(tok):
    long = " ".join(CAPTIONS)
    full = len(tok.hf(long)["input_ids"])
    assert full > CTX
    with pytest.warns(UserWarning, match=f"truncated \\(up to {full - CTX} tokens cut"):
        ids, mask = tok([long, "a red circle"])
    assert mask[0].all() and ids[0, -1] == tok.eos_token_id
    np.testing.assert_array_equal(ids[0, :-1], tok.hf(long)["input_ids"][:CTX - 1])
    np.testing.assert_array_equal(pooled_index(ids, 2), [CTX - 1, mask[1].sum() - 1])


def test_model_mask_matches_tokenizer_mask(tok):
    import jax

    from unclip_jax.configs.shapes import clip_model
    from unclip_jax.clip.model import CLIP

    cfg = clip_model()
    cfg.text.update(dict(vocab_size=tok.vocab_size, context_length=CTX, width=16, layers=1,
                         heads=2))
    cfg.vision.update(dict(image_size=8, patch_size=8, width=16, layers=1, heads=2))
    model = CLIP.from_config(cfg)
    ids, mask = tok(["a red circle", "three small circles: red, green and blue!"])
    params = model.init(jax.random.key(0), ids, np.zeros((1, 8, 8, 3), np.float32))
    out = model.apply(params, ids, method=CLIP.encode_text)
    np.testing.assert_array_equal(out["mask"], mask)


def test_bad_captions(tok):
    with pytest.raises(UserError, match="caption 1 is empty"):
        tok(["a red circle", "   "])
    with pytest.raises(UserError, match="caption 0 is empty"):
        tok([""])
    with pytest.raises(UserError, match="wrap it in a list"):
        tok("a red circle")
    with pytest.raises(UserError, match="caption 0 is empty"):
        build_tokenizer(["", "a"], 50, "/nonexistent")
    with pytest.raises(UserError, match="tokenizer directory '/nonexistent' does not exist"):
        Tokenizer("/nonexistent", CTX)


def test_build_is_deterministic_across_processes(tmp_path):
    """Two fresh interpreters (different hash seeds) build byte-identical tokenizer files."""
    import os
    import subprocess
    import sys

    script = ("import sys; from unclip_jax.clip.tokenizer import build_tokenizer; "
              f"build_tokenizer({CAPTIONS * 3!r}, 60, sys.argv[1], {CTX})")
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"tok{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env)
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    assert "tokenizer.json" in files and files == sorted(p.name for p in outs[1].iterdir())
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_bpe_merges_frequent_words_first():
    from unclip_jax.clip.tokenizer import train_bpe

    vocab, merges = train_bpe(["red red red circle", "red star"], 40)
    # 'r e' and 'e d</w>' both occur 4×, more than any other pair: the tie goes to the smaller
    assert merges[:2] == [("e", "d</w>"), ("r", "ed</w>")]
    assert "red</w>" in vocab and len(vocab) <= 40
    assert list(vocab.values()) == list(range(len(vocab)))
    again = train_bpe(["red star", "red red red circle"], 40)  # caption order does not matter
    assert again == (vocab, merges)


def _clip_style_tokenizer_dir(tmp_path):
    """A CLIP-layout tokenizer directory (byte-level BPE, <|startoftext|>/<|endoftext|>, pad =
    end token, special tokens given as dicts) written by transformers itself."""
    from tokenizers import Tokenizer as RustTokenizer, models, pre_tokenizers, processors, \
        trainers, decoders
    from transformers import PreTrainedTokenizerFast
    rust = RustTokenizer(models.BPE(unk_token="<|endoftext|>"))
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    rust.train_from_iterator(CAPTIONS * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|startoftext|>", "<|endoftext|>"]))
    bos, eos = rust.token_to_id("<|startoftext|>"), rust.token_to_id("<|endoftext|>")
    rust.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=rust, bos_token="<|startoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(str(tmp_path))
    return str(tmp_path)


@pytest.mark.parametrize("kind", ["built", "clip_style"])
def test_tokenizers_backend_equals_transformers(kind, tok_dir, tmp_path):
    """A directory with tokenizer.json is read by the `tokenizers` library alone; its ids,
    masks (with truncation), special ids and decoding equal transformers' AutoTokenizer's."""
    from unclip_jax.clip.tokenizer import FastTokenizerFile, load_hf_tokenizer
    path = tok_dir if kind == "built" else _clip_style_tokenizer_dir(tmp_path)
    ours = Tokenizer(path, CTX)
    ref = Tokenizer(context_length=CTX, hf_tokenizer=load_hf_tokenizer(path))
    assert isinstance(ours.hf, FastTokenizerFile)
    caps = CAPTIONS + ["a red circle " * 10]
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = ours(caps)
    with pytest.warns(UserWarning, match="truncated"):
        ref_ids, ref_mask = ref(caps)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(mask, ref_mask)
    assert ids[-1, -1] == ref.eos_token_id                 # cut, with the end token kept
    assert (ours.eos_token_id, ours.pad_token_id, ours.vocab_size) == \
        (ref.eos_token_id, ref.pad_token_id, ref.vocab_size)
    assert sorted(ours.hf.all_special_ids) == sorted(ref.hf.all_special_ids)
    assert ours.decode(ids[0]) == ref.decode(ref_ids[0])


def test_sampling_tokenizer_does_not_import_transformers(tok_dir):
    import subprocess
    import sys
    code = ("import sys; from unclip_jax.clip.tokenizer import Tokenizer; "
            f"Tokenizer({tok_dir!r}, {CTX})(['a red circle']); "
            "print('transformers' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out == ["False", "False"]
