"""Pieces shared by every config file: the stage skeleton and its train/mesh defaults.

A stage config has these sections (all locked; a typo is an error):
  stage      'clip' | 'prior' | 'ar_prior' | 'decoder' | 'upsampler1' | 'upsampler2'
  seed       int
  model      hyperparameters of the stage's Flax module (model.kind picks the class)
  diffusion  schedule / target / variance / loss / sampling defaults (diffusion stages)
  clip       the CLIP this stage reads embeddings from: model config + checkpoint path
  data       dataset and preprocessing
  train      optimiser, schedule, EMA, batch, checkpointing, logging
  mesh       {'data', 'fsdp', 'tensor'} sizes, one may be -1
  logical_rules  [] = unclip_jax.parallel.DEFAULT_RULES, else a list of [name, mesh_axes]
"""
import ml_collections as mlc

from unclip_jax.errors import UserError
from unclip_jax.stages import STAGES


def diffusion(schedule="cosine", timesteps=1000, predict="eps", variance="fixed_small",
              loss="mse", sample_steps="50", sampler="ddpm", guidance_scale=1.0, eta=0.0,
              clip_denoised=True, clip_range=1.0, hybrid_lambda=0.001):
    return mlc.ConfigDict(dict(
        schedule=schedule,            # 'cosine' | 'linear'
        timesteps=timesteps,          # training steps T
        predict=predict,              # model output target: 'eps' | 'x0' | 'v'
        variance=variance,            # 'fixed_small' | 'fixed_large' | 'learned_range'
        loss=loss,                    # 'mse' | 'hybrid' (MSE + λ·VLB, learned variance)
        hybrid_lambda=hybrid_lambda,
        sampler=sampler,              # default sampler: 'ddpm' | 'ddim'
        sample_steps=sample_steps,    # respacing string: '250', 'ddim25', '27', ...
        guidance_scale=guidance_scale,
        eta=eta,
        clip_denoised=clip_denoised,  # clamp predicted x0 to ±clip_range while sampling
        clip_range=clip_range,
    ))


def train(batch_size=32, steps=1000, lr=1e-4, warmup=100, lr_schedule="cosine", b1=0.9,
          b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0, ema_decay=0.9999, grad_accum=1,
          dtype="float32"):
    return mlc.ConfigDict(dict(
        batch_size=batch_size,        # global batch (all processes)
        steps=steps,
        lr=lr,
        warmup=warmup,
        lr_schedule=lr_schedule,      # 'cosine' | 'constant'
        b1=b1, b2=b2, eps=eps,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
        grad_accum=grad_accum,
        ema_decay=ema_decay,
        dtype=dtype,                  # compute dtype: 'float32' | 'bfloat16'
        log_every=10,
        ckpt_every=200,
        keep=3,                       # keep the last N checkpoints ...
        keep_every=0,                 # ... and every K-th step (0 = none)
        sample_every=0,               # PNG sample grids every K steps (image stages)
        text_drop=0.0,                # P(drop caption) for classifier-free guidance
        image_embed_drop=0.0,         # P(drop z_i) (decoder)
    ))


def mesh(data=-1, fsdp=1, tensor=1):
    return mlc.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def stage_config(stage, model, *, diffusion_cfg=None, clip=None, data=None, train_cfg=None,
                 seed=0):
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {STAGES}")
    cfg = mlc.ConfigDict()
    cfg.stage = stage
    cfg.seed = seed
    cfg.model = model
    cfg.diffusion = diffusion_cfg if diffusion_cfg is not None else mlc.ConfigDict()
    cfg.clip = clip if clip is not None else mlc.ConfigDict()
    cfg.data = data if data is not None else mlc.ConfigDict()
    cfg.train = train_cfg if train_cfg is not None else train()
    cfg.mesh = mesh()
    cfg.logical_rules = []
    cfg.lock()
    return cfg


def pick(arg, builders):
    """`get_config(arg)` helper: arg names a key of `builders` (default: first)."""
    arg = arg or next(iter(builders))
    if arg not in builders:
        raise UserError(f"unknown config variant {arg!r}; choose one of {sorted(builders)}")
    return builders[arg]()
