"""Every real camera file in ../shared/data/exif round-trips: same format, upright, same size, the
metadata a photographer cares about unchanged, Orientation 1, no thumbnail, JPEG tables identical."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from ghostmesh_daemon.imaging import PhotoError, output_path, read_photo, write_photo
from ghostmesh_daemon.imaging import jpeg as jpegc
from ghostmesh_daemon.imaging.tiffmeta import find_embedded_jpegs

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "exif"
FILES = sorted(p for p in SAMPLES.rglob("*") if p.is_file()) if SAMPLES.is_dir() else []

pytestmark = pytest.mark.skipif(not FILES, reason=f"shared camera samples not found at {SAMPLES}")

IFD0_TAGS = {0x010F: "Make", 0x0110: "Model", 0x0132: "DateTime", 0x013B: "Artist", 0x0131: "Software"}
EXIF_TAGS = {
    0x9003: "DateTimeOriginal", 0x9004: "DateTimeDigitized", 0x829A: "ExposureTime", 0x829D: "FNumber",
    0x8827: "ISO", 0x920A: "FocalLength", 0x9201: "ShutterSpeedValue", 0x9202: "ApertureValue",
    0xA434: "LensModel", 0x9209: "Flash", 0x8822: "ExposureProgram", 0x9204: "ExposureBias",
}


def _quiet_exif(im: Image.Image) -> Image.Exif:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return im.getexif()


def _get_ifd(ex: Image.Exif, tag: int) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return dict(ex.get_ifd(tag))
        except Exception:  # noqa: BLE001 - Pillow cannot read this camera's sub-IFD: compare nothing
            return {}


def _xmp(im: Image.Image) -> bytes | None:
    x = im.info.get("xmp")
    if x is None and im.format == "TIFF":
        x = im.tag_v2.get(700)
    return bytes(x) if x else None


def _meta(path: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            ex = _quiet_exif(im)
            meta = {
                "format": "JPEG" if im.format == "MPO" else im.format,
                "ifd0": {n: ex.get(t) for t, n in IFD0_TAGS.items() if t in ex},
                "exif": {n: _get_ifd(ex, 0x8769).get(t) for t, n in EXIF_TAGS.items() if t in _get_ifd(ex, 0x8769)},
                "gps": _get_ifd(ex, 0x8825),
                "icc": im.info.get("icc_profile") or None,
                "xmp": _xmp(im),
                "orientation": ex.get(0x0112, 1),
                "makernote": _get_ifd(ex, 0x8769).get(0x927C),
            }
            if im.format in ("JPEG", "MPO"):
                # The table each component is quantized with (what decides quality and size).
                meta["qtables"] = [list(im.quantization[c[3]]) for c in im.layer]
                meta["layer"] = [c[:3] for c in im.layer]
            return meta


def _upright_small(path: Path, size: tuple[int, int]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # Pillow's own orientation handling, independent of ours
            return np.asarray(im.convert("RGB").resize(size, Image.Resampling.BOX)).astype(np.float32) / 255


def _exif_block(path: Path, fmt: str) -> bytes | None:
    data = path.read_bytes()
    if fmt == "JPEG":
        return jpegc.find_exif(jpegc.parse(data))
    with Image.open(path) as im:
        ex = im.info.get("exif")
    return ex[6:] if ex and ex.startswith(b"Exif\x00\x00") else ex


def _ifd0_next(block: bytes) -> int:
    e = "<" if block[:2] == b"II" else ">"
    (off,) = struct.unpack(f"{e}I", block[4:8])
    (n,) = struct.unpack(f"{e}H", block[off : off + 2])
    return struct.unpack(f"{e}I", block[off + 2 + 12 * n : off + 6 + 12 * n])[0]


@pytest.mark.parametrize("src", FILES, ids=[str(p.relative_to(SAMPLES)) for p in FILES])
def test_sample_round_trip(src: Path, tmp_path: Path):
    photo = read_photo(src)
    before = _meta(src)
    rng = np.random.default_rng(0)
    perturbed = np.clip(photo.rgb + rng.uniform(-2 / 255, 2 / 255, photo.rgb.shape).astype(np.float32), 0, 1)
    dest = output_path(src, out_dir=tmp_path)
    assert dest.name == f"{src.stem}.ghost{src.suffix}"
    notes = write_photo(photo, perturbed, dest)
    after = _meta(dest)

    # Same format, upright, same size.
    assert after["format"] == before["format"]
    expected = _upright_small(src, (64, 64))
    with Image.open(dest) as out:
        assert out.size == photo.size
        with Image.open(src) as orig:
            w, h = ImageOps.exif_transpose(orig).size if before["format"] != "HEIF" else orig.size
        assert out.size == (w, h)
    got = _upright_small(dest, (64, 64))
    assert np.abs(got - expected).mean() < 0.03, "output is not the same upright picture"

    # Metadata.
    assert after["orientation"] == 1
    assert after["ifd0"] == before["ifd0"]
    assert after["exif"] == before["exif"]
    assert after["gps"] == before["gps"]
    assert after["icc"] == before["icc"]
    assert after["xmp"] == before["xmp"]
    if before["makernote"] is not None and not any("MakerNote" in n for n in notes):
        assert after["makernote"] == before["makernote"], "MakerNote changed"

    # No thumbnail, no preview.
    block = _exif_block(dest, after["format"]) if after["format"] != "TIFF" else None
    if block:
        assert _ifd0_next(block) == 0, "IFD1 (thumbnail) still linked"
        assert not find_embedded_jpegs(block), "a JPEG preview is still inside the EXIF block"
    if after["format"] == "JPEG":
        layout = jpegc.parse(dest.read_bytes())
        for seg in layout.head:
            assert not find_embedded_jpegs(seg.payload), f"segment {seg.marker:#x} carries a JPEG preview"
            assert not seg.payload.startswith(b"MPF\x00"), "MPF index still present"
        assert layout.trailing == 0
        assert after["qtables"] == before["qtables"]
        if not any("chroma sampling" in n for n in notes):
            assert after["layer"] == before["layer"]
    if after["format"] == "HEIF":
        import pillow_heif

        heif = pillow_heif.open_heif(dest)
        assert not heif.info.get("thumbnails")

    # Malformed EXIF: carried through, and the report says so.
    if src.name == "30-type_error.jpg":
        assert any("piexif" in n and "carried through" in n for n in notes)


def test_sample_originals_are_untouched_and_bad_copies_refused(tmp_path: Path):
    """Truncated and emptied copies of the real files give one-line errors naming the file."""
    for src in FILES:
        data = src.read_bytes()
        for name, content in [("trunc", data[: max(64, len(data) // 3)]), ("empty", b""), ("head", data[:40])]:
            bad = tmp_path / f"{src.stem}.{name}{src.suffix}"
            bad.write_bytes(content)
            try:
                photo = read_photo(bad)
            except PhotoError as e:
                msg = str(e)
                assert msg.startswith(str(bad)) and "\n" not in msg
                continue
            # A decoder may legitimately recover a truncated file (grey bottom rows); it must
            # still be writable as a complete file.
            write_photo(photo, photo.rgb, output_path(bad))
            assert output_path(bad).stat().st_size > 0
