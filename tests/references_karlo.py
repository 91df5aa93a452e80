"""The Karlo references of the parity tests (see references.py): tiny random diffusers /
transformers components of Karlo's types in the diffusers unCLIP layout, the inputs the
model-parity tests feed them, their outputs, one UnCLIPScheduler step per case, and diffusers'
UnCLIPPipeline run with our samplers' latents and step noise."""
from __future__ import annotations

import os

import numpy as np

from references import jitter
from references import to_torch as _t

D, TW, L = 8, 8, 6            # CLIP embedding, CLIP text width, text tokens
CTX = 16                      # decoder context width (cross_attention_dim)
DEC, SR = 8, 16               # decoder / super-res image sizes
CH = (8, 16)                  # UNet widths (small: the stored weights stay small)
KARLO_CAPTIONS = ["a red square", "blue circle"]
# one UnCLIPScheduler step per case: stage → (scheduler kwargs, steps, {step index: noise
# seed}, seed of the inputs)
STEP_CASES = {
    "prior": (dict(variance_type="fixed_small_log", prediction_type="sample",
                   clip_sample_range=5.0), 25, {0: 7, 10: 17, 22: 29}, 4),
    "decoder": (dict(variance_type="learned_range"), 25, {3: 14, 12: 23, 23: 34}, 5),
    "upsampler1": (dict(variance_type="fixed_small_log"), 7, {2: 3}, 6),
}
TIMESTEP_COUNTS = (2, 7, 25, 64, 250)


def build_karlo(root: str, bin_text_proj: bool = True) -> dict:
    """Tiny random Karlo components of the real types, saved in the diffusers unCLIP layout
    under ROOT (text_proj as a torch .bin when `bin_text_proj`, so both readers are
    exercised; the stored copy is all safetensors). → {component: torch module}."""
    import torch
    from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel, UnCLIPScheduler
    from diffusers.pipelines.deprecated.unclip import UnCLIPTextProjModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection

    from unclip_jax.clip.tokenizer import build_tokenizer

    torch.manual_seed(0)
    models = {}
    models["prior"] = jitter(PriorTransformer(
        num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=D,
        num_embeddings=L, additional_embeddings=4), 0.3)
    with torch.no_grad():
        models["prior"].clip_std.copy_(0.5 + torch.rand(1, D))
    models["text_proj"] = jitter(UnCLIPTextProjModel(
        clip_extra_context_tokens=4, clip_embeddings_dim=D, time_embed_dim=4 * CH[0],
        cross_attention_dim=CTX), 0.3)
    models["decoder"] = jitter(UNet2DConditionModel(
        sample_size=DEC, in_channels=3, out_channels=6, block_out_channels=CH,
        layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=8,
        cross_attention_dim=CTX, class_embed_type="identity",
        resnet_time_scale_shift="scale_shift", norm_num_groups=4))
    for name in ("super_res_first", "super_res_last"):
        models[name] = jitter(UNet2DModel(
            sample_size=SR, in_channels=6, out_channels=3, block_out_channels=CH,
            layers_per_block=1, down_block_types=("ResnetDownsampleBlock2D",) * 2,
            up_block_types=("ResnetUpsampleBlock2D",) * 2, resnet_time_scale_shift="scale_shift",
            add_attention=False, norm_num_groups=4))
    tok_dir = build_tokenizer(["a red square", "a blue circle on green"] * 4, 48,
                              os.path.join(root, "tokenizer"), L)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    models["text_encoder"] = jitter(CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=TW, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=L, projection_dim=D,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=1)))
    for name, m in models.items():
        m.save_pretrained(os.path.join(root, name),
                          safe_serialization=not (bin_text_proj and name == "text_proj"))
    UnCLIPScheduler(**STEP_CASES["prior"][0]).save_pretrained(
        os.path.join(root, "prior_scheduler"))
    UnCLIPScheduler(**STEP_CASES["decoder"][0]).save_pretrained(
        os.path.join(root, "decoder_scheduler"))
    UnCLIPScheduler(**STEP_CASES["upsampler1"][0]).save_pretrained(
        os.path.join(root, "super_res_scheduler"))
    return models


def karlo_inputs(src: str) -> dict[str, np.ndarray]:
    """The inputs every Karlo model-parity test feeds both sides (seeded numpy)."""
    from unclip_jax.clip.tokenizer import Tokenizer

    rng = np.random.default_rng(1)
    x = {}
    x["prior/x_t"], x["prior/z_t"] = rng.normal(size=(2, 3, D)).astype(np.float32)
    x["prior/states"] = rng.normal(size=(3, L, TW)).astype(np.float32)
    mask = np.ones((3, L), bool)
    mask[1, 3:] = False
    mask[2, 2:] = False
    x["prior/mask"], x["prior/t"] = mask, np.array([0, 417, 999])

    rng = np.random.default_rng(2)
    B = 2
    x["decoder/x"] = rng.normal(size=(B, DEC, DEC, 3)).astype(np.float32)
    x["decoder/z_i"], x["decoder/z_t"] = rng.normal(size=(2, B, D)).astype(np.float32)
    x["decoder/states"] = rng.normal(size=(B, L, TW)).astype(np.float32)
    mask = np.ones((B, L), bool)
    mask[1, 2:] = False
    x["decoder/mask"], x["decoder/t"] = mask, np.array([5, 730])

    rng = np.random.default_rng(3)
    x["super_res/x"], x["super_res/up"] = rng.normal(size=(2, 2, SR, SR, 3)).astype(np.float32)
    x["super_res/t"] = np.array([0, 833])

    ids, mask = Tokenizer(os.path.join(src, "tokenizer"), L)(KARLO_CAPTIONS)
    x["clip/ids"], x["clip/mask"] = np.asarray(ids), np.asarray(mask)
    return x


def karlo_step_inputs(stage: str):
    """(x, model output) in torch's layout for one scheduler-step case, seeded with torch."""
    import torch
    torch.manual_seed(STEP_CASES[stage][3])
    if stage == "prior":
        x = torch.randn(3, D)
        return x, 4.0 * torch.randn(3, D)          # some entries beyond the ±5 clamp
    if stage == "decoder":
        x = torch.randn(2, 3, DEC, DEC)
        return x, torch.cat([torch.randn(2, 3, DEC, DEC),
                             torch.tanh(torch.randn(2, 3, DEC, DEC))], 1)
    x, out = torch.randn(2, 2, 3, SR, SR)
    return x, out


def karlo_outputs(models: dict, x: dict) -> dict[str, np.ndarray]:
    """The torch components' outputs on `karlo_inputs` (NHWC where images), plus every
    UnCLIPScheduler reference this module's step cases and timestep counts ask for."""
    import torch
    import torch.nn.functional as F
    from diffusers import UnCLIPScheduler

    ref = {}
    with torch.no_grad():
        m = models["prior"]
        ref["prior/out"] = m(_t(x["prior/x_t"]), timestep=_t(x["prior/t"]),
                             proj_embedding=_t(x["prior/z_t"]),
                             encoder_hidden_states=_t(x["prior/states"]),
                             attention_mask=_t(x["prior/mask"])).predicted_image_embedding.numpy()
        ref["prior/clip_mean"] = m.clip_mean.numpy()[0]
        ref["prior/clip_std"] = m.clip_std.numpy()[0]
        ref["prior/post_process"] = m.post_process_latents(_t(x["prior/x_t"])).numpy()

        # diffusers' guidance batch [uncond; cond]: in the first half text_proj's learned
        # embedding replaces z_i (our drop_image_embed), the second half is the plain
        # conditional path (image embeddings, prompt embeds and token states end to end)
        two = lambda a: np.concatenate([a, a])  # noqa: E731
        enc, additive = models["text_proj"](
            image_embeddings=_t(x["decoder/z_i"]), prompt_embeds=_t(two(x["decoder/z_t"])),
            text_encoder_hidden_states=_t(two(x["decoder/states"])),
            do_classifier_free_guidance=True)
        dmask = F.pad(_t(two(x["decoder/mask"])), (4, 0), value=True)
        ref["decoder/out"] = models["decoder"](
            sample=_t(two(x["decoder/x"])).permute(0, 3, 1, 2), timestep=_t(two(x["decoder/t"])),
            encoder_hidden_states=enc, class_labels=additive,
            attention_mask=dmask).sample.permute(0, 2, 3, 1).numpy()

        inp = torch.cat([_t(x["super_res/x"]), _t(x["super_res/up"])], dim=-1).permute(0, 3, 1, 2)
        for name in ("super_res_first", "super_res_last"):
            ref[f"{name}/out"] = models[name](inp, _t(x["super_res/t"])).sample.permute(
                0, 2, 3, 1).numpy()

        out = models["text_encoder"](input_ids=_t(x["clip/ids"]).long(),
                                     attention_mask=_t(x["clip/mask"]).long())
        ref["clip/embeds"] = out.text_embeds.numpy()
        ref["clip/states"] = out.last_hidden_state.numpy()

    for n in TIMESTEP_COUNTS:
        s = UnCLIPScheduler()
        s.set_timesteps(n)
        ref[f"timesteps/{n}"] = np.sort(s.timesteps.numpy())

    for stage, (kwargs, n, steps, _) in STEP_CASES.items():
        xs, out = karlo_step_inputs(stage)
        s = UnCLIPScheduler(**kwargs)
        s.set_timesteps(n)
        perm = (0, 2, 3, 1) if xs.ndim == 4 else (0, 1)
        for i, seed in steps.items():
            t, prev = int(s.timesteps[i]), int(s.timesteps[i + 1])
            g = torch.Generator().manual_seed(seed)
            prev_sample = s.step(out, t, xs, prev_timestep=prev, generator=g).prev_sample
            noise = torch.randn(xs.shape, generator=torch.Generator().manual_seed(seed))
            key = f"step/{stage}/{i}"
            ref[key + "/t"] = np.array(t)
            ref[key + "/x"] = xs.numpy().transpose(perm)
            ref[key + "/out"] = out.numpy().transpose(perm)
            ref[key + "/noise"] = noise.numpy().transpose(perm)
            ref[key + "/prev"] = prev_sample.numpy().transpose(perm)
    return ref


def build_prior_te30(root: str):
    """A PriorTransformer whose time_embed_dim (30) is no whole multiple of its width (22),
    saved as ROOT/prior. → the torch module."""
    import torch
    from diffusers import PriorTransformer

    torch.manual_seed(1)
    m = jitter(PriorTransformer(
        num_attention_heads=2, attention_head_dim=11, num_layers=1, embedding_dim=D,
        num_embeddings=L, additional_embeddings=4, time_embed_dim=30), 0.3)
    m.save_pretrained(os.path.join(root, "prior"))
    return m


def prior_te30_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    x = {}
    x["x_t"], x["z_t"] = rng.normal(size=(2, 2, D)).astype(np.float32)
    x["states"] = rng.normal(size=(2, L, D)).astype(np.float32)
    x["mask"], x["t"] = np.ones((2, L), bool), np.array([3, 640])
    return x


def prior_te30_outputs(model, x) -> dict[str, np.ndarray]:
    import torch
    with torch.no_grad():
        return {"out": model(_t(x["x_t"]), timestep=_t(x["t"]), proj_embedding=_t(x["z_t"]),
                             encoder_hidden_states=_t(x["states"]),
                             attention_mask=_t(x["mask"])).predicted_image_embedding.numpy()}


# ----------------------------------------------------------------------------- the pipeline

PIPE_STEPS = 3
PIPE_PROMPTS = ["a red square", "a blue circle"]
PIPE_SEED = 7


def _draws(stage: str, B: int, shape: tuple, index=None) -> np.ndarray:
    """Our samplers' draws (their documented key contract): example b of `stage` uses
    k_b = fold_in(fold_in(seed, stage id), b); [B, *shape] of normal(k_b), or of
    normal(fold_in(k_b, index)) when `index` is given."""
    import jax
    from unclip_jax.sample.programs import KEY_IDS

    k = jax.random.fold_in(jax.random.key(PIPE_SEED), KEY_IDS[stage])
    keys = [jax.random.fold_in(k, b) for b in range(B)]
    if index is not None:
        keys = [jax.random.fold_in(kb, index) for kb in keys]
    return np.stack([np.asarray(jax.random.normal(kb, shape, np.float32)) for kb in keys])


def pipeline_inputs() -> dict[str, np.ndarray]:
    """x_T of each stage and the step noises, in the order diffusers' pipeline draws them:
    the prior's and super-res's x_T from step index N, the decoder's from the 'x_T' key;
    step i's noise from index i (i = N−1 … 1) of each stage."""
    B, n = len(PIPE_PROMPTS), PIPE_STEPS
    shapes = {"prior": (D,), "decoder": (DEC, DEC, 3), "upsampler1": (SR, SR, 3)}
    x = {"prior_xT": _draws("prior", B, shapes["prior"], n),
         "decoder_xT": _draws("x_T", B, shapes["decoder"]),
         "super_res_xT": _draws("upsampler1", B, shapes["upsampler1"], n)}
    x["step_noise"] = np.concatenate([_draws(stage, B, shape, i).reshape(B, -1)
                                      for stage, shape in shapes.items()
                                      for i in range(n - 1, 0, -1)], axis=1)
    return x


def _split_step_noise(flat: np.ndarray) -> list[np.ndarray]:
    B, n = flat.shape[0], PIPE_STEPS - 1
    shapes = [(D,)] * n + [(DEC, DEC, 3)] * n + [(SR, SR, 3)] * n
    out, at = [], 0
    for s in shapes:
        size = int(np.prod(s))
        out.append(flat[:, at:at + size].reshape((B,) + s))
        at += size
    return out


def _float64_coefficients(scheduler):
    """UnCLIPScheduler with its β / ᾱ tables in float64 (samples stay float32: its 0-d
    coefficients do not promote them). In float32 its 1 − ᾱ_t cancels at small t (1 − ᾱ_0 ≈
    4e-5 keeps ~3 digits), which scales the final step's x0 by ≈ 0.9995; our schedules
    compute these coefficients in float64, so the reference does too."""
    import torch
    betas = scheduler.betas.double()
    scheduler.betas, scheduler.alphas = betas, 1.0 - betas
    scheduler.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def pipeline_outputs(models: dict, src: str, x: dict) -> dict[str, np.ndarray]:
    """diffusers' UnCLIPPipeline with our latents and step noise → images [B, SR, SR, 3] in
    [0, 1], image embeddings z_i [B, D], the upscaled decoder image [B, SR, SR, 3]."""
    import diffusers.schedulers.scheduling_unclip as sched_mod
    from diffusers import UnCLIPScheduler
    from diffusers.pipelines.deprecated.unclip import UnCLIPPipeline
    from transformers import AutoTokenizer

    def nchw(a):
        a = _t(a)
        return a.permute(0, 3, 1, 2) if a.ndim == 4 else a

    queue = [nchw(n) for n in _split_step_noise(x["step_noise"])]

    def fake_randn(shape, **_):
        noise = queue.pop(0)
        assert tuple(noise.shape) == tuple(shape), (noise.shape, shape)
        return noise

    seen = {}

    def keep_z_i(mod, args, kwargs, out):    # hooks must return None (not replace outputs)
        seen.setdefault("z_i", kwargs["image_embeddings"])

    def keep_upscaled(mod, args, kwargs):
        seen.setdefault("upscaled", (args[0] if args else kwargs["sample"])[:, 3:])

    hooks = [models["text_proj"].register_forward_hook(keep_z_i, with_kwargs=True),
             models["super_res_first"].register_forward_pre_hook(keep_upscaled, with_kwargs=True)]
    original = sched_mod.randn_tensor
    sched_mod.randn_tensor = fake_randn
    try:
        sched = {n: _float64_coefficients(UnCLIPScheduler.from_pretrained(os.path.join(src, n)))
                 for n in ("prior_scheduler", "decoder_scheduler", "super_res_scheduler")}
        ref = UnCLIPPipeline(
            prior=models["prior"], decoder=models["decoder"], text_proj=models["text_proj"],
            text_encoder=models["text_encoder"],
            tokenizer=AutoTokenizer.from_pretrained(os.path.join(src, "tokenizer")),
            super_res_first=models["super_res_first"], super_res_last=models["super_res_last"],
            **sched)
        ref.set_progress_bar_config(disable=True)
        n = PIPE_STEPS
        out = ref(PIPE_PROMPTS, prior_num_inference_steps=n, decoder_num_inference_steps=n,
                  super_res_num_inference_steps=n, prior_latents=_t(x["prior_xT"]),
                  decoder_latents=nchw(x["decoder_xT"]), super_res_latents=nchw(x["super_res_xT"]),
                  output_type="np")
    finally:
        sched_mod.randn_tensor = original
        for h in hooks:
            h.remove()
    assert not queue, "every step noise must be used"
    return {"images": out.images, "z_i": seen["z_i"].numpy(),
            "upscaled": seen["upscaled"].permute(0, 2, 3, 1).numpy()}
