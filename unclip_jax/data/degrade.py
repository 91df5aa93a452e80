"""Degradations of the upsamplers' conditioning images, as pure TensorFlow functions.

All functions take float32 images in [-1, 1], NHWC [H, W, C] (single image, as inside a
tf.data `map`), and are deterministic given a stateless `seed` (int32/int64 tensor of shape
[2]); they run in graph mode.

- `gaussian_blur`: fixed blur (kernel 3, σ 0.6 for the 64→256 upsampler).
- `bsr_degrade`: the second upsampler's BSR chain — random isotropic/anisotropic blur, random
  down/up resize with a random interpolation, Gaussian noise, JPEG at a random quality —
  then a resize to the low-res size.
- `random_crop_pair`: a random high-res crop and the aligned crop of its low-res image.
"""
from __future__ import annotations

import math

import tensorflow as tf

INTERPOLATIONS = ("bilinear", "bicubic", "area")


def gaussian_kernel(kernel_size: int, sigma_x, sigma_y=None, theta=0.0) -> tf.Tensor:
    """Normalised (possibly anisotropic, rotated by `theta` radians) Gaussian, [k, k] float32.

    σ in pixels; `sigma_x`, `sigma_y`, `theta` may be scalar tensors.
    """
    sigma_x = tf.cast(sigma_x, tf.float32)
    sigma_y = sigma_x if sigma_y is None else tf.cast(sigma_y, tf.float32)
    theta = tf.cast(theta, tf.float32)
    r = tf.range(kernel_size, dtype=tf.float32) - (kernel_size - 1) / 2.0
    y, x = tf.meshgrid(r, r, indexing="ij")
    c, s = tf.cos(theta), tf.sin(theta)
    u, v = c * x + s * y, -s * x + c * y
    k = tf.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return k / tf.reduce_sum(k)


def convolve(image: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Per-channel 2-D convolution of [H, W, C] with a [k, k] kernel, reflect-padded (same size)."""
    k = kernel.shape[0]
    pad = k // 2
    x = tf.pad(image[None], [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    channels = image.shape[-1]
    w = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    return tf.nn.depthwise_conv2d(x, w, strides=[1, 1, 1, 1], padding="VALID")[0]


def gaussian_blur(image: tf.Tensor, sigma: float = 0.6, kernel_size: int = 3) -> tf.Tensor:
    """Isotropic Gaussian blur of [H, W, C] (default: the first upsampler's k=3, σ=0.6)."""
    return convolve(tf.cast(image, tf.float32), gaussian_kernel(kernel_size, sigma))


def resize(image: tf.Tensor, size, method: str = "area") -> tf.Tensor:
    """Resize [H, W, C] to `size` (int or (h, w), may be tensors) with antialiasing."""
    if isinstance(size, int):
        size = (size, size)
    return tf.image.resize(image, size, method=method, antialias=True)


def _random_resize(image, size, seed):
    """Resize to `size` with an interpolation drawn from INTERPOLATIONS."""
    choice = tf.random.stateless_uniform([], seed, 0, len(INTERPOLATIONS), dtype=tf.int32)
    branches = [lambda m=m: resize(image, size, m) for m in INTERPOLATIONS]
    return tf.switch_case(choice, branches)


def bsr_degrade(image: tf.Tensor, low_res_size: int, seed, *, kernel_size: int = 11,
                sigma_range=(0.2, 2.5), scale_range=(0.5, 1.5), noise_range=(1.0 / 255, 20.0 / 255),
                jpeg_range=(30, 95)) -> tf.Tensor:
    """BSR-style degradation of a [H, W, 3] image in [-1, 1] → [low_res_size, low_res_size, 3].

    1. blur: isotropic (p=0.5) or anisotropic rotated Gaussian, σ ∈ sigma_range pixels;
    2. resize by a factor ∈ scale_range of the input size with a random interpolation;
    3. additive Gaussian noise, σ ∈ noise_range (in [0, 1] units);
    4. JPEG at a quality ∈ jpeg_range;
    5. resize to low_res_size with a random interpolation. Output clipped to [-1, 1].
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 9)
    image = tf.cast(image, tf.float32)
    h, w = image.shape[0], image.shape[1]
    sx = tf.random.stateless_uniform([], seeds[0], *sigma_range)
    sy = tf.random.stateless_uniform([], seeds[1], *sigma_range)
    iso = tf.random.stateless_uniform([], seeds[2]) < 0.5
    sy = tf.where(iso, sx, sy)
    theta = tf.random.stateless_uniform([], seeds[3], 0.0, math.pi)
    image = convolve(image, gaussian_kernel(kernel_size, sx, sy, theta))

    scale = tf.random.stateless_uniform([], seeds[4], *scale_range)
    mid = tf.cast(tf.round(scale * tf.constant([h, w], tf.float32)), tf.int32)
    mid = tf.maximum(mid, low_res_size)
    image = _random_resize(image, mid, seeds[5])

    x01 = (image + 1.0) / 2.0
    noise_sigma = tf.random.stateless_uniform([], seeds[6], *noise_range)
    x01 = x01 + noise_sigma * tf.random.stateless_normal(tf.shape(x01), seeds[7])
    x01 = tf.clip_by_value(x01, 0.0, 1.0)
    quality = tf.random.stateless_uniform([], seeds[8], jpeg_range[0], jpeg_range[1] + 1,
                                          dtype=tf.int32)
    x01 = tf.image.adjust_jpeg_quality(x01, quality)
    image = x01 * 2.0 - 1.0
    image = _random_resize(image, (low_res_size, low_res_size), seeds[0][::-1])
    image = tf.clip_by_value(image, -1.0, 1.0)
    return tf.ensure_shape(image, [low_res_size, low_res_size, image.shape[-1]])


def random_crop_pair(high: tf.Tensor, low: tf.Tensor, crop_size: int, seed):
    """Aligned random crops: `high` [S, S, C] → [c, c, C], `low` [S/r, S/r, C] → [c/r, c/r, C].

    The high-res offset is a multiple of r = S / low_size, so the low-res crop covers exactly
    the same region of the scene.
    """
    size, low_size = high.shape[0], low.shape[0]
    if size % low_size or crop_size % (size // low_size) or crop_size > size:
        raise ValueError(
            f"crop_size {crop_size} must be ≤ image size {size} and a multiple of the scale "
            f"factor {size / low_size}; set config.data.crop_size accordingly")
    r = size // low_size
    c_low = crop_size // r
    offsets = tf.random.stateless_uniform([2], seed, 0, low_size - c_low + 1, dtype=tf.int32)
    y, x = offsets[0], offsets[1]
    high_crop = high[y * r:y * r + crop_size, x * r:x * r + crop_size]
    low_crop = low[y:y + c_low, x:x + c_low]
    return (tf.ensure_shape(high_crop, [crop_size, crop_size, high.shape[-1]]),
            tf.ensure_shape(low_crop, [c_low, c_low, low.shape[-1]]))
