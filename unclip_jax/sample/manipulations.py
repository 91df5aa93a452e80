"""The paper's image manipulations on a loaded `UnCLIP` (functions bound as its methods).

- `invert`: CLIP-encode images and DDIM-invert the decoder (caption dropped) to x_T.
- `variations` (Fig. 3): invert, then re-sample with DDIM(η > 0).
- `interpolate` (Fig. 4): slerp between two images' z_i, and between their inverted x_T
  (or one fixed x_T), decoded with DDIM η = 0.
- `text_diff` (Fig. 5): move z_i toward z_d = normalize(z_t(to) − z_t(from)) by slerp.

`slerp`, `l2_normalize` and `slerp_flat` are the pure spherical math. Results are uint8
[N, H, W, 3]; with `return_intermediates` also the float stage outputs and embeddings.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from unclip_jax.diffusion import steps as steps_grammar
from unclip_jax.errors import UserError
from unclip_jax.sample import chain
from unclip_jax.sample.checks import as_key, check_count, check_eta
from unclip_jax.sample.images import load_images, one_image
from unclip_jax.sample.progress import advance


# --------------------------------------------------------------------------- spherical math

def slerp(a, b, t, eps: float = 1e-4):
    """Spherical interpolation between vectors `a` and `b` along their great circle.

    a, b: [..., D]; t: scalar or array broadcastable against a[..., :1] (t of shape [N, 1]
    with a, b of shape [D] gives [N, D]). With θ the angle between a and b,
        slerp = sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b,
    so t=0 gives a, t=1 gives b, and unit vectors stay unit vectors. When a and b are
    (nearly) parallel (sin θ < eps) it uses linear interpolation, which agrees with the
    formula to first order there. Float32.
    """
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    t = jnp.asarray(t, jnp.float32)
    na = jnp.linalg.norm(a, axis=-1, keepdims=True)
    nb = jnp.linalg.norm(b, axis=-1, keepdims=True)
    cos = jnp.sum(a * b, axis=-1, keepdims=True) / jnp.maximum(na * nb, 1e-12)
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    sin = jnp.sin(theta)
    parallel = sin < eps
    safe_sin = jnp.where(parallel, 1.0, sin)
    wa = jnp.where(parallel, 1.0 - t, jnp.sin((1.0 - t) * theta) / safe_sin)
    wb = jnp.where(parallel, t, jnp.sin(t * theta) / safe_sin)
    return wa * a + wb * b


def l2_normalize(x, axis: int = -1):
    """x / ‖x‖ along `axis`, float32."""
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def slerp_flat(a, b, t):
    """slerp of whole arrays a, b [...] (e.g. noise images) at fractions t [N] → [N, ...]."""
    shape = a.shape
    out = slerp(a.reshape(-1), b.reshape(-1), jnp.asarray(t, jnp.float32)[:, None])
    return out.reshape((-1,) + shape)


def _fractions(n: int) -> jnp.ndarray:
    return jnp.linspace(0.0, 1.0, n) if n > 1 else jnp.zeros((1,))


# --------------------------------------------------------------------------- manipulations

def ddim_steps(pipe, steps) -> str:
    """Manipulations run the decoder with DDIM: `steps` (None: the decoder config's) with a
    plain count N as 'ddimN' (`unclip_jax.diffusion.steps.as_ddim`)."""
    if steps is None:
        steps = pipe.stages["decoder"].config.diffusion.sample_steps
    return steps_grammar.as_ddim(steps)


def _prepare(pipe, decoder_steps, upsampler_steps) -> str:
    steps = ddim_steps(pipe, decoder_steps)
    chain.validate_steps(pipe, steps, chain.steps_per_upsampler(upsampler_steps))
    return steps


def invert(pipe, images, *, decoder_steps=None, decoder_guidance=None):
    """images → (x0 [B,S,S,3] float, z_i [B, D], x_T [B,S,S,3]) by CLIP encoding and
    DDIM inversion of the decoder (caption dropped). CLIP sees each image resized from
    the source to its own input size, not the decoder-size x0 (a 16 px decoder's input
    upscaled to CLIP's 64 px is a different picture to CLIP)."""
    pipe.require("clip", "decoder")
    x0 = load_images(images, pipe.image_size("decoder"))
    z_i = pipe.encode_images(load_images(images, pipe.stages["clip"].model.image_size))
    x_T = pipe.decoder_invert(z_i, x0, steps=ddim_steps(pipe, decoder_steps),
                              guidance=decoder_guidance)
    return x0, z_i, x_T


def variations(pipe, images, key, n: int = 4, eta: float = 0.8, *, decoder_steps=None,
               decoder_guidance=None, upsampler_steps=None,
               return_intermediates: bool = False):
    """n variations of each image (paper Fig. 3): CLIP-encode, DDIM-invert the decoder to
    x_T given z_i, and re-sample with DDIM(η). → uint8 [B·n, H, W, 3], image-major.
    At η = 0 each variation reproduces (approximately) the input image."""
    pipe.require("clip", "decoder")
    n = check_count("n", n)
    check_eta(eta)
    steps = _prepare(pipe, decoder_steps, upsampler_steps)
    with pipe.bar(chain.num_stages(pipe, False) + 1, "variations") as bar:
        advance(bar, "invert")
        _, z_i, x_T = invert(pipe, images, decoder_steps=steps,
                             decoder_guidance=decoder_guidance)
        z_rep, xT_rep = np.repeat(z_i, n, axis=0), np.repeat(x_T, n, axis=0)
        out = chain.decode(pipe, z_rep, as_key(key), x_T=xT_rep, decoder_steps=steps,
                           decoder_guidance=decoder_guidance, upsampler_steps=upsampler_steps,
                           eta=eta, ddim=True, bar=bar)
    return chain.finish(out, return_intermediates, z_i=z_rep)


def interpolate(pipe, image_a, image_b, n: int = 5, key=0, *, fixed_xT: bool = False,
                decoder_steps=None, decoder_guidance=None, upsampler_steps=None,
                return_intermediates: bool = False):
    """n frames from image_a to image_b (paper Fig. 4): z_i = slerp(z_a, z_b, t) for
    t = linspace(0, 1, n); x_T = slerp of the two inverted latents, or (fixed_xT) one
    x_T drawn from key for every frame. DDIM η = 0. → uint8 [n, H, W, 3]."""
    pipe.require("clip", "decoder")
    n = check_count("n", n)
    steps = _prepare(pipe, decoder_steps, upsampler_steps)
    key = as_key(key)
    with pipe.bar(chain.num_stages(pipe, False) + 1, "interpolate") as bar:
        advance(bar, "invert")
        images = [one_image(image_a), one_image(image_b)]
        if fixed_xT:
            z_ab = pipe.encode_images(np.concatenate(
                [load_images(i, pipe.stages["clip"].model.image_size) for i in images]))
            x_T = np.repeat(pipe.initial_noise(1, key), n, axis=0)
        else:
            _, z_ab, xT_ab = invert(pipe, images, decoder_steps=steps,
                                    decoder_guidance=decoder_guidance)
            x_T = np.asarray(slerp_flat(xT_ab[0], xT_ab[1], _fractions(n)))
        z_i = np.asarray(slerp(z_ab[0], z_ab[1], _fractions(n)[:, None]))
        out = chain.decode(pipe, z_i, key, x_T=x_T, decoder_steps=steps,
                           decoder_guidance=decoder_guidance, upsampler_steps=upsampler_steps,
                           eta=0.0, ddim=True, bar=bar)
    return chain.finish(out, return_intermediates, z_i=z_i, endpoints=z_ab)


def text_diff(pipe, image, caption_from: str, caption_to: str, n: int = 5,
              max_angle: float = 0.5, key=0, *, decoder_steps=None, decoder_guidance=None,
              upsampler_steps=None, return_intermediates: bool = False):
    """Edit an image toward a caption change (paper Fig. 5).

    z_d = normalize(z_t(caption_to) − z_t(caption_from)); frame k decodes
    z_θ = slerp(ẑ_i, z_d, θ_k)·‖z_i‖ with θ = linspace(0, max_angle, n) (θ as slerp's
    fraction, max_angle in [0, 1]; the paper uses up to 0.25–0.5), all from the image's
    inverted x_T with DDIM η = 0. → uint8 [n, H, W, 3].
    """
    pipe.require("clip", "tokenizer", "decoder")
    n = check_count("n", n)
    max_angle = float(max_angle)
    if not 0.0 <= max_angle <= 1.0:
        raise UserError(f"max_angle={max_angle} must lie in [0, 1] (a slerp fraction; the "
                        "paper uses 0.25–0.5)")
    for flag, caption in (("--from", caption_from), ("--to", caption_to)):
        if not isinstance(caption, str) or not caption.strip():
            raise UserError(f"the {flag} caption is empty; give the caption of the image "
                            "(--from) and the one to move toward (--to)")
    steps = _prepare(pipe, decoder_steps, upsampler_steps)
    with pipe.bar(chain.num_stages(pipe, False) + 1, "text_diff") as bar:
        advance(bar, "invert")
        _, z_i, x_T = invert(pipe, image, decoder_steps=steps,
                             decoder_guidance=decoder_guidance)
        z_i, x_T = z_i[:1], x_T[:1]
        z_t = pipe.encode_text([caption_from, caption_to])["embeds"]
        z_d = l2_normalize(z_t[1] - z_t[0])
        theta = jnp.linspace(0.0, max_angle, n)[:, None]
        z_path = np.array(slerp(l2_normalize(z_i[0]), z_d, theta) * np.linalg.norm(z_i[0]))
        z_path[0] = z_i[0]   # θ = 0 is the image's own embedding, exactly
        out = chain.decode(pipe, z_path, as_key(key), x_T=np.repeat(x_T, n, axis=0),
                           decoder_steps=steps, decoder_guidance=decoder_guidance,
                           upsampler_steps=upsampler_steps, eta=0.0, ddim=True, bar=bar)
    return chain.finish(out, return_intermediates, z_i=z_path, z_d=np.asarray(z_d))
