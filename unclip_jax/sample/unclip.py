"""`UnCLIP`: a loaded model (CLIP, prior, decoder, upsamplers) and its stage samplers.

    pipe = UnCLIP.from_directory()                   # the bundled model, or a model directory
    images = pipe.generate(["a red circle"], seed)   # uint8 [N, H, W, 3]

The class loads the stages (`unclip_jax.sample.loading`) and runs each one as ONE compiled
program (`unclip_jax.sample.programs`; the pure samplers are `unclip_jax.sample.stage_fns`).
The chain (`decode`, `generate`: `unclip_jax.sample.chain`), the paper's manipulations
(`invert`, `variations`, `interpolate`, `text_diff`: `unclip_jax.sample.manipulations`) and
editing (`inpaint`, `img2img`: `unclip_jax.sample.editing`; `mix`:
`unclip_jax.sample.mixing`) are functions of an `UnCLIP`, bound here as its methods.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np

from unclip_jax import export, paths, runtime
from unclip_jax.diffusion import schedules
from unclip_jax.diffusion import steps as steps_grammar
from unclip_jax.errors import CheckpointError, UserError
from unclip_jax.sample import chain, editing, manipulations, mixing, stage_fns, stage_runs
from unclip_jax.sample import progress as progress_lib
from unclip_jax.sample.checks import check_guidance, check_prompts
from unclip_jax.sample.diffusers_style import DiffusersStyle
from unclip_jax.sample.loading import (Stage, check_stages, load_stage, local_directory,
                                       stage_directories)
from unclip_jax.sample.programs import PROGRAMS, Programs
from unclip_jax.stages import UPSAMPLERS

class UnCLIP(DiffusersStyle):
    """The loaded hierarchy; stage samplers run through the shared program cache."""

    def __init__(self, stages: dict[str, Stage], tokenizer=None, *, tokenizer_dir=None,
                 devices=None, progress: bool = True, compile_cache: bool = True):
        """stages: {name: `loading.Stage`}; tokenizer: a `clip.tokenizer.Tokenizer` read from
        `tokenizer_dir`. compile_cache: keep compiled programs in JAX's persistent cache
        across processes (`unclip_jax.runtime.enable_compilation_cache`;
        `UNCLIP_JAX_CACHE_DIR` picks the directory or turns it off)."""
        check_stages(stages)
        if compile_cache:
            runtime.enable_compilation_cache()
        self.stages = stages
        self.tokenizer = tokenizer
        self.tokenizer_dir = (tokenizer_dir if tokenizer_dir is None
                              or paths.is_remote(tokenizer_dir) else os.path.abspath(tokenizer_dir))
        self.programs = Programs(devices)
        self.progress = progress
        self._empty_caption = None   # encoded "" (see `uncond_text`), made on first use
        self._tokenizer_identity = None   # `directories`, hashed on first use
        for s in stages.values():
            s.params = self.programs.replicate(s.params)

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
        stages = {name: load_stage(name, d) for name, d in dirs.items() if d is not None}
        tok = None
        if tokenizer is not None:
            if "clip" not in stages:
                raise UserError("a tokenizer needs its CLIP; pass clip=DIR too")
            from unclip_jax.clip.tokenizer import Tokenizer
            tok = Tokenizer(local_directory(tokenizer, "tokenizer directory"),
                            context_length=stages["clip"].model.context_length)
        return cls(stages, tok, tokenizer_dir=tokenizer, devices=devices, progress=progress,
                   compile_cache=compile_cache)

    @classmethod
    def from_directory(cls, root: str | None = None, *, prior: str = "auto", devices=None,
                       progress: bool = True, compile_cache: bool = True) -> "UnCLIP":
        """Load ROOT/{clip,tokenizer,prior,ar_prior,decoder,upsampler1,upsampler2}
        (`unclip_jax.sample.loading`); absent subdirectories are skipped. Without ROOT, the
        bundled shapes model (unclip_jax/assets/shapes).

        prior: which prior to load when ROOT has both — 'diffusion' (prior/), 'ar'
        (ar_prior/), 'auto' (the MANIFEST's `default_prior`, else prior/ if present, else
        ar_prior/) or 'none' (neither; for `generate(text_as_image_embed=True)` and the
        manipulations).
        """
        return cls.load(**stage_directories(root, prior), devices=devices, progress=progress,
                        compile_cache=compile_cache)

    def directories(self) -> dict[str, dict[str, str]]:
        """{stage: {'dir': path, 'identity': hash}} of the loaded stages (for sidecars)."""
        out = {n: {"dir": s.directory, "identity": s.identity} for n, s in self.stages.items()}
        if self.tokenizer_dir is not None:
            if self._tokenizer_identity is None:    # once: a gs:// one is listed on each mirror
                self._tokenizer_identity = export.checkpoint_identity(
                    local_directory(self.tokenizer_dir, "tokenizer directory"))
            out["tokenizer"] = {"dir": self.tokenizer_dir, "identity": self._tokenizer_identity}
        return out

    # ------------------------------------------------------------------ what is loaded
    def require(self, *names: str) -> None:
        """UserError naming the fix unless every stage in `names` is loaded ('prior': either
        prior; 'tokenizer': the caption tokenizer)."""
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
        from unclip_jax.stages import decoder_embedding
        return decoder_embedding(self.stages["decoder"].config.data) == "z_t"

    def image_size(self, stage: str) -> int:
        """Pixels per side of a stage's images (for 'clip': its image tower's input)."""
        model = self.stages[stage].config.model
        return int(model.vision.image_size if stage == "clip" else model.image_size)

    @property
    def mesh(self):
        return self.programs.mesh

    @property
    def num_devices(self) -> int:
        return self.programs.num_devices

    @property
    def compiled(self) -> dict[tuple, object]:
        """{(program, shapes, settings): jitted program} of the cache entries for this
        model's checkpoints on its devices (`unclip_jax.sample.programs.PROGRAMS`)."""
        mine = {self.programs.where((s.directory, s.identity)) for s in self.stages.values()}
        return {k[:3]: p for k, p in PROGRAMS.items() if k[3] in mine}

    def final_stage(self, stage: str) -> Stage | None:
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

    def is_final_only(self, stage: str) -> bool:
        """Whether upsampler `stage` runs inside the previous upsampler's loop (its final
        steps, see `final_stage`) rather than as a stage of its own."""
        i = UPSAMPLERS.index(stage)
        return i > 0 and self.final_stage(UPSAMPLERS[i - 1]) is not None

    def own_stages(self) -> list[str]:
        """'decoder' and each loaded upsampler that runs as a stage of its own, in order."""
        return ["decoder"] + [u for u in UPSAMPLERS
                              if u in self.stages and not self.is_final_only(u)]

    # ------------------------------------------------------------------ settings
    def schedule(self, stage: str, steps) -> tuple[str, schedules.Schedule]:
        """(normalised steps, respaced schedule) of `stage` for `steps` (None: its config's
        `diffusion.sample_steps`); UserError for steps the stage cannot run."""
        cfg = self.stages[stage].config.diffusion
        steps = cfg.sample_steps if steps is None else steps
        steps = steps_grammar.check(f"{stage} steps", steps, int(cfg.timesteps))
        return steps, schedules.respace(cfg.schedule, int(cfg.timesteps), steps)

    def guidance(self, stage: str, value) -> float:
        """`stage`'s guidance scale: `value`, or its config's when None; checked ≥ 0."""
        cfg = self.stages[stage].config.diffusion
        return check_guidance(f"{stage} guidance", cfg.guidance_scale if value is None
                              else value)

    def finite(self, stage: str, x):
        """`x` when every value is finite, else CheckpointError naming the stage (NaN/Inf
        outputs mean damaged weights or an unstable setting; never an all-black image)."""
        if not bool(np.isfinite(np.asarray(jax.device_get(x))).all()):
            where = self.stages[stage].directory if stage in self.stages else stage
            raise CheckpointError(
                f"the {stage} stage produced non-finite values (NaN/Inf); its weights in "
                f"{where} may be damaged — re-export or re-download them (or try other "
                "steps/guidance); nothing was written")
        return x

    def bar(self, total: int, desc: str) -> progress_lib.StageBar:
        """A progress bar over `total` stages (hidden unless `progress`)."""
        return progress_lib.StageBar(total, desc, self.progress)

    def run_program(self, name: str, stage: Stage, settings: tuple, fn, args: tuple):
        """`fn(*args)` as the cached program `name` of `stage` for these `settings` (static
        values that change the program) on this model's devices.

        Inside a request whose progress bar is shown, the bar says when the program is
        compiling and counts its diffusion steps (a program traced with step reports: see
        `unclip_jax.sample.progress`)."""
        checkpoint = (stage.directory, stage.identity)
        bar = progress_lib.active() if self.progress else None
        settings = settings + (bar is not None,)
        if bar is None:
            return self.programs.run(name, checkpoint, settings, fn, args)
        sched = next((a for a in args if isinstance(a, schedules.Schedule)), None)
        if sched is not None:
            bar.begin_steps(name, sched.num_steps)
        fresh = self.programs.cache_key(name, checkpoint, settings, args) not in PROGRAMS
        bar.compiling(name, fresh)
        with progress_lib.tracing_step_reports(True):
            out = self.programs.run(name, checkpoint, settings, fn, args)
        bar.compiling(name, False)
        return out

    # ------------------------------------------------------------------ CLIP
    def encode_text(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
        """captions → dict(embeds [B, D], states [B, L, W], mask [B, L], ids [B, L] int32 the
        token ids) as host arrays."""
        self.require("clip", "tokenizer")
        ids, _ = self.tokenizer(check_prompts(captions))
        return {**self._encode_ids(ids), "ids": np.asarray(ids, np.int32)}

    def _encode_ids(self, ids) -> dict[str, np.ndarray]:
        from unclip_jax.clip.model import CLIP
        clip = self.stages["clip"]
        (ids_d,), _, n = self.programs.pad(ids)

        def fn(params, ids):
            out = clip.model.apply(stage_fns.as_variables(params), ids, method=CLIP.encode_text)
            return {k: out[k] for k in ("embeds", "states", "mask")}
        out = self.run_program("clip_text", clip, (), fn, (clip.params, ids_d))
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
        self.require("clip", "tokenizer")
        if self._empty_caption is None:
            ids, mask = self.tokenizer.encode_empty()
            self._empty_caption = self._encode_ids(ids)
            self._empty_caption["mask"] = mask
        return self._empty_caption

    def encode_images(self, images) -> np.ndarray:
        """images (uint8 or float [-1, 1], NHWC, any size) → CLIP image embeddings [B, D]."""
        self.require("clip")
        from unclip_jax.clip.model import CLIP
        from unclip_jax.clip.preprocess import preprocess
        clip = self.stages["clip"]
        if "vision_model" not in stage_fns.as_variables(clip.params)["params"]:
            raise UserError(f"the CLIP checkpoint {clip.directory} has no image encoder (text "
                            "tower only, e.g. a Karlo conversion); convert a ViT-L/14 CLIPModel "
                            "with `unclip-jax convert-clip SRC DIR` and use DIR as clip/")
        (x,), _, n = self.programs.pad(images)

        def fn(params, x):
            x = preprocess(x, clip.model.image_size)
            return clip.model.apply(stage_fns.as_variables(params), x,
                                    method=CLIP.encode_image)["embeds"]
        return np.asarray(self.run_program("clip_image", clip, (), fn, (clip.params, x)))[:n]

    # ------------------------------------------------------------------ stages, chain, edits
    prior_sample = stage_runs.prior_sample
    initial_noise = stage_runs.initial_noise
    decoder_sample = stage_runs.decoder_sample
    decoder_invert = stage_runs.decoder_invert
    upsample = stage_runs.upsample
    decode = chain.decode
    generate = chain.generate
    invert = manipulations.invert
    variations = manipulations.variations
    interpolate = manipulations.interpolate
    text_diff = manipulations.text_diff
    inpaint = editing.inpaint
    img2img = editing.img2img
    mix = mixing.mix
