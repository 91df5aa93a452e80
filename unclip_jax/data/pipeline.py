"""tf.data input pipelines for each stage, sharded per process and exactly resumable.

`make_pipeline(config, split)` returns a `BatchIterator` of per-process numpy batches:

  clip        {'image' f32 [b,S,S,3] in [-1,1], 'tokens' int32 [b,L]}; with
              config.data.hard_negatives = K > 0 also 'neg_tokens' int32 [b,K,L]: captions
              of the same scene with one attribute changed (`data.hard_negatives`)
  prior,      {'z_i' f32 [b,D], 'z_t' f32 [b,D], 'text_states' f32 [b,L,W],
  ar_prior     'text_mask' bool [b,L]}
  decoder     {'image' f32 [b,S,S,3], 'z_i', 'text_states', 'text_mask'}; with
              config.data.decoder_embedding='text' the 'z_i' entry holds the caption's z_t
              (the paper's §5.1 baseline: a decoder conditioned on the text embedding);
              with config.model.caption_vocab > 0 (the decoder's own caption encoder) also
              'caption_ids' int32 [b,L], the caption tokenized by the tokenizer at
              config.data.caption_tokenizer (the CLIP's, so its mask is 'text_mask')
  upsampler1/2 {'image' f32 [b,c,c,3] high-res crop, 'low_res' f32 [b,c/r,c/r,3] degraded}

b = config.train.batch_size // process_count, S = config.data.image_size, c = crop_size (or S),
r = S / low_res_size. Prior/decoder conditioning comes from precomputed CLIP embeddings
(`config.data.embeddings_dir`, written by `unclip-jax embed`), joined by example index.

Order and resumption: process p reads every P-th record of the split (disjoint shards whose
union is the split); epoch e is that shard shuffled with a buffer seeded by (seed, e); the
stream is the concatenation of epochs. Per-example randomness (crops, degradations) is
stateless, seeded by (seed, process, position in the stream). The state is the number of
batches handed out, so `set_state` rebuilds the stream at that epoch and skips the records
already used — the next batch is exactly the one that would have come next.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import tensorflow as tf

from unclip_jax.data import degrade, sources
from unclip_jax.data.decoder_captions import caption_ids, colour_swap, resolve_tokenizer
from unclip_jax.data.embedding_files import EmbeddingStore
from unclip_jax.errors import UserError
from unclip_jax.stages import EMBED_STAGES, check_stage, decoder_embedding
DEGRADATIONS = ("none", "blur", "bsr")
Batch = dict[str, np.ndarray]


class BatchIterator:
    """Iterator of per-process numpy batches with `get_state()` / `set_state(state)`.

    `make_stream(batches_done) -> iterator of raw batches` builds the stream from a position;
    `finish(raw) -> batch` does host-side work (tokenising, embedding lookup).
    """

    def __init__(self, make_stream: Callable[[int], Iterator[Batch]],
                 finish: Callable[[Batch], Batch], identity: dict[str, Any]):
        self._make_stream = make_stream
        self._finish = finish
        self._identity = dict(identity)
        self._done = 0
        self._stream: Iterator[Batch] | None = None

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> Batch:
        if self._stream is None:
            self._stream = self._make_stream(self._done)
        batch = self._finish(next(self._stream))
        self._done += 1
        return batch

    def get_state(self) -> dict:
        """Small JSON-serialisable position: {'batches': n, ...identity of the stream}."""
        return {"batches": self._done, **self._identity}

    def set_state(self, state: dict) -> None:
        for key, value in self._identity.items():
            if key in state and state[key] != value:
                raise UserError(
                    f"input-iterator state was saved with {key}={state[key]!r} but this pipeline "
                    f"has {key}={value!r}; restore with the same data config and process layout")
        self._done = int(state["batches"])
        self._stream = None


# --------------------------------------------------------------------------- helpers

def _local_batch(config, process_count: int) -> int:
    global_bs = int(config.train.batch_size)
    if global_bs % process_count:
        raise UserError(f"config.train.batch_size={global_bs} is not divisible by the "
                        f"{process_count} processes; use a multiple of {process_count}")
    return global_bs // process_count


def _upsampler_sizes(data) -> tuple[int, int, int]:
    """(image_size S, crop size c, low-res crop size c/r) with checks."""
    size, low = int(data.image_size), int(data.low_res_size)
    if low <= 0 or size % low:
        raise UserError(f"config.data.low_res_size={low} must be a positive divisor of "
                        f"image_size={size} for upsampler stages")
    crop = int(data.crop_size) or size
    r = size // low
    if crop > size or crop % r:
        raise UserError(f"config.data.crop_size={crop} must be ≤ image_size={size} and a "
                        f"multiple of the upsampling factor {r}")
    return size, crop, crop // r


def _text_dims(config) -> tuple[int, int, int]:
    """(embed dim D, text length L, text width W) of the stage's conditioning."""
    m = config.model
    return int(m.embed_dim), int(m.text_len), int(m.text_width)


# --------------------------------------------------------------------------- synthetic

def synthetic_batch(config, rng: np.random.Generator, b: int) -> Batch:
    """Random batch of exactly the stage's shapes (see module docstring)."""
    stage, data = config.stage, config.data

    def image(s):
        return rng.uniform(-1, 1, size=(b, s, s, 3)).astype(np.float32)

    def text():
        d, length, w = _text_dims(config)
        lengths = rng.integers(1, length + 1, size=b)
        return {"text_states": rng.standard_normal((b, length, w)).astype(np.float32),
                "text_mask": np.arange(length)[None] < lengths[:, None]}, d

    if stage == "clip":
        t = config.model.text
        return {"image": image(int(data.image_size)),
                "tokens": rng.integers(0, int(t.vocab_size), size=(b, int(t.context_length)),
                                       dtype=np.int32)}
    if stage in ("prior", "ar_prior"):
        cond, d = text()
        return {"z_i": rng.standard_normal((b, d)).astype(np.float32),
                "z_t": rng.standard_normal((b, d)).astype(np.float32), **cond}
    if stage == "decoder":
        cond, d = text()
        vocab = int(config.model.get("caption_vocab", 0) or 0)
        if vocab:
            ids = rng.integers(0, vocab, size=cond["text_mask"].shape, dtype=np.int32)
            cond["caption_ids"] = np.where(cond["text_mask"], ids, 0).astype(np.int32)
        return {"image": image(int(data.image_size)),
                "z_i": rng.standard_normal((b, d)).astype(np.float32), **cond}
    _, crop, low = _upsampler_sizes(data)
    return {"image": image(crop), "low_res": image(low)}


def _synthetic(config, b: int, seed: int, process_index: int, identity: dict) -> BatchIterator:
    def stream(start: int):
        step = start
        while True:
            yield synthetic_batch(config, np.random.default_rng([seed, process_index, step]), b)
            step += 1
    return BatchIterator(stream, lambda x: x, identity)


# --------------------------------------------------------------------------- real data

def decode(encoded) -> tf.Tensor:
    """Encoded PNG/JPEG bytes → float32 [H, W, 3] in [-1, 1]."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def _preprocess(stage: str, data, decoder_captions: bool = False) -> Callable:
    """(example, stateless seed [2]) → dict of tensors for one example; a decoder's example
    keeps its caption only with `decoder_captions` (its own caption encoder reads it)."""
    degradation = str(data.get("degradation", "none"))
    if degradation not in DEGRADATIONS:
        raise UserError(f"config.data.degradation={degradation!r}; choose one of {DEGRADATIONS}")

    def fn(ex, seed):
        if stage in ("prior", "ar_prior"):
            return {"index": ex["index"]}
        image = decode(ex["image"])
        if stage == "clip":
            s = int(data.image_size)
            out = {"image": degrade.resize(image, s), "caption": ex["caption"]}
            if int(data.get("hard_negatives", 0) or 0) > 0:
                out.update(index=ex["index"], neg_seed=seed)
            return out
        if stage == "decoder":
            s = int(data.image_size)
            out = {"image": degrade.resize(image, s), "index": ex["index"]}
            if decoder_captions:
                out["caption"] = ex["caption"]
                if float(data.get("caption_colour_swap", 0.0) or 0.0) > 0:
                    out["swap_seed"] = seed
            return out
        size, crop, low_crop = _upsampler_sizes(data)
        low_size = int(data.low_res_size)
        image = degrade.resize(image, size)
        crop_seed, degrade_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if degradation == "bsr":
            low = degrade.bsr_degrade(image, low_size, degrade_seed)
        else:
            low = degrade.resize(image, low_size)
            if degradation == "blur":
                low = degrade.gaussian_blur(low)
        high, low = degrade.random_crop_pair(image, low, crop, crop_seed)
        return {"image": high, "low_res": low}
    return fn


def _tf_stream(records: tf.data.Dataset, n_local: int, b: int, seed: int, process_index: int,
               shuffle_buffer: int, preprocess: Callable, keep_index: bool):
    def make(batches_done: int):
        consumed = batches_done * b
        start_epoch, offset = divmod(consumed, n_local)

        def epoch(e):
            return records.shuffle(max(1, shuffle_buffer), seed=seed * 1_000_003 + e,
                                   reshuffle_each_iteration=False)

        ds = tf.data.Dataset.range(start_epoch, 2 ** 62).flat_map(epoch).skip(offset)
        ds = ds.enumerate(start=consumed)
        base = tf.constant([seed, process_index], tf.int64)

        def mapped(pos, ex):
            out = preprocess(ex, tf.random.experimental.stateless_fold_in(base, pos))
            if keep_index and "index" not in out:
                out["index"] = ex["index"]
            return out

        ds = ds.map(mapped, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        return ds.as_numpy_iterator()
    return make


def _resolve_tokenizer(config, tokenizer):
    if tokenizer is not None:
        return tokenizer
    path = str(config.model.get("tokenizer", "") or "")
    if not path:
        raise UserError("the clip stage needs a tokenizer: pass tokenizer= to make_pipeline or "
                        "set config.model.tokenizer to a tokenizer directory")
    from unclip_jax.clip.tokenizer import Tokenizer
    return Tokenizer(path, int(config.model.text.context_length))


def _resolve_embeddings(config, split, n, embeddings) -> EmbeddingStore:
    if isinstance(embeddings, EmbeddingStore):
        if embeddings.manifest["split"] != split:
            raise UserError(f"the embeddings given hold the {embeddings.manifest['split']!r} "
                            f"split, not {split!r}; embed the {split!r} split")
        return embeddings
    directory = embeddings or str(config.data.get("embeddings_dir", "") or "")
    if not directory:
        raise UserError(f"the {config.stage} stage reads precomputed CLIP embeddings: run "
                        f"`unclip-jax embed --clip CKPT --data_dir DIR --split {split} --out EMB` "
                        "and set config.data.embeddings_dir=EMB")
    return EmbeddingStore(directory, split=split, num_examples=n)


def make_pipeline(config, split: str = "train", *, process_index: int | None = None,
                  process_count: int | None = None, seed: int | None = None, tokenizer=None,
                  embeddings=None, keep_index: bool = False) -> BatchIterator:
    """The stage's input pipeline (see module docstring).

    `tokenizer(captions) -> (ids int32 [B,L], mask)` is used by the clip stage (default: the
    one at config.model.tokenizer) and by a decoder with its own caption encoder (default:
    config.data.caption_tokenizer). `embeddings` (an EmbeddingStore or a directory) overrides
    config.data.embeddings_dir. `keep_index=True` adds each example's 'index' [b] (tests).
    """
    import jax

    stage = check_stage(config.stage)
    data = config.data
    process_index = jax.process_index() if process_index is None else int(process_index)
    process_count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= process_index < process_count:
        raise UserError(f"process_index {process_index} not in [0, {process_count})")
    seed = int(config.seed if seed is None else seed)
    b = _local_batch(config, process_count)
    if stage.startswith("upsampler"):
        _upsampler_sizes(data)
    name = str(data.name)
    identity = dict(dataset=name, split=split, seed=seed, process_index=process_index,
                    process_count=process_count, batch_size=b, stage=stage)
    if name == "synthetic":
        return _synthetic(config, b, seed, process_index, identity)

    builder = sources.builder_for(name, str(data.data_dir))
    n = sources.num_examples(builder, split)
    n_local = len(range(process_index, n, process_count))
    if n_local < b:
        raise UserError(f"split {split!r} gives process {process_index} only {n_local} examples, "
                        f"fewer than its batch of {b}; lower config.train.batch_size")
    records = sources.read_records(builder, split).shard(process_count, process_index)
    make = _tf_stream(records, n_local, b, seed, process_index, int(data.shuffle_buffer),
                      _preprocess(stage, data, int(config.model.get("caption_vocab", 0) or 0) > 0),
                      keep_index)

    if stage == "clip":
        tok = _resolve_tokenizer(config, tokenizer)
        k_neg = int(data.get("hard_negatives", 0) or 0)
        if k_neg > 0:
            from unclip_jax.data import hard_negatives as hn
            kinds = hn.parse_kinds(str(data.get("hard_negative_kinds", ",".join(hn.KINDS))))
            if not name.startswith("unclip_shapes"):
                raise UserError(f"config.data.hard_negatives needs scene labels, which only "
                                f"unclip_shapes has (dataset {name!r}); set it to 0")
            scene_seed = int(builder.builder_config.seed)

        def finish(raw):
            captions = [c.decode("utf-8") for c in raw.pop("caption")]
            ids, _ = tok(captions)
            raw["tokens"] = np.asarray(ids, np.int32)
            if k_neg > 0:
                index = raw["index"] if keep_index else raw.pop("index")
                negs = hn.batch_negatives(captions, [hn.scene(scene_seed, split, int(i))
                                                     for i in index],
                                          k_neg, raw.pop("neg_seed"), kinds)
                neg_ids, _ = tok(negs)
                raw["neg_tokens"] = np.asarray(neg_ids, np.int32).reshape(len(captions), k_neg, -1)
            return raw
    elif stage in EMBED_STAGES:
        store = _resolve_embeddings(config, split, n, embeddings)
        source = decoder_embedding(data) if stage == "decoder" else "z_i"
        tok = (resolve_tokenizer(config, tokenizer) if stage == "decoder"
               and int(config.model.get("caption_vocab", 0) or 0) else None)
        swap = colour_swap(config, builder, split) if stage == "decoder" else None

        def finish(raw):
            cond = store.lookup(raw["index"])
            captions = raw.pop("caption", None)
            if stage == "decoder":
                cond["z_i"] = cond.pop(source)
                cond.pop("z_t", None)
                if tok is not None:
                    texts = [c.decode("utf-8") for c in captions]
                    cond["caption_ids"] = caption_ids(tok, texts, cond["text_mask"])
                    if swap is not None:
                        cond["caption_ids"] = swap(tok, texts, raw["index"], raw.pop("swap_seed"),
                                                   cond["caption_ids"], cond["text_mask"])
            if not keep_index:
                raw.pop("index")
            raw.update(cond)
            return raw
    else:
        def finish(raw):
            return raw
    return BatchIterator(make, finish, identity)
