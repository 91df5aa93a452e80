"""The one image grid (`unclip_jax.sample.images.grid_array`): the sampling commands' PNG
grids (white 2 px gaps) and the training previews (`train.metrics.image_grid`, no gaps) are
the same tiling, checked against tiles placed by hand."""
import numpy as np

from unclip_jax.sample.images import grid_array, make_grid
from unclip_jax.train.metrics import image_grid


def _tiles(n, h=3, w=4, c=3):
    """n constant tiles with values 10, 20, 30, ... (uint8 [n, h, w, c])."""
    return np.stack([np.full((h, w, c), 10 * (i + 1), np.uint8) for i in range(n)])


def test_grid_places_tiles_row_major_with_gaps():
    t = _tiles(5)                                   # 3 columns, 2 rows
    g = grid_array(t, ncols=3, pad=2, fill=255)
    assert g.shape == (2 * (3 + 2) + 2, 3 * (4 + 2) + 2, 3)
    for i in range(5):
        r, c = divmod(i, 3)
        y, x = 2 + r * 5, 2 + c * 6
        assert (g[y:y + 3, x:x + 4] == 10 * (i + 1)).all()
    mask = np.ones(g.shape[:2], bool)
    for i in range(5):
        r, c = divmod(i, 3)
        mask[2 + r * 5:5 + r * 5, 2 + c * 6:6 + c * 6] = False
    assert (g[mask] == 255).all()                    # gaps and the empty sixth cell
    np.testing.assert_array_equal(np.asarray(make_grid(t, 3)), g)
    assert grid_array(t, ncols=9).shape[1] == 5 * 6 + 2   # at most N columns


def test_default_layout_leaves_no_empty_cell():
    """rows × columns = N for every N (5 frames: one row of 5), rows ≤ columns, and as
    square as N allows (no divisor between √N and the chosen column count)."""
    for n in range(1, 26):                          # tile values 10·(i+1) stay uint8
        g = grid_array(_tiles(n, h=1, w=1), pad=0)
        rows, cols = g.shape[:2]
        assert rows * cols == n and rows <= cols, (n, rows, cols)
        assert not any(n % c == 0 for c in range(int(np.ceil(np.sqrt(n))), cols)), n
        np.testing.assert_array_equal(g.reshape(-1, 3)[:, 0], 10 * np.arange(1, n + 1))
    assert grid_array(_tiles(5), pad=0).shape[:2] == (3, 5 * 4)     # 5 frames → 5 columns


def test_training_preview_is_the_same_grid_without_gaps():
    x = np.linspace(-1, 1, 6 * 3 * 4, dtype=np.float32).reshape(6, 3, 4, 1)
    g = image_grid(x, cols=2)
    assert g.shape == (3 * 3, 2 * 4, 1)
    u8 = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
    for i in range(6):
        r, c = divmod(i, 2)
        np.testing.assert_array_equal(g[r * 3:(r + 1) * 3, c * 4:(c + 1) * 4], u8[i])
