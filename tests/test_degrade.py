"""Degradations: blur removes high frequencies, BSR is seeded and size-preserving, crops align."""
import numpy as np
import tensorflow as tf

from unclip_jax.data import degrade


def _image(size=64, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(-1, 1, (size, size, 3)), tf.float32)


def _laplacian_var(x):
    x = np.asarray(x, np.float64)
    lap = (x[1:-1, :-2] + x[1:-1, 2:] + x[:-2, 1:-1] + x[2:, 1:-1] - 4 * x[1:-1, 1:-1])
    return lap.var()


def _high_freq_energy(x):
    f = np.abs(np.fft.fftshift(np.fft.fft2(np.asarray(x)[..., 0]))) ** 2
    n = f.shape[0]
    yy, xx = np.mgrid[:n, :n] - n // 2
    return f[np.hypot(yy, xx) > n / 4].sum() / f.sum()


def test_gaussian_kernel_matches_formula():
    k = degrade.gaussian_kernel(3, 0.6).numpy()
    g = np.exp(-np.arange(-1, 2) ** 2 / (2 * 0.6 ** 2))
    np.testing.assert_allclose(k, np.outer(g, g) / np.outer(g, g).sum(), rtol=1e-6)


def test_blur_lowers_high_frequency_energy():
    x = _image()
    y = degrade.gaussian_blur(x)
    assert y.shape == x.shape
    assert _laplacian_var(y) < 0.5 * _laplacian_var(x)
    assert _high_freq_energy(y) < 0.7 * _high_freq_energy(x)
    # a constant image is unchanged (kernel sums to one, reflect padding)
    c = tf.fill([16, 16, 3], 0.3)
    np.testing.assert_allclose(degrade.gaussian_blur(c), c, atol=1e-6)


def test_bsr_changes_image_keeps_size_and_is_seeded():
    x = _image(32)
    f = tf.function(lambda im, s: degrade.bsr_degrade(im, 32, s))
    y1, y2 = f(x, tf.constant([1, 2])), f(x, tf.constant([1, 2]))
    y3 = f(x, tf.constant([3, 4]))
    assert y1.shape == x.shape
    np.testing.assert_array_equal(y1, y2)                 # same seed, same corruption
    assert np.abs(y1 - y3).mean() > 1e-3                  # another seed, another corruption
    assert np.abs(y1 - x).mean() > 0.05                   # it does corrupt
    assert -1 <= float(tf.reduce_min(y1)) and float(tf.reduce_max(y1)) <= 1
    low = degrade.bsr_degrade(x, 8, tf.constant([5, 6]))
    assert low.shape == (8, 8, 3)
    # on a smooth image the degraded result still resembles the downsampled original
    smooth = degrade.resize(degrade.resize(_image(8, 3), 32, "bilinear"), 32)
    d = degrade.bsr_degrade(smooth, 16, tf.constant([7, 8]))
    ref = degrade.resize(smooth, 16)
    assert np.corrcoef(np.ravel(d), np.ravel(ref))[0, 1] > 0.8


def test_crop_pairs_are_aligned():
    x = _image(64, 1)
    low = degrade.resize(x, 16)                       # area: exact 4×4 means
    for s in range(5):
        hi, lo = degrade.random_crop_pair(x, low, 32, tf.constant([s, 9]))
        assert hi.shape == (32, 32, 3) and lo.shape == (8, 8, 3)
        np.testing.assert_allclose(degrade.resize(hi, 8), lo, atol=1e-5)
    offsets = {tuple(np.asarray(degrade.random_crop_pair(x, low, 32, tf.constant([s, 9]))[1])[0, 0])
               for s in range(8)}
    assert len(offsets) > 1                           # crops move with the seed
