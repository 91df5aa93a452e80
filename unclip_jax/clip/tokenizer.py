"""Caption tokenizers: a wrapper around any Hugging Face tokenizer, and a small BPE builder.

`Tokenizer(path, context_length)(captions)` → (ids int32 [B, L], mask bool [B, L]), padded and
truncated to L = context_length. Over-long captions are cut with a `warnings.warn` that says
how many tokens were dropped; the end-of-text token is always kept last.

`build_tokenizer(captions, vocab_size, out_dir)` learns a BPE deterministically (`train_bpe`) and
saves it in the Hugging Face format (loadable by `PreTrainedTokenizerFast` / `AutoTokenizer`).
Its conventions:
  normaliser      NFKC, lowercase (`normalize_caption` is the same on the Python side)
  pre-tokeniser   split on whitespace; words end with the suffix "</w>" so decoding restores
                  the single spaces: decode(encode(x)) == normalize_caption(x)
  special tokens  <pad> = 0, <bos> = 1, <unk> = 2, and <eos> = the LAST id of the vocabulary.
                  Every encoding is "<bos> caption <eos>" padded with <pad>.
The end-of-text token has the largest id so that CLIP's legacy pooling rule (argmax of the
ids, used when the model config says `eos_token_id: 2`, as configs/shapes.py does) lands on
it; setting the model's `eos_token_id` to `Tokenizer.eos_token_id` (first-match rule) pools at
the same position.
"""
from __future__ import annotations

import os
import unicodedata
import warnings
from typing import Iterable, Sequence

import numpy as np

from unclip_jax.errors import UserError
from unclip_jax.jsonio import read_json_object

PAD, BOS, UNK, EOS = "<pad>", "<bos>", "<unk>", "<eos>"
WORD_SUFFIX = "</w>"


def normalize_caption(text: str) -> str:
    """What the built tokenizer sees: NFKC, lowercase, whitespace runs collapsed, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def _check_captions(captions: Sequence[str]) -> list[str]:
    if isinstance(captions, str):
        raise UserError("captions must be a list of strings, got a single string; wrap it "
                        "in a list")
    captions = list(captions)
    if not captions:
        raise UserError("no captions given; pass a non-empty list of strings")
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise UserError(f"caption {i} is a {type(c).__name__}, not a string")
        if not c.strip():
            raise UserError(f"caption {i} is empty (or only whitespace); give every image a "
                            "non-empty caption, or use the empty-prompt embedding explicitly")
    return captions


def read_tokenizer_config(path: str) -> dict:
    """tokenizer_config.json of a tokenizer directory ({} when absent), refusing a directory
    that asks to run its own Python code (`auto_map`)."""
    config_path = os.path.join(path, "tokenizer_config.json")
    if not os.path.isfile(config_path):
        return {}
    cfg = read_json_object(config_path, "restore the tokenizer files")
    if cfg.get("auto_map"):
        raise UserError(f"tokenizer directory {path} asks to run its own Python code "
                        "('auto_map' in tokenizer_config.json); unclip-jax never runs code "
                        "from a model directory — use a standard tokenizer (tokenizer.json)")
    return cfg


def load_hf_tokenizer(path: str):
    """`AutoTokenizer` from a local directory without ever running code from it: a
    tokenizer_config.json whose `auto_map` names the directory's own Python classes is refused
    (never prompted for, whatever stdin holds), and nothing is fetched from the network."""
    read_tokenizer_config(path)
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False,
                                             local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load the tokenizer in {path} ({msg}); pass a directory with "
                        "tokenizer.json (e.g. from `build_tokenizer` or a CLIP "
                        "checkpoint)") from None


class FastTokenizerFile:
    """A directory's tokenizer.json through the `tokenizers` library alone — what
    `transformers`' fast tokenizers wrap, without importing transformers (or torch): the
    sampling path loads in milliseconds. Special tokens come from tokenizer_config.json
    (and special_tokens_map.json), as transformers reads them.

    Offers the part of the Hugging Face tokenizer interface `Tokenizer` uses: calling it on a
    caption or a list of captions → {'input_ids': ids with the post-processor's special
    tokens, untruncated}, the special ids, `decode`, `len`.
    """

    SPECIALS = ("bos_token", "eos_token", "unk_token", "pad_token")

    def __init__(self, path: str):
        from tokenizers import Tokenizer as RustTokenizer
        cfg = read_tokenizer_config(path)
        special_map = os.path.join(path, "special_tokens_map.json")
        if os.path.isfile(special_map):
            cfg = {**read_json_object(special_map, "restore the tokenizer files"), **cfg}
        file = os.path.join(path, "tokenizer.json")
        try:
            self.rust = RustTokenizer.from_file(file)
        except Exception as e:          # the Rust library raises its own Exception type
            raise UserError(f"cannot read {file} ({str(e).splitlines()[0] if str(e) else e}); "
                            "restore the tokenizer files") from None
        self.rust.no_truncation()
        self.rust.no_padding()
        for name in self.SPECIALS:
            setattr(self, f"{name}_id", self._id(cfg.get(name)))
        added = self.rust.get_added_tokens_decoder()
        self.all_special_ids = sorted({i for i, t in added.items() if t.special} |
                                      {getattr(self, f"{n}_id") for n in self.SPECIALS} - {None})

    def _id(self, token) -> int | None:
        if isinstance(token, dict):
            token = token.get("content")
        return None if not isinstance(token, str) else self.rust.token_to_id(token)

    def __len__(self) -> int:
        return self.rust.get_vocab_size(with_added_tokens=True)

    def __call__(self, text, **_) -> dict:
        if isinstance(text, str):
            return {"input_ids": self.rust.encode(text).ids}
        return {"input_ids": [e.ids for e in self.rust.encode_batch(list(text))]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.rust.decode(ids, skip_special_tokens=skip_special_tokens)


class Tokenizer:
    """Tokenise captions with a Hugging Face tokenizer directory to a fixed context length.

    `path`: a tokenizer directory (a CLIP checkpoint's tokenizer files, or one written by
    `build_tokenizer`): with a tokenizer.json it is read by the `tokenizers` library alone
    (`FastTokenizerFile`, no transformers import), otherwise by `transformers.AutoTokenizer`.
    Alternatively pass a loaded HF tokenizer as `hf_tokenizer`. Both give the same ids:
    "<bos> caption <eos>", cut to `context_length` keeping the end-of-text token last, padded.
    """

    def __init__(self, path: str | None = None, context_length: int = 77, hf_tokenizer=None):
        if hf_tokenizer is None:
            if not path or not os.path.isdir(path):
                raise UserError(f"tokenizer directory {path!r} does not exist; pass a directory "
                                "with tokenizer.json (e.g. from `build_tokenizer` or a CLIP "
                                "checkpoint)")
            if os.path.isfile(os.path.join(path, "tokenizer.json")):
                hf_tokenizer = FastTokenizerFile(path)
            else:
                hf_tokenizer = load_hf_tokenizer(path)
        if hf_tokenizer.pad_token_id is None:
            raise UserError("the tokenizer has no padding token; set `pad_token` in its "
                            "tokenizer_config.json")
        self.hf = hf_tokenizer
        self.context_length = int(context_length)
        if self.context_length < 2:
            raise UserError(f"context_length {context_length} is too small; it must hold at "
                            "least the start and end tokens")

    @property
    def eos_token_id(self) -> int:
        return int(self.hf.eos_token_id)

    @property
    def pad_token_id(self) -> int:
        return int(self.hf.pad_token_id)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def __call__(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """captions (list of B strings) → (ids int32 [B, L], mask bool [B, L] True = token)."""
        captions = _check_captions(captions)
        L = self.context_length
        full = self.hf(captions, truncation=False, verbose=False)["input_ids"]
        lengths = [len(ids) for ids in full]
        self._warn_unknown(captions, full)
        over = [(i, n - L) for i, n in enumerate(lengths) if n > L]
        if over:
            worst = max(cut for _, cut in over)
            warnings.warn(
                f"{len(over)} caption(s) longer than the context length {L} were truncated "
                f"(up to {worst} tokens cut; caption {over[0][0]} lost {over[0][1]}); the "
                "end-of-text token is kept", stacklevel=2)
        return self._pad(full)

    def encode_empty(self) -> tuple[np.ndarray, np.ndarray]:
        """The empty caption "" (the unconditional text of classifier-free guidance in
        some checkpoints): (ids int32 [1, L], mask bool [1, L]) — just the start and end
        tokens, padded."""
        return self._pad(self.hf([""], truncation=False, verbose=False)["input_ids"])

    def _pad(self, full: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Token id lists → (ids [B, L] padded with <pad>, mask [B, L]); a list longer than L
        is cut to L with its last (end-of-text) token kept last."""
        L = self.context_length
        ids = np.full((len(full), L), self.pad_token_id, np.int32)
        mask = np.zeros((len(full), L), bool)
        for i, row in enumerate(full):
            row = row if len(row) <= L else row[:L - 1] + row[-1:]   # the end token stays last
            ids[i, :len(row)] = row
            mask[i, :len(row)] = True
        return ids, mask

    def _warn_unknown(self, captions: list[str], full_ids) -> None:
        """Warn about captions whose every token is unknown (the model sees no known word)."""
        unk = self.hf.unk_token_id
        if unk is None:
            return
        specials = set(self.hf.all_special_ids) - {unk}
        bad = [i for i, ids in enumerate(full_ids)
               if (content := [t for t in ids if t not in specials])
               and all(t == unk for t in content)]
        if bad:
            warnings.warn(
                f"{len(bad)} caption(s) are made only of tokens unknown to this tokenizer "
                f"(caption {bad[0]}: {captions[bad[0]][:40]!r}); the model sees no word it "
                "knows — use words from its training captions", stacklevel=3)

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids (with or without specials / padding) → text without special tokens."""
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)


def train_bpe(captions: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-pair merges learned from `captions`, deterministically: the same captions give the
    same vocabulary and merges in every process (ties in pair frequency go to the
    lexicographically smallest pair; no hash order is involved).

    Words are the whitespace-split words of `normalize_caption`; a word's last symbol carries
    WORD_SUFFIX. The base alphabet is every character seen, in both its plain and its
    word-final form, so an unseen word made of seen characters never maps to <unk>.
    Returns (vocab: token → id with <pad>, <bos>, <unk> first and the alphabet sorted after
    them, then one id per merge; merges in the order learned). At most `vocab_size` ids (or the
    specials and the alphabet, if those alone are more).
    """
    counts: dict[str, int] = {}
    for caption in captions:
        for w in normalize_caption(caption).split():
            counts[w] = counts.get(w, 0) + 1
    chars = sorted({ch for w in counts for ch in w})
    alphabet = sorted(set(chars) | {ch + WORD_SUFFIX for ch in chars})
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, UNK] + alphabet)}
    words = sorted(counts)                       # fixed order: the words themselves
    symbols = [list(w[:-1]) + [w[-1] + WORD_SUFFIX] for w in words]
    freq = [counts[w] for w in words]

    def pairs_of(seq):
        return zip(seq[:-1], seq[1:])

    pair_count: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], set[int]] = {}
    for k, seq in enumerate(symbols):
        for p in pairs_of(seq):
            pair_count[p] = pair_count.get(p, 0) + freq[k]
            where.setdefault(p, set()).add(k)
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size and pair_count:
        best = min(pair_count, key=lambda p: (-pair_count[p], p))
        if pair_count[best] <= 0:
            break
        merged = best[0] + best[1]
        merges.append(best)
        if merged not in vocab:
            vocab[merged] = len(vocab)
        for k in sorted(where.pop(best, ())):
            seq = symbols[k]
            for p in pairs_of(seq):               # remove this word's old pairs
                pair_count[p] -= freq[k]
                if pair_count[p] <= 0:
                    del pair_count[p]
                if p in where:
                    where[p].discard(k)
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            symbols[k] = out
            for p in pairs_of(out):               # and count its new ones
                pair_count[p] = pair_count.get(p, 0) + freq[k]
                where.setdefault(p, set()).add(k)
        pair_count.pop(best, None)
    return vocab, merges


def build_tokenizer(captions: Iterable[str], vocab_size: int, out_dir: str,
                    context_length: int = 77) -> str:
    """Learn a BPE of at most `vocab_size` ids (specials included) from `captions`
    (`train_bpe`: deterministic, the same files from the same captions in any process) and
    save it to `out_dir` in the Hugging Face format. Returns `out_dir`.

    The vocabulary may come out smaller than `vocab_size` on a small corpus; <eos> is always
    the last id (see the module docstring).
    """
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    captions = _check_captions(list(captions))
    if vocab_size < 8:
        raise UserError(f"vocab_size {vocab_size} is too small; use at least 8")
    vocab, merges = train_bpe(captions, vocab_size - 1)
    vocab[EOS] = len(vocab)
    tok = RustTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK,
                                   end_of_word_suffix=WORD_SUFFIX))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.BPEDecoder(suffix=WORD_SUFFIX)
    tok.add_special_tokens([PAD, BOS, UNK, EOS])
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    assert eos == tok.get_vocab_size() - 1, "<eos> must be the last id"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=context_length, padding_side="right", truncation_side="right")
    fast.save_pretrained(out_dir)
    return out_dir
