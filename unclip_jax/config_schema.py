"""The schema of a stage config: every section with its keys and generic defaults. Presets
(configs/*.py) and converters fill these in; the library never reads a preset.

A stage config has these sections (all locked; a typo is an error):
  stage      one of `unclip_jax.stages.STAGES`
  seed       int
  model      hyperparameters of the stage's Flax module (model.kind picks the class):
             `clip_model`, `diffusion_prior`, `unet` (the AR prior's: a preset's own dict)
  diffusion  schedule / target / variance / loss / sampling defaults (`diffusion`)
  clip       the CLIP this stage reads embeddings from: model config + checkpoint path
  data       dataset and preprocessing (`data`)
  train      optimiser, schedule, EMA, batch, checkpointing, logging (`train`)
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
          dtype="float32", init_from=""):
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
        t_band=(),                    # diffusion stages: (lo, hi) timesteps drawn more often ...
        t_band_p=0.0,                 # ... with this probability (train/losses.sample_timesteps)
        object_weight=1.0,            # diffusion stages: error weight of the object region of
                                      # flat-background scenes (1 = off; diffusion/object_region)
        init_from=init_from,          # a new run starts from this exported stage's weights
                                      # ('bundled' = the bundled model's; train/init_from.py)
    ))


def mesh(data=-1, fsdp=1, tensor=1):
    return mlc.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def stage_config(stage, model, *, diffusion_cfg=None, clip=None, data=None, train_cfg=None,
                 seed=0):
    """A locked stage config from its sections (see the module docstring)."""
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


# ----------------------------------------------------------------------------- model sections
def clip_model(*, embed_dim, text, vision, layer_norm_eps=1e-5, logit_scale_init=2.6592,
               tokenizer="", dtype="float32", remat=False):
    """CLIP `model` section (`unclip_jax.clip.model.CLIP.from_config`).

    text: vocab_size, context_length, width, layers, heads, mlp_ratio, activation,
    eos_token_id, pad_token_id; vision: image_size, patch_size, width, layers, heads,
    mlp_ratio, activation. tokenizer: a Hugging Face tokenizer directory ('' = build one from
    the dataset's captions)."""
    return mlc.ConfigDict(dict(kind="clip", embed_dim=embed_dim, text=dict(text),
                               vision=dict(vision), layer_norm_eps=layer_norm_eps,
                               logit_scale_init=logit_scale_init, tokenizer=tokenizer,
                               dtype=dtype, remat=remat))


def clip_ref(model):
    """`clip` section of a later stage: the CLIP it reads embeddings from."""
    return mlc.ConfigDict(dict(model=model, checkpoint=""))


def data(image_size, *, name="", **kw):
    """`data` section (`unclip_jax.data.pipeline`); `kw` overrides or adds keys."""
    d = dict(name=name, data_dir="", image_size=image_size, low_res_size=0, crop_size=0,
             degradation="none", embeddings_dir="", shuffle_buffer=2048,
             decoder_embedding="image",   # decoder: condition on z_i ('image') or z_t ('text')
             caption_tokenizer="",   # decoder with model.caption_vocab > 0: tokenizer dir of
                                     # the CLIP that wrote the embeddings ('bundled': the
                                     # bundled model's)
             caption_colour_swap=0.0)  # ... and on unclip_shapes: probability that the ids
                                       # its caption encoder reads are of the caption with
                                       # one object's colour changed (hard_negatives)
    d.update(kw)
    return mlc.ConfigDict(d)


def diffusion_prior(*, width, layers, heads, embed_dim, text_width, text_len, mlp_ratio=4.0,
                    normalize="scale", embed_scale=17.2, clamp=10.0, sample_candidates=2,
                    normalize_z_t=True, time_mlp_ratio=4.0, time_embed_dim=0, norm_in=False,
                    dropout=0.0, remat=False, dtype="float32"):
    """Diffusion-prior `model` section (`unclip_jax.models.prior.from_config`)."""
    return mlc.ConfigDict(dict(
        kind="diffusion_prior", width=width, layers=layers, heads=heads, mlp_ratio=mlp_ratio,
        embed_dim=embed_dim, text_width=text_width, text_len=text_len,
        normalize=normalize,            # 'scale' (× embed_scale, L2-normalised) | 'meanstd'
        embed_scale=embed_scale,
        clamp=clamp,                            # clip sampled x0 to ±clamp (normalised space)
        sample_candidates=sample_candidates,    # best-of-N by z_i·z_t at sampling (paper: 2)
        normalize_z_t=normalize_z_t,            # L2-normalise z_t before projecting it
        time_mlp_ratio=time_mlp_ratio,          # timestep MLP hidden width / width
        time_embed_dim=time_embed_dim,          # ... or that width itself (> 0 wins)
        norm_in=norm_in,                        # LayerNorm on the sequence before the blocks
        dropout=dropout, remat=remat, dtype=dtype))


def unet(image_size, model_channels, channel_mult, num_res_blocks, attention_resolutions, *,
         out_channels, embed_dim, text_width, text_len, low_res=False, conditional=True,
         context_dim=None):
    """`model` section of an ADM UNet (`unclip_jax.models.unet.UNet.from_config`).

    conditional: decoder (z_i [embed_dim] + CLIP text token states [text_len, text_width] as
    attention context); otherwise only the timestep (and, with low_res, the low-resolution
    image) condition it. context_dim defaults to 2 × model_channels.
    """
    context_dim = 2 * model_channels if context_dim is None else context_dim
    return mlc.ConfigDict(dict(
        kind="unet",
        image_size=image_size,
        in_channels=3,
        out_channels=out_channels,              # 6 = ε and learned-range variance
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=num_res_blocks,
        attention_resolutions=tuple(attention_resolutions),  # resolutions with attention
        num_head_channels=32,
        dropout=0.1,
        resblock_updown=True,
        use_scale_shift_norm=True,
        low_res_channels=3 if low_res else 0,   # upsampler: low-res image concatenated
        embed_dim=embed_dim if conditional else 0,   # z_i conditioning (decoder)
        # GroupNorm groups: 4 channels per group (one channel per group removes each
        # channel's spatial mean, and a small decoder then cannot carry a background colour)
        norm_groups=max(1, model_channels // 4),
        clip_tokens=4 if conditional else 0,         # extra context tokens from z_i
        text_width=text_width if conditional else 0,  # width of the CLIP token states (input)
        text_len=text_len if conditional else 0,
        context_dim=context_dim if conditional else 0,  # context width after projection
        remat=False,
        dtype="float32",
    ))
