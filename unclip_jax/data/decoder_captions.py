"""The caption token ids a decoder with its own caption encoder (`model.caption_vocab > 0`)
reads beside the CLIP token states: its tokenizer, the ids checked against the embeddings'
mask, and the colour-swap augmentation (`config.data.caption_colour_swap`)."""
from __future__ import annotations

import os

import numpy as np

from unclip_jax import paths
from unclip_jax.errors import UserError


def resolve_tokenizer(config, tokenizer):
    """The tokenizer whose ids a decoder's own caption encoder reads (`tokenizer` if given)."""
    if tokenizer is None:
        path = str(config.data.get("caption_tokenizer", "") or "")
        if not path:
            raise UserError("this decoder has its own caption encoder (model.caption_vocab > 0): "
                            "set config.data.caption_tokenizer to the tokenizer directory of "
                            "the CLIP whose embeddings it trains on ('bundled' = the bundled "
                            "model's)")
        if path == "bundled":
            path = os.path.join(paths.BUNDLED_MODEL, "tokenizer")
        from unclip_jax.clip.tokenizer import Tokenizer
        tokenizer = Tokenizer(path, int(config.model.text_len))
    vocab = int(config.model.caption_vocab)
    size = int(getattr(tokenizer, "vocab_size", 0) or 0)
    if size > vocab:
        raise UserError(f"the caption tokenizer has {size} tokens but model.caption_vocab is "
                        f"{vocab}; set model.caption_vocab ≥ {size}")
    return tokenizer


def caption_ids(tokenizer, captions: list[str], text_mask: np.ndarray) -> np.ndarray:
    """Token ids int32 [b, L] of `captions`; UserError unless their mask is `text_mask` [b, L]
    (the embeddings were written by another CLIP's tokenizer, or another caption length)."""
    ids, mask = tokenizer(captions)
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, bool)
    if ids.shape != text_mask.shape or not np.array_equal(mask, np.asarray(text_mask, bool)):
        raise UserError(f"the caption tokenizer does not tokenize these captions as the CLIP "
                        f"that wrote the embeddings did (ids {ids.shape}, embeddings' text_mask "
                        f"{tuple(text_mask.shape)}, masks differ); point "
                        "config.data.caption_tokenizer at that CLIP's tokenizer")
    return ids


def colour_swap(config, builder, split: str):
    """None, or the decoder's caption augmentation `config.data.caption_colour_swap` as
    fn(tok, captions, index [b], seeds [b, 2], ids [b, L], text_mask [b, L]) → ids [b, L]:
    the ids of `hard_negatives.batch_colour_swaps` where the swapped caption tokenizes to the
    same mask, the original ids elsewhere (the CLIP states stay those of the true caption)."""
    p = float(config.data.get("caption_colour_swap", 0.0) or 0.0)
    if p <= 0:
        return None
    if p > 1:
        raise UserError(f"config.data.caption_colour_swap={p} is a probability; give one in [0, 1]")
    name = str(config.data.name)
    if not int(config.model.get("caption_vocab", 0) or 0):
        raise UserError("config.data.caption_colour_swap changes the ids a decoder's own caption "
                        "encoder reads, and this decoder has none (model.caption_vocab = 0); "
                        "set it to 0")
    if not name.startswith("unclip_shapes"):
        raise UserError(f"config.data.caption_colour_swap needs scene labels, which only "
                        f"unclip_shapes has (dataset {name!r}); set it to 0")
    from unclip_jax.data import hard_negatives as hn
    scene_seed = int(builder.builder_config.seed)

    def fn(tok, captions, index, seeds, ids, text_mask):
        scenes = [hn.scene(scene_seed, split, int(i)) for i in index]
        swapped, mask = tok(hn.batch_colour_swaps(captions, scenes, seeds, p))
        same = np.all(np.asarray(mask, bool) == np.asarray(text_mask, bool), axis=1)
        return np.where(same[:, None] & np.asarray(text_mask, bool),
                        np.asarray(swapped, np.int32), ids).astype(np.int32)
    return fn
