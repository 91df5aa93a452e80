"""UnCLIP sampling: text → image, the paper's manipulations (variations, interpolations,
text diffs) and editing (inpainting, img2img, negative prompts, mixing; `unclip_jax.editing`),
chained from per-stage inference checkpoints.

    pipe = UnCLIP.from_directory("model/")           # or UnCLIP.load(clip=..., prior=..., ...)
    images = pipe.generate(["a red circle"], seed)   # uint8 [N, H, W, 3]

Checkpoint layout read by `from_directory(ROOT)` (each a `unclip_jax.export` directory):

    ROOT/clip/         CLIP (stage 'clip')                        needed by every entry point
    ROOT/tokenizer/    Hugging Face tokenizer files                generate, text_diff
    ROOT/prior/        diffusion prior (stage 'prior')  — or —
    ROOT/ar_prior/     autoregressive prior (stage 'ar_prior')     generate
    ROOT/decoder/      64 px decoder (stage 'decoder')             every image
    ROOT/upsampler1/   first upsampler (optional)
    ROOT/upsampler2/   second upsampler (optional; needs upsampler1)

A missing tail (no upsamplers, or only the first) gives smaller images.

Execution: each stage is ONE jitted program per (stage, shapes, settings) (the whole sampler
loop inside, guidance as one batched call), cached on the object. The batch is padded to a
multiple of the device count and sharded over a `data` mesh of all devices; padding rows are
dropped. Randomness is per example: example i of a call uses fold_in(stage_key, i), so an
image depends only on the seed, its index and its conditioning — not on batch size, padding
or the number of devices.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from unclip_jax import editing, export, parallel, runtime
from unclip_jax import pipeline_io as io
from unclip_jax import sampling
from unclip_jax.diffusers_style import DiffusersStyle
from unclip_jax.diffusion import schedules
from unclip_jax.errors import CheckpointError, UserError

STAGE_ORDER = ("clip", "tokenizer", "prior", "ar_prior", "decoder", "upsampler1", "upsampler2")
UPSAMPLERS = ("upsampler1", "upsampler2")
PRIOR_CHOICES = ("auto", "diffusion", "ar", "none")   # from_directory(prior=...)
# fold_in offsets of each stage's key (prior, decoder, upsampler1, upsampler2)
KEY_IDS = {"prior": 1, "decoder": 2, "x_T": 3, "upsampler1": 4, "upsampler2": 5}


_PROGRAMS: dict[tuple, Any] = {}   # compiled stage programs, see UnCLIP._program


@dataclasses.dataclass
class Stage:
    """One loaded stage: host params placed replicated on the mesh, its config and module."""
    name: str
    directory: str
    identity: str
    params: Any
    config: Any
    extra: dict
    model: Any


def _build_model(stage: str, config):
    if stage == "clip":
        from unclip_jax.clip.model import CLIP
        return CLIP.from_config(config)
    if stage == "prior":
        from unclip_jax.models import prior
        return prior.from_config(config.model)
    if stage == "ar_prior":
        from unclip_jax.models import ar_prior
        return ar_prior.from_config(config.model)
    from unclip_jax.models.unet import UNet
    return UNet.from_config(config.model)


def _decode_extra(extra: dict) -> dict:
    from unclip_jax.train.checkpoint import extras_from_json
    return extras_from_json(extra)


def as_key(key):
    """int seed or typed key → typed key."""
    if isinstance(key, (int, np.integer)):
        return jax.random.key(io.check_seed(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    raise UserError(f"key must be an int seed or jax.random.key(...), got {type(key).__name__}")


def _example_keys(key, index):
    """Per-example keys: fold_in(key, index[b]) → [B] typed keys."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)


def per_example(fn, keys, *batched):
    """vmap `fn(key, *one_example)` (each array, or pytree of arrays, with a leading batch
    axis of 1; None passes through) over a batch."""
    def one(k, *xs):
        out = fn(k, *(jax.tree.map(lambda a: a[None], x) for x in xs))
        return jax.tree.map(lambda a: a[0], out)
    in_axes = (0,) + tuple(None if x is None else 0 for x in batched)
    return jax.vmap(one, in_axes=in_axes)(keys, *batched)


class UnCLIP(DiffusersStyle):
    """The loaded hierarchy plus a cache of compiled stage programs."""

    def __init__(self, stages: dict[str, Stage], tokenizer=None, *, devices=None,
                 progress: bool = True, compile_cache: bool = True):
        """compile_cache: keep compiled programs in JAX's persistent cache across processes
        (`unclip_jax.runtime.enable_compilation_cache`; `UNCLIP_JAX_CACHE_DIR` picks the
        directory or turns it off)."""
        if "prior" in stages and "ar_prior" in stages:
            raise UserError("give either prior= or ar_prior=, not both")
        if "upsampler2" in stages and "upsampler1" not in stages:
            raise UserError("upsampler2 needs upsampler1 (the 64→256 stage); pass both")
        if any(u in stages for u in UPSAMPLERS) and "decoder" not in stages:
            raise UserError("upsamplers need a decoder; pass decoder=DIR")
        if compile_cache:
            runtime.enable_compilation_cache()
        self.stages = stages
        self.tokenizer = tokenizer
        self.mesh = parallel.make_mesh({"data": -1}, devices)
        self.num_devices = self.mesh.devices.size
        self.progress = progress
        self.compiled: dict[tuple, Any] = {}
        self._empty_caption = None   # encoded "" (see `uncond_text`), made on first use
        rep = parallel.replicated(self.mesh)
        for s in stages.values():
            s.params = jax.device_put(s.params, rep)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, clip: str | None = None, prior: str | None = None,
             ar_prior: str | None = None, decoder: str | None = None,
             upsampler1: str | None = None, upsampler2: str | None = None,
             tokenizer: str | None = None, *, devices=None, progress: bool = True,
             compile_cache: bool = True) -> "UnCLIP":
        """Load stage checkpoint directories (any may be None). A directory holding another
        stage raises CheckpointError."""
        dirs = dict(clip=clip, prior=prior, ar_prior=ar_prior, decoder=decoder,
                    upsampler1=upsampler1, upsampler2=upsampler2)
        stages = {}
        for name, d in dirs.items():
            if d is None:
                continue
            params, config, extra = export.load(d, expect_stage=name)
            stages[name] = Stage(name, os.path.abspath(d), io.checkpoint_identity(d), params,
                                 config, _decode_extra(extra), _build_model(name, config))
        tok = None
        if tokenizer is not None:
            if "clip" not in stages:
                raise UserError("a tokenizer needs its CLIP; pass clip=DIR too")
            from unclip_jax.clip.tokenizer import Tokenizer
            ctx = stages["clip"].model.context_length
            tok = Tokenizer(tokenizer, context_length=ctx)
            tok.directory = os.path.abspath(tokenizer)
        return cls(stages, tok, devices=devices, progress=progress, compile_cache=compile_cache)

    @classmethod
    def from_directory(cls, root: str | None = None, *, prior: str = "auto", devices=None,
                       progress: bool = True, compile_cache: bool = True) -> "UnCLIP":
        """Load ROOT/{clip,tokenizer,prior,ar_prior,decoder,upsampler1,upsampler2} (see the
        module docstring); absent subdirectories are skipped. Without ROOT, the bundled
        shapes model (unclip_jax/assets/shapes).

        prior: which prior to load when ROOT has both — 'diffusion' (prior/), 'ar'
        (ar_prior/), 'auto' (prior/ if present, else ar_prior/) or 'none' (neither; for
        `generate(text_as_image_embed=True)` and the manipulations).
        """
        if prior not in PRIOR_CHOICES:
            raise UserError(f"prior={prior!r}; choose one of {', '.join(PRIOR_CHOICES)}")
        if root is None:
            root = io.BUNDLED_MODEL
        if not os.path.isdir(root):
            raise CheckpointError(f"checkpoint directory {root} does not exist; pass a directory "
                                  "with clip/, prior/, decoder/, ... subdirectories")
        found = {n: os.path.join(root, n) for n in STAGE_ORDER
                 if os.path.isdir(os.path.join(root, n))}
        if not found:
            raise CheckpointError(f"{root} has none of the stage subdirectories "
                                  f"{', '.join(STAGE_ORDER)}; see `unclip-jax sample --help`")
        keep = {"diffusion": "prior", "ar": "ar_prior", "none": None,
                "auto": "prior" if "prior" in found else "ar_prior"}[prior]
        if prior in ("diffusion", "ar") and keep not in found:
            raise CheckpointError(f"prior={prior!r} needs {os.path.join(root, keep)}, which does "
                                  f"not exist; this model has "
                                  f"{[n for n in ('prior', 'ar_prior') if n in found] or 'no prior'}")
        for name in {"prior", "ar_prior"} - {keep}:
            found.pop(name, None)
        if "tokenizer" in found and "clip" not in found:
            raise CheckpointError(f"{root} has tokenizer/ but no clip/ (the CLIP that reads "
                                  "captions); add one, e.g. `unclip-jax package --out "
                                  f"{root} --base bundled` copies the missing stages")
        return cls.load(**found, devices=devices, progress=progress, compile_cache=compile_cache)

    def directories(self) -> dict[str, dict[str, str]]:
        """{stage: {'dir': path, 'identity': hash}} of the loaded stages (for sidecars)."""
        out = {n: {"dir": s.directory, "identity": s.identity} for n, s in self.stages.items()}
        if self.tokenizer is not None:
            out["tokenizer"] = {"dir": self.tokenizer.directory,
                                "identity": io.checkpoint_identity(self.tokenizer.directory)}
        return out

    # ------------------------------------------------------------------ helpers
    def _need(self, *names):
        for n in names:
            if n == "prior":
                if "prior" not in self.stages and "ar_prior" not in self.stages:
                    raise UserError("this needs a prior; pass prior=DIR or ar_prior=DIR "
                                    "(or a checkpoint with prior/ or ar_prior/)")
            elif n == "tokenizer":
                if self.tokenizer is None:
                    raise UserError("this needs a tokenizer; pass tokenizer=DIR (or a checkpoint "
                                    "with tokenizer/)")
            elif n not in self.stages:
                raise UserError(f"this needs the {n} stage; pass {n}=DIR (or a checkpoint with "
                                f"{n}/)")

    @property
    def prior_stage(self) -> Stage:
        return self.stages.get("prior") or self.stages["ar_prior"]

    @property
    def text_conditioned_decoder(self) -> bool:
        """True for a decoder trained on the caption's z_t (data.decoder_embedding='text');
        `generate` then feeds it z_t and needs no prior."""
        from unclip_jax.conditioning import decoder_embedding
        return decoder_embedding(self.stages["decoder"].config.data) == "z_t"

    def image_size(self, stage: str) -> int:
        return int(self.stages[stage].config.model.image_size)

    def _shard(self, x):
        """Host array with a (padded) leading batch → batch-sharded device array."""
        x = np.asarray(x)
        return jax.device_put(x, parallel.batch_sharding(self.mesh, x.ndim))

    def _program(self, name: str, settings: tuple, fn, args: tuple):
        """Run `fn(*args)` through a jitted program cached per (stage, shapes, settings).

        The cache is shared by every `UnCLIP` holding the same checkpoints (directory and
        identity) on the same devices, so reloading a model does not recompile.
        """
        shapes = tuple((tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(args)
                       if hasattr(a, "shape"))
        st = self.stages[{"clip_text": "clip", "clip_image": "clip",
                          "decoder_invert": "decoder"}.get(name, name)]
        where = (st.directory, st.identity, tuple(d.id for d in self.mesh.devices.flat))
        key = (name, shapes, settings, where)
        prog = _PROGRAMS.get(key)
        if prog is None:
            prog = _PROGRAMS[key] = jax.jit(fn)
        self.compiled[key[:3]] = prog
        return prog(*args)

    def _schedule(self, stage: str, steps) -> tuple[str, Any]:
        cfg = self.stages[stage].config.diffusion
        steps = cfg.sample_steps if steps is None else steps
        steps = io.check_steps(f"{stage} steps", steps, int(cfg.timesteps))
        return steps, schedules.respace(cfg.schedule, int(cfg.timesteps), steps)

    def _guidance(self, stage: str, value):
        cfg = self.stages[stage].config.diffusion
        return io.check_guidance(f"{stage} guidance", cfg.guidance_scale if value is None
                                 else value)

    def _pad(self, *arrays):
        """Pad host arrays to a multiple of the device count; also the example indices."""
        n = np.asarray(arrays[0]).shape[0]
        out = [self._shard(io.pad_to_multiple(a, self.num_devices)[0]) for a in arrays]
        idx = io.pad_to_multiple(np.arange(n, dtype=np.int32), self.num_devices)[0]
        idx[n:] = np.arange(n, idx.shape[0], dtype=np.int32)
        idx = idx + np.int32(getattr(self, "_offset", 0))   # generate's chunk position
        return out, self._shard(idx), n

    # ------------------------------------------------------------------ CLIP
    def encode_text(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
        """captions → dict(embeds [B, D], states [B, L, W], mask [B, L]) as host arrays."""
        self._need("clip", "tokenizer")
        ids, _ = self.tokenizer(io.check_prompts(captions))
        return self._encode_ids(ids)

    def _encode_ids(self, ids) -> dict[str, np.ndarray]:
        from unclip_jax.clip.model import CLIP
        clip = self.stages["clip"]
        (ids_d,), _, n = self._pad(ids)

        def fn(params, ids):
            out = clip.model.apply(sampling._variables(params), ids, method=CLIP.encode_text)
            return {k: out[k] for k in ("embeds", "states", "mask")}
        out = self._program("clip_text", (), fn, (clip.params, ids_d))
        return {k: np.asarray(v)[:n] for k, v in out.items()}

    def uncond_text(self, stage: str) -> dict[str, np.ndarray] | None:
        """The caption encoding guidance's unconditional half of `stage` conditions on, or
        None when the stage uses its own drop path (the default).

        `diffusion.uncond` = 'empty_caption' in the stage config (Karlo's prior and decoder)
        → `encode_text` of the empty caption "" (embeds [1, D], states [1, L, W], mask
        [1, L]); 'drop' or absent → None.
        """
        mode = self.stages[stage].config.diffusion.get("uncond", "drop")
        if mode in (None, "drop"):
            return None
        if mode != "empty_caption":
            raise CheckpointError(f"{self.stages[stage].directory}: diffusion.uncond={mode!r}; "
                                  "supported: 'drop' or 'empty_caption'")
        self._need("clip", "tokenizer")
        if self._empty_caption is None:
            ids, mask = self.tokenizer.encode_empty()
            self._empty_caption = self._encode_ids(ids)
            self._empty_caption["mask"] = mask
        return self._empty_caption

    def encode_images(self, images) -> np.ndarray:
        """images (uint8 or float [-1, 1], NHWC, any size) → CLIP image embeddings [B, D]."""
        self._need("clip")
        from unclip_jax.clip.model import CLIP
        from unclip_jax.clip.preprocess import preprocess
        clip = self.stages["clip"]
        if "vision_model" not in sampling._variables(clip.params)["params"]:
            raise UserError(f"the CLIP checkpoint {clip.directory} has no image encoder (text "
                            "tower only, e.g. a Karlo conversion); convert a ViT-L/14 CLIPModel "
                            "with `unclip-jax convert-clip SRC DIR` and use DIR as clip/")
        (x,), _, n = self._pad(images)

        def fn(params, x):
            x = preprocess(x, clip.model.image_size)
            return clip.model.apply(sampling._variables(params), x,
                                    method=CLIP.encode_image)["embeds"]
        return np.asarray(self._program("clip_image", (), fn, (clip.params, x)))[:n]

    # ------------------------------------------------------------------ stages
    def prior_sample(self, text: dict, key, *, steps=None, guidance=None, best_of=None,
                     temperature: float = 1.0, negative: dict | None = None) -> np.ndarray:
        """text (from `encode_text`) → z_i [B, D] (host). best_of None: the prior config's
        `model.sample_candidates` (default 2). negative: `encode_text` of one negative
        prompt per example; guidance's unconditional half conditions on it (diffusion prior
        only)."""
        self._need("prior")
        st = self.prior_stage
        guidance = self._guidance(st.name, guidance) if st.name == "prior" else \
            io.check_guidance("prior guidance", 1.0 if guidance is None else guidance)
        if negative is not None and st.name != "prior":
            raise UserError("negative prompts need the diffusion prior (prior/); the AR prior "
                            "has no unconditional branch to replace")
        neg = () if negative is None else (negative["embeds"], negative["states"],
                                           negative["mask"])
        (z_t, states, mask, *neg), idx, n = self._pad(text["embeds"], text["states"],
                                                      text["mask"], *neg)
        neg = neg or [None] * 3
        key = jax.random.fold_in(as_key(key), KEY_IDS["prior"])
        if st.name == "prior":
            if best_of is None:
                best_of = st.config.model.get("sample_candidates", 2)
            if int(best_of) < 1:
                raise UserError(f"prior best_of={best_of} must be at least 1")
            steps, sched = self._schedule("prior", steps)
            stats = st.extra.get("stats")
            uncond = self.uncond_text("prior")

            def one(k, z_t, s, m, ne, ns, nm, params, stats, sched, uncond):
                if ne is not None:
                    uncond = {"embeds": ne, "states": ns, "mask": nm}
                return sampling.prior_sample(params, st.model, st.config.model,
                                             st.config.diffusion, stats, z_t, s, m, k,
                                             sched=sched, guidance=guidance,
                                             best_of=int(best_of), uncond=uncond)

            def fn(params, stats, sched, uncond, key, idx, z_t, s, m, ne, ns, nm):
                return per_example(functools.partial(one, params=params, stats=stats,
                                                     sched=sched, uncond=uncond),
                                   _example_keys(key, idx), z_t, s, m, ne, ns, nm)
            out = self._program("prior", (steps, guidance, int(best_of), uncond is None,
                                          negative is None), fn,
                                (st.params, stats, sched, uncond, key, idx, z_t, states, mask,
                                 *neg))
        else:
            from unclip_jax.models import ar_prior
            codec = st.extra.get("codec")
            if codec is None:
                raise CheckpointError(f"{st.directory} has no AR codec in extra.json; export "
                                      "the AR prior with its fitted codec")

            def one(k, z_t, s, m, params, codec):
                cond = {"z_t": z_t, "text_states": s, "text_mask": m}
                return ar_prior.ar_sample(sampling._variables(params), st.model, codec, cond, k,
                                          temperature=temperature,
                                          guidance_scale=guidance)[0]

            def fn(params, codec, key, idx, z_t, s, m):
                return per_example(functools.partial(one, params=params, codec=codec),
                                   _example_keys(key, idx), z_t, s, m)
            out = self._program("ar_prior", (guidance, float(temperature)), fn,
                                (st.params, codec, key, idx, z_t, states, mask))
        return np.asarray(out)[:n]

    def initial_noise(self, n: int, key) -> np.ndarray:
        """The decoder's x_T [n, S, S, 3]: example i from fold_in(fold_in(key, x_T), i)."""
        self._need("decoder")
        s = self.image_size("decoder")
        key = jax.random.fold_in(as_key(key), KEY_IDS["x_T"])
        keys = _example_keys(key, jnp.arange(n) + getattr(self, "_offset", 0))
        return np.asarray(jax.vmap(lambda k: jax.random.normal(k, (s, s, 3)))(keys))

    def decoder_sample(self, z_i, x_T, key, *, text: dict | None = None, steps=None,
                       guidance=None, eta: float = 0.0, ddim: bool | None = None,
                       negative: dict | None = None, edit: dict | None = None) -> np.ndarray:
        """z_i [B, D], x_T [B, S, S, 3] (+ optional text) → images [B, S, S, 3] in [-1, 1].

        negative: {'embeds', 'states', 'mask', 'z_i'} of one negative prompt per example
        (`encode_text` plus its z_i); guidance's unconditional half conditions on it (needs
        `text`). edit: sample around a known image (`unclip_jax.editing.stage_edit`)."""
        self._need("decoder")
        st = self.stages["decoder"]
        steps, sched = self._schedule("decoder", steps)
        guidance = self._guidance("decoder", guidance)
        ddim = io.uses_ddim(steps, st.config.diffusion.sampler) if ddim is None else ddim
        eta = _check_eta(eta)
        use_text = text is not None
        if negative is not None and not use_text:
            raise UserError("a negative prompt for the decoder needs the prompt's text too")
        uncond = self.uncond_text("decoder") if use_text and negative is None else None
        if use_text and getattr(st.model, "text_embed_dim", 0):
            if "embeds" not in text:
                raise UserError("this decoder also takes the pooled CLIP text embedding; pass "
                                "text=encode_text(...) with its 'embeds'")
            (z, xt, s, m, zt), idx, n = self._pad(z_i, x_T, text["states"], text["mask"],
                                                  text["embeds"])
        elif use_text:
            (z, xt, s, m), idx, n = self._pad(z_i, x_T, text["states"], text["mask"])
            zt = None
        else:
            (z, xt), idx, n = self._pad(z_i, x_T)
            s = m = zt = None
        key = jax.random.fold_in(as_key(key), KEY_IDS["decoder"])
        neg, ed = self._pad_extras(negative, ("embeds", "states", "mask", "z_i")), \
            self._pad_edit(edit)

        def one(k, z, xt, s, m, zt, neg, ed, params, sched, uncond, ed_static):
            if neg is not None:
                uncond = neg
            if ed is not None:
                ed = dict(ed, **ed_static)
            return sampling.decoder_sample(params, st.model, st.config.diffusion, z, s, m, xt, k,
                                           sched=sched, guidance=guidance, ddim=ddim, eta=eta,
                                           use_text=use_text, z_t=zt, uncond=uncond, edit=ed)

        def fn(params, sched, uncond, ed_static, key, idx, z, xt, s, m, zt, neg, ed):
            return per_example(functools.partial(one, params=params, sched=sched, uncond=uncond,
                                                 ed_static=ed_static),
                               _example_keys(key, idx), z, xt, s, m, zt, neg, ed)
        out = self._program("decoder", (steps, guidance, ddim, eta, use_text, uncond is None,
                                        negative is None, edit is None),
                            fn, (st.params, sched, uncond, _edit_static(edit), key, idx, z, xt,
                                 s, m, zt, neg, ed))
        return np.asarray(out)[:n]

    def _pad_extras(self, d: dict | None, keys: Sequence[str]) -> dict | None:
        """Pad and shard the per-example arrays d[k] (k in `keys` whose value is not None)."""
        if d is None:
            return None
        keys = [k for k in keys if d.get(k) is not None]
        arrays, _, _ = self._pad(*(d[k] for k in keys))
        return dict(zip(keys, arrays))

    def _pad_edit(self, edit: dict | None) -> dict | None:
        return self._pad_extras(edit, ("x0", "mask"))

    def decoder_invert(self, z_i, images, *, steps=None, guidance=None) -> np.ndarray:
        """DDIM-invert the decoder (no caption): images [B, S, S, 3] in [-1, 1] given z_i → x_T."""
        self._need("decoder")
        st = self.stages["decoder"]
        steps, sched = self._schedule("decoder", steps)
        guidance = self._guidance("decoder", guidance)
        (z, x0), _, n = self._pad(z_i, images)

        def one(k, z, x0, params, sched):
            del k
            return sampling.decoder_invert(params, st.model, st.config.diffusion, z, None, None,
                                           x0, sched=sched, guidance=guidance, use_text=False)

        def fn(params, sched, z, x0):
            keys = jax.random.split(jax.random.key(0), z.shape[0])
            return per_example(functools.partial(one, params=params, sched=sched), keys, z, x0)
        out = self._program("decoder_invert", (steps, guidance), fn, (st.params, sched, z, x0))
        return np.asarray(out)[:n]

    def upsample(self, stage: str, low_res, key, *, steps=None, eta: float = 0.0,
                 edit: dict | None = None) -> np.ndarray:
        """Upsampler `stage`: clean low-res images [B, s, s, 3] → [B, S, S, 3] in [-1, 1].
        edit: sample around a known image (`unclip_jax.editing.stage_edit`)."""
        self._need(stage)
        st = self.stages[stage]
        steps, sched = self._schedule(stage, steps)
        ddim = io.uses_ddim(steps, st.config.diffusion.sampler)
        eta = _check_eta(eta)
        size = self.image_size(stage)
        (lr,), idx, n = self._pad(low_res)
        key = jax.random.fold_in(as_key(key), KEY_IDS[stage])
        fin = self._final_stage(stage)
        if fin is not None:
            k_last = int(fin.config.diffusion.final_steps)
            if k_last > len(sched.timesteps):
                raise UserError(f"{stage} steps={steps!r} has fewer than the {k_last} final "
                                f"steps {fin.name} runs; use more steps")
            final_args = (fin.params, int(np.asarray(sched.timesteps)[k_last - 1]))
        else:
            final_args = None

        def one(k, lr, ed, params, sched, final_args, ed_static):
            final = None if final_args is None else (final_args[0], fin.model, final_args[1])
            if ed is not None:
                ed = dict(ed, **ed_static)
            return sampling.upsample(params, st.model, st.config.diffusion, lr, k, sched=sched,
                                     size=size, ddim=ddim, eta=eta, final=final, edit=ed)

        def fn(params, sched, final_args, ed_static, key, idx, lr, ed):
            return per_example(functools.partial(one, params=params, sched=sched,
                                                 final_args=final_args, ed_static=ed_static),
                               _example_keys(key, idx), lr, ed)
        settings = (steps, ddim, eta, size, None if fin is None else (fin.directory, fin.identity),
                    edit is None)
        out = self._program(stage, settings, fn, (st.params, sched, final_args,
                                                  _edit_static(edit), key, idx, lr,
                                                  self._pad_edit(edit)))
        return np.asarray(out)[:n]

    def _final_stage(self, stage: str) -> Stage | None:
        """The next upsampler when its config marks it as running only the final steps of
        `stage`'s loop (`diffusion.final_steps` > 0, same resolution: Karlo's super_res_last
        after super_res_first), else None."""
        i = UPSAMPLERS.index(stage) if stage in UPSAMPLERS else -1
        if i < 0 or i + 1 >= len(UPSAMPLERS) or UPSAMPLERS[i + 1] not in self.stages:
            return None
        nxt = self.stages[UPSAMPLERS[i + 1]]
        if not int(nxt.config.diffusion.get("final_steps", 0) or 0):
            return None
        if self.image_size(nxt.name) != self.image_size(stage):
            raise CheckpointError(f"{nxt.directory} runs the final steps of {stage} "
                                  f"(diffusion.final_steps) but its image size "
                                  f"{self.image_size(nxt.name)} differs from {stage}'s "
                                  f"{self.image_size(stage)}")
        return nxt

    def _is_final_only(self, stage: str) -> bool:
        """Whether `stage` runs inside the previous upsampler's loop, not as its own stage."""
        i = UPSAMPLERS.index(stage)
        return i > 0 and self._final_stage(UPSAMPLERS[i - 1]) is not None

    # ------------------------------------------------------------------ chains
    def _upsampler_steps(self, upsampler_steps):
        if upsampler_steps is None or isinstance(upsampler_steps, (str, int)):
            return {u: upsampler_steps for u in UPSAMPLERS}
        steps = list(upsampler_steps)
        if len(steps) != 2:
            raise UserError("upsampler_steps takes one value or two (one per upsampler)")
        return dict(zip(UPSAMPLERS, steps))

    def decode(self, z_i, key, *, x_T=None, text: dict | None = None, decoder_steps=None,
               decoder_guidance=None, upsampler_steps=None, eta: float = 0.0,
               ddim: bool | None = None, upsampler_eta: float = 0.0, bar=None,
               negative: dict | None = None) -> dict:
        """Decoder + available upsamplers from z_i [B, D] (and x_T, else drawn from key).
        negative: see `decoder_sample`.

        Returns {'x_T', 'decoder', 'upsampler1'?, 'upsampler2'?} float arrays in [-1, 1].
        """
        z_i = np.asarray(z_i, np.float32)
        ups = self._upsampler_steps(upsampler_steps)
        self._validate_steps(decoder_steps, ups)
        x_T = self.initial_noise(len(z_i), key) if x_T is None else np.asarray(x_T, np.float32)
        out = {"x_T": x_T}
        _stage_bar(bar, "decoder")
        x = self.decoder_sample(z_i, x_T, key, text=text, steps=decoder_steps,
                                guidance=decoder_guidance, eta=eta, ddim=ddim, negative=negative)
        out["decoder"] = x = self._finite("decoder", x)
        for u in UPSAMPLERS:
            if u in self.stages and not self._is_final_only(u):
                _stage_bar(bar, u)
                x = self.upsample(u, x, key, steps=ups[u], eta=upsampler_eta)
                out[u] = x = self._finite(u, x)
        _stage_bar(bar, None)
        return out

    def _finite(self, stage: str, x):
        """`x` when every value is finite, else CheckpointError naming the stage (NaN/Inf
        outputs mean damaged weights or an unstable setting; never an all-black image)."""
        if not bool(np.isfinite(np.asarray(jax.device_get(x))).all()):
            where = self.stages[stage].directory if stage in self.stages else stage
            raise CheckpointError(
                f"the {stage} stage produced non-finite values (NaN/Inf); its weights in "
                f"{where} may be damaged — re-export or re-download them (or try other "
                "steps/guidance); nothing was written")
        return x

    def _validate_steps(self, decoder_steps, ups):
        """Check every stage's settings before any compute (errors come first, not late)."""
        self._schedule("decoder", decoder_steps)
        for u in UPSAMPLERS:
            if u in self.stages and not self._is_final_only(u):
                self._schedule(u, ups[u])

    def _bar(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="stage", disable=not self.progress,
                    leave=False)

    def _num_stages(self, with_prior: bool) -> int:
        return 1 + int(with_prior) + sum(u in self.stages and not self._is_final_only(u)
                                         for u in UPSAMPLERS)

    def generate(self, prompts: Sequence[str], key, *, num_images_per_prompt: int = 1,
                 prior_steps=None, decoder_steps=None, upsampler_steps=None,
                 prior_guidance=None, decoder_guidance=None, prior_best_of=None,
                 prior_temperature: float = 1.0, eta: float = 0.0,
                 text_as_image_embed: bool = False, return_intermediates: bool = False,
                 max_batch: int | None = None, negative_prompts=None):
        """Text → images uint8 [len(prompts)·num_images_per_prompt, H, W, 3], prompt-major.

        key: int seed or typed key. Steps are respacing strings ('25', 'ddim25'); None uses
        each stage's config. eta is DDIM's η (decoder with 'ddimN' steps, and upsamplers).
        text_as_image_embed: skip the prior and give the decoder the caption's CLIP text
        embedding z_t as z_i (the paper's §5.1 zero-shot baseline; automatic for a decoder
        trained on z_t, see `text_conditioned_decoder`).
        With return_intermediates also returns a dict with z_t, z_i, x_T (enough to redo or
        edit a result through `decode`) and each stage's float output.
        max_batch: images sampled per call (default `MAX_BATCH_PER_DEVICE` per device); a
        larger request runs in chunks, each image with the key of its position in the whole
        request, so it is the image one batch would give (up to the float rounding of another
        batch shape). A request whose results alone would not fit in memory is refused.
        negative_prompts: one string for every prompt, or one per prompt; classifier-free
        guidance's unconditional half of the prior and the decoder conditions on it
        (`unclip_jax.editing.negative_conditioning`).
        """
        self._need("clip", "tokenizer", "decoder")
        use_prior = not (text_as_image_embed or self.text_conditioned_decoder)
        if use_prior:
            self._need("prior")
        prompts = io.check_prompts(prompts)
        n = _check_count("num_images_per_prompt", num_images_per_prompt)
        key = as_key(key)
        if use_prior and self.prior_stage.name == "prior":
            self._schedule("prior", prior_steps)
            self._guidance("prior", prior_guidance)
        self._guidance("decoder", decoder_guidance)
        self._validate_steps(decoder_steps, self._upsampler_steps(upsampler_steps))
        _check_eta(eta)
        expanded = [p for p in prompts for _ in range(n)]
        negatives = editing.expand_negatives(negative_prompts, prompts, n)
        self._check_fits(len(expanded), copies=1 + int(return_intermediates))
        chunk = (MAX_BATCH_PER_DEVICE * self.num_devices if max_batch is None
                 else _check_count("max_batch", max_batch))
        starts = range(0, len(expanded), chunk)
        parts = []
        with self._bar(self._num_stages(use_prior) * len(starts), "generate") as bar:
            for start in starts:
                self._offset = start          # example keys: positions in the whole request
                try:
                    _stage_bar(bar, "clip+prior")
                    text = self.encode_text(expanded[start:start + chunk])
                    prior_kw = dict(steps=prior_steps, best_of=prior_best_of,
                                    temperature=prior_temperature) if use_prior else None
                    neg = None if negatives is None else editing.negative_conditioning(
                        self, negatives[start:start + chunk], key, prior_kw)
                    if use_prior:
                        z_i = self.prior_sample(text, key, guidance=prior_guidance,
                                                negative=neg, **prior_kw)
                        z_i = self._finite(self.prior_stage.name, z_i)
                    else:   # §5.1: z_t in place of z_i (zero-shot, or a decoder trained on z_t)
                        z_i = text["embeds"]
                    out = self.decode(z_i, key, text=text, decoder_steps=decoder_steps,
                                      decoder_guidance=decoder_guidance,
                                      upsampler_steps=upsampler_steps, eta=eta,
                                      upsampler_eta=eta, bar=bar, negative=neg)
                finally:
                    self._offset = 0
                parts.append(_finish(out, return_intermediates, z_t=text["embeds"], z_i=z_i))
        if not return_intermediates:
            return np.concatenate(parts)
        return (np.concatenate([p[0] for p in parts]),
                {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]})

    def _check_fits(self, n: int, copies: int = 1) -> None:
        """UserError when `n` final images (uint8, `copies` times) exceed the free memory."""
        size = self.image_size(next(
            s for s in ("upsampler2", "upsampler1", "decoder")
            if s in self.stages and (s == "decoder" or not self._is_final_only(s))))
        need = n * size * size * 3 * copies
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return
        if need > 0.8 * free:
            fit = max(1, int(0.8 * free // (size * size * 3 * copies)))
            raise UserError(f"{n} images of {size}×{size} need {need / 2**30:.1f} GiB for the "
                            f"results alone but {free / 2**30:.1f} GiB of memory is free; ask "
                            f"for at most {fit} images per run")

    # ------------------------------------------------------------------ manipulations
    def _load_images(self, images, size: int | None = None) -> np.ndarray:
        """Paths / PIL images / arrays → float32 [B, S, S, 3] in [-1, 1] at `size` pixels
        (default: the decoder size)."""
        size = self.image_size("decoder") if size is None else int(size)
        from PIL import Image
        if isinstance(images, (str, os.PathLike, Image.Image)):     # one image
            images = [images]
        if isinstance(images, np.ndarray) or isinstance(images, jax.Array):
            arr = np.asarray(images)
            if arr.ndim == 3:
                arr = arr[None]
            return np.stack([io.image_to_float(a, size) for a in arr])
        images = list(images)
        if not images:
            raise UserError("no images given; pass at least one image")
        return np.stack([io.load_image(p, size) if isinstance(p, (str, os.PathLike))
                         else io.image_to_float(p, size) for p in images])

    def invert(self, images, *, decoder_steps=None, decoder_guidance=None):
        """images → (x0 [B,S,S,3] float, z_i [B, D], x_T [B,S,S,3]) by CLIP encoding and
        DDIM inversion of the decoder (caption dropped). CLIP sees each image resized from
        the source to its own input size, not the decoder-size x0 (a 16 px decoder's input
        upscaled to CLIP's 64 px is a different picture to CLIP)."""
        self._need("clip", "decoder")
        x0 = self._load_images(images)
        z_i = self.encode_images(self._load_images(images,
                                                   self.stages["clip"].model.image_size))
        x_T = self.decoder_invert(z_i, x0, steps=_ddim_steps(decoder_steps, self),
                                  guidance=decoder_guidance)
        return x0, z_i, x_T

    def variations(self, images, key, n: int = 4, eta: float = 0.8, *, decoder_steps=None,
                   decoder_guidance=None, upsampler_steps=None,
                   return_intermediates: bool = False):
        """n variations of each image (paper Fig. 3): CLIP-encode, DDIM-invert the decoder to
        x_T given z_i, and re-sample with DDIM(η). → uint8 [B·n, H, W, 3], image-major.
        At η = 0 each variation reproduces (approximately) the input image."""
        self._need("clip", "decoder")
        n = _check_count("n", n)
        _check_eta(eta)
        steps = _ddim_steps(decoder_steps, self)
        self._validate_steps(steps, self._upsampler_steps(upsampler_steps))
        with self._bar(self._num_stages(False) + 1, "variations") as bar:
            _stage_bar(bar, "invert")
            _, z_i, x_T = self.invert(images, decoder_steps=steps,
                                      decoder_guidance=decoder_guidance)
            z_rep, xT_rep = np.repeat(z_i, n, axis=0), np.repeat(x_T, n, axis=0)
            out = self.decode(z_rep, as_key(key), x_T=xT_rep, decoder_steps=steps,
                              decoder_guidance=decoder_guidance,
                              upsampler_steps=upsampler_steps, eta=eta, ddim=True, bar=bar)
        return _finish(out, return_intermediates, z_i=z_rep)

    def interpolate(self, image_a, image_b, n: int = 5, key=0, *, fixed_xT: bool = False,
                    decoder_steps=None, decoder_guidance=None, upsampler_steps=None,
                    return_intermediates: bool = False):
        """n frames from image_a to image_b (paper Fig. 4): z_i = slerp(z_a, z_b, t) for
        t = linspace(0, 1, n); x_T = slerp of the two inverted latents, or (fixed_xT) one
        x_T drawn from key for every frame. DDIM η = 0. → uint8 [n, H, W, 3]."""
        self._need("clip", "decoder")
        n = _check_count("n", n)
        steps = _ddim_steps(decoder_steps, self)
        self._validate_steps(steps, self._upsampler_steps(upsampler_steps))
        key = as_key(key)
        with self._bar(self._num_stages(False) + 1, "interpolate") as bar:
            _stage_bar(bar, "invert")
            images = [_one_image(image_a), _one_image(image_b)]
            if fixed_xT:
                z_ab = self.encode_images(np.concatenate(
                    [self._load_images(i, self.stages["clip"].model.image_size)
                     for i in images]))
                x_T = np.repeat(self.initial_noise(1, key), n, axis=0)
            else:
                _, z_ab, xT_ab = self.invert(images, decoder_steps=steps,
                                             decoder_guidance=decoder_guidance)
                x_T = np.asarray(sampling.slerp_flat(xT_ab[0], xT_ab[1], _fractions(n)))
            z_i = np.asarray(sampling.slerp(z_ab[0], z_ab[1], _fractions(n)[:, None]))
            out = self.decode(z_i, key, x_T=x_T, decoder_steps=steps,
                              decoder_guidance=decoder_guidance,
                              upsampler_steps=upsampler_steps, eta=0.0, ddim=True, bar=bar)
        return _finish(out, return_intermediates, z_i=z_i, endpoints=z_ab)

    def text_diff(self, image, caption_from: str, caption_to: str, n: int = 5,
                  max_angle: float = 0.5, key=0, *, decoder_steps=None,
                  decoder_guidance=None, upsampler_steps=None,
                  return_intermediates: bool = False):
        """Edit an image toward a caption change (paper Fig. 5).

        z_d = normalize(z_t(caption_to) − z_t(caption_from)); frame k decodes
        z_θ = slerp(ẑ_i, z_d, θ_k)·‖z_i‖ with θ = linspace(0, max_angle, n) (θ as slerp's
        fraction, max_angle in [0, 1]; the paper uses up to 0.25–0.5), all from the image's
        inverted x_T with DDIM η = 0. → uint8 [n, H, W, 3].
        """
        self._need("clip", "tokenizer", "decoder")
        n = _check_count("n", n)
        max_angle = float(max_angle)
        if not 0.0 <= max_angle <= 1.0:
            raise UserError(f"max_angle={max_angle} must lie in [0, 1] (a slerp fraction; the "
                            "paper uses 0.25–0.5)")
        for flag, caption in (("--from", caption_from), ("--to", caption_to)):
            if not isinstance(caption, str) or not caption.strip():
                raise UserError(f"the {flag} caption is empty; give the caption of the image "
                                "(--from) and the one to move toward (--to)")
        steps = _ddim_steps(decoder_steps, self)
        self._validate_steps(steps, self._upsampler_steps(upsampler_steps))
        with self._bar(self._num_stages(False) + 1, "text_diff") as bar:
            _stage_bar(bar, "invert")
            _, z_i, x_T = self.invert(image, decoder_steps=steps,
                                      decoder_guidance=decoder_guidance)
            z_i, x_T = z_i[:1], x_T[:1]
            z_t = self.encode_text([caption_from, caption_to])["embeds"]
            z_d = sampling.l2_normalize(z_t[1] - z_t[0])
            theta = jnp.linspace(0.0, max_angle, n)[:, None]
            z_path = np.array(sampling.slerp(sampling.l2_normalize(z_i[0]), z_d, theta)
                                * np.linalg.norm(z_i[0]))
            z_path[0] = z_i[0]   # θ = 0 is the image's own embedding, exactly
            out = self.decode(z_path, as_key(key), x_T=np.repeat(x_T, n, axis=0),
                              decoder_steps=steps, decoder_guidance=decoder_guidance,
                              upsampler_steps=upsampler_steps, eta=0.0, ddim=True, bar=bar)
        return _finish(out, return_intermediates, z_i=z_path, z_d=np.asarray(z_d))

    # ------------------------------------------------------------------ editing
    def inpaint(self, images, masks, prompts, key, *, n: int = 1, **kwargs):
        """Repaint the white region of each mask under its prompt (RePaint-style, with
        optional resampling jumps), keeping the rest of the image. See
        `unclip_jax.editing.inpaint` for the arguments. → uint8 [len(images)·n, H, W, 3]."""
        return editing.inpaint(self, images, masks, prompts, key, n=n, **kwargs)

    def img2img(self, images, prompts, key, *, strength: float = 0.6, n: int = 1, **kwargs):
        """Image-to-image (SDEdit): noise each image to `strength` ∈ [0, 1] and denoise under
        the prompt (0 = the input, 1 = plain generation). See `unclip_jax.editing.img2img`.
        → uint8 [len(images)·n, H, W, 3]."""
        return editing.img2img(self, images, prompts, key, strength=strength, n=n, **kwargs)

    def mix(self, items, weights=None, key=0, *, n: int = 1, **kwargs):
        """Decode the weighted mix of images (paths, PIL images, arrays) and prompts: image
        embeddings from CLIP, prompt embeddings from the prior, combined on the sphere
        (`unclip_jax.diffusion.editing.mix_embeddings`). → uint8 [n, H, W, 3]."""
        return editing.mix(self, items, weights, key, n=n, **kwargs)


# ---------------------------------------------------------------------- small helpers

def _edit_static(edit: dict | None):
    """The replicated (not per-example) part of a stage edit: start level and jump ops."""
    if edit is None:
        return None
    return {"start": jnp.asarray(edit["start"], jnp.int32),
            "ops": jnp.asarray(edit["ops"], jnp.int32)}


def _one_image(image):
    """A path, PIL image, [H, W, C] array, or [1, H, W, C] array → one image (not a batch)."""
    if isinstance(image, (np.ndarray, jax.Array)) and np.ndim(image) == 4:
        if image.shape[0] != 1:
            raise UserError(f"expected one image, got a batch of shape {tuple(image.shape)}")
        return np.asarray(image)[0]
    return image


def _fractions(n: int) -> jnp.ndarray:
    return jnp.linspace(0.0, 1.0, n) if n > 1 else jnp.zeros((1,))


MAX_BATCH_PER_DEVICE = 64      # `generate` samples at most this many images per device at once


def _check_count(name: str, n) -> int:
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise UserError(f"{name}={n!r} must be a positive integer")
    return int(n)


def _check_eta(eta) -> float:
    eta = float(eta)
    if not (np.isfinite(eta) and eta >= 0):
        raise UserError(f"eta={eta} must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like)")
    return eta


def _ddim_steps(steps, pipe: UnCLIP):
    """Manipulations run the decoder with DDIM: a plain count N becomes 'ddimN'."""
    if steps is None:
        steps = pipe.stages["decoder"].config.diffusion.sample_steps
    s = str(steps).strip().lower()
    return s if s.startswith("ddim") else f"ddim{s}" if s.isdigit() else s


def _stage_bar(bar, name):
    """Advance the per-stage progress bar (None: no bar) and show the stage now running."""
    if bar is None:
        return
    if getattr(bar, "_stage", None) is not None:
        bar.update(1)
    bar._stage = name
    if name is not None:
        bar.set_postfix_str(name)


def _finish(out: dict, return_intermediates: bool, **extra):
    last = next(out[k] for k in ("upsampler2", "upsampler1", "decoder") if k in out)
    images = io.to_uint8(last)
    if not return_intermediates:
        return images
    inter = {k: np.asarray(v) for k, v in out.items()}
    inter.update({k: np.asarray(v) for k, v in extra.items()})
    return images, inter
