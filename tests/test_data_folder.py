"""image_caption_folder: broken/odd files are skipped and counted, modes converted to RGB."""
import csv
import io

import numpy as np
import pytest
from PIL import Image

from unclip_jax.data import folder
from unclip_jax.errors import UserError


def _save(img, path, fmt, caption):
    img.save(path, format=fmt)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)


@pytest.fixture()
def messy_dir(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    noise = lambda h, w: Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    _save(noise(40, 60), src / "good1.jpg", "JPEG", "a good landscape image")
    _save(noise(50, 50), src / "good2.png", "PNG", "a good square image")
    buf = io.BytesIO()
    noise(40, 40).save(buf, format="JPEG")
    (src / "corrupt.jpg").write_bytes(buf.getvalue()[:200] + b"\x00garbage" * 10)
    (src / "corrupt.txt").write_text("a corrupt jpeg")
    (src / "notes.png").write_text("this is not an image")
    (src / "notes.txt").write_text("a text file named png")
    _save(noise(1, 1), src / "tiny.png", "PNG", "a one pixel image")
    _save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), src / "cmyk.jpg", "JPEG", "a cmyk red")
    _save(Image.new("L", (40, 40), 200), src / "gray.png", "PNG", "a gray image")
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))   # fully transparent → white
    _save(rgba, src / "rgba.png", "PNG", "a transparent image")
    _save(noise(40, 40).convert("P"), src / "palette.png", "PNG", "a palette image")
    _save(noise(40, 40), src / "nocap.png", "PNG", None)
    return src


def test_folder_counts_and_conversions(messy_dir, tmp_path, capsys):
    counts = folder.build(str(messy_dir), str(tmp_path / "out"), image_size=32, min_size=16)
    assert counts == {"written": 6, "unreadable": 2, "too_small": 1, "no_caption": 1}
    assert "written=6" in capsys.readouterr().out
    builder = folder.ImageCaptionFolder(data_dir=str(tmp_path / "out"))
    ex = {e["caption"].decode(): e["image"]
          for e in builder.as_dataset(split="train").as_numpy_iterator()}
    assert set(ex) == {"a good landscape image", "a good square image", "a cmyk red",
                       "a gray image", "a transparent image", "a palette image"}
    assert all(v.shape == (32, 32, 3) and v.dtype == np.uint8 for v in ex.values())
    assert ex["a transparent image"].min() == 255                      # composited on white
    gray = ex["a gray image"].astype(int)
    assert np.all(np.abs(gray - 200) <= 1)                              # L → equal RGB
    r, g, b = ex["a cmyk red"].reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60                                # CMYK (0,255,255,0) = red
    # rebuilding reuses the data and reports the same counts
    assert folder.build(str(messy_dir), str(tmp_path / "out"), 32, 16, verbose=False) == counts


def test_resize_center_crop_keeps_centre():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255                                  # white central square of a 2:1 image
    out = np.asarray(folder.resize_center_crop(Image.fromarray(img), 20))
    assert out.shape == (20, 20, 3) and out[:, 2:-2].min() >= 250 and out.mean() > 245


def test_csv_source(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{i}.png")
        rows.append({"path": f"imgs/{i}.png", "caption": f"caption {i}"})
    rows.append({"path": "imgs/missing.png", "caption": "gone"})
    with open(tmp_path / "list.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "caption"])
        w.writeheader()
        w.writerows(rows)
    counts = folder.build(str(tmp_path / "list.csv"), str(tmp_path / "out"), 16, 8, verbose=False)
    assert counts["written"] == 3 and counts["unreadable"] == 1


def test_bad_sources_have_clear_messages(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        folder.build(str(tmp_path / "nope"), str(tmp_path / "out"))
    (tmp_path / "bad.csv").write_text("file,text\na.png,hi\n")
    with pytest.raises(UserError, match="columns 'path' and 'caption'"):
        folder.build(str(tmp_path / "bad.csv"), str(tmp_path / "out"))


def test_non_utf8_caption_is_skipped_and_counted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("good", "latin1"):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(src / f"{name}.png")
    (src / "good.txt").write_text("a good caption")
    (src / "latin1.txt").write_bytes("un caf\xe9 cr\xe8me".encode("latin-1"))
    counts = folder.build(str(src), str(tmp_path / "out"), 16, 8, verbose=False)
    assert counts == {"written": 1, "unreadable": 1, "too_small": 0, "no_caption": 0}


def test_nothing_readable_is_one_clear_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"not an image")
    (src / "a.txt").write_text("a caption")
    with pytest.raises(UserError, match=r"no usable image–caption pair in .*unreadable=1"):
        folder.build(str(src), str(tmp_path / "out"), 16, 8, verbose=False)
    assert not (tmp_path / "out").exists()


def test_changed_or_other_source_is_not_silently_reused(tmp_path):
    rng = np.random.default_rng(0)
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
            tmp_path / d / "x.png")
        (tmp_path / d / "x.txt").write_text(f"caption {d}")
    out = str(tmp_path / "out")
    folder.build(str(tmp_path / "one"), out, 16, 8, verbose=False)
    assert folder.build(str(tmp_path / "one"), out, 16, 8, verbose=False)["written"] == 1
    with pytest.raises(UserError, match="built from another source"):
        folder.build(str(tmp_path / "two"), out, 16, 8, verbose=False)
    (tmp_path / "one" / "x.txt").write_text("a changed caption")
    with pytest.raises(UserError, match="a source that has changed since"):
        folder.build(str(tmp_path / "one"), out, 16, 8, verbose=False)
