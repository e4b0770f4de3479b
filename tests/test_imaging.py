"""Photo I/O: round trips of generated images (no shared data needed)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ghostmesh_daemon.imaging import PhotoError, is_output, output_path, read_photo, write_photo


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x / w, y / h, (x + y) / (w + h)], axis=-1).astype(np.float32)


def test_jpeg_round_trip_keeps_size_and_tables(tmp_path):
    src = tmp_path / "a.jpg"
    Image.fromarray((_gradient() * 255).astype(np.uint8)).save(src, quality=80, subsampling=2)
    photo = read_photo(src)
    assert photo.format == "JPEG" and photo.rgb.shape == (48, 64, 3) and photo.rgb.dtype == np.float32
    dest = output_path(src)
    assert dest.name == "a.ghost.jpg" and is_output(dest)
    write_photo(photo, photo.rgb + 0.01, dest)
    with Image.open(src) as a, Image.open(dest) as b:
        assert a.quantization == b.quantization and b.size == a.size


def test_png_alpha_round_trip(tmp_path):
    src = tmp_path / "a.png"
    rgba = np.concatenate([(_gradient() * 255).astype(np.uint8), np.full((48, 64, 1), 77, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(src)
    photo = read_photo(src)
    assert photo.alpha is not None
    dest = output_path(src)
    write_photo(photo, photo.rgb, dest)
    out = np.asarray(Image.open(dest))
    assert (out == rgba).all()


def test_empty_file_is_refused_by_name(tmp_path):
    src = tmp_path / "empty.jpg"
    src.write_bytes(b"")
    with pytest.raises(PhotoError, match="empty.jpg"):
        read_photo(src)
