"""Photo I/O on images generated here: every format and layout, orientation, safety, bad input."""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from ghostmesh_daemon.imaging import (
    SUPPORTED_SUFFIXES,
    Photo,
    PhotoError,
    atomic_output,
    atomic_write_bytes,
    is_output,
    output_path,
    read_photo,
    write_photo,
)
from ghostmesh_daemon.imaging import photo as photo_mod
from ghostmesh_daemon.imaging.tiffmeta import (
    LONG,
    SHORT,
    Entry,
    exif_block,
    find_embedded_jpegs,
    make_entry,
)


def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x / (w - 1), y / (h - 1), (x + y) / (w + h - 2)], axis=-1).astype(np.float32)


def u8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def u16(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0, 1) * 65535 + 0.5).astype(np.uint16)


def perturb(rgb: np.ndarray, amount: float = 2 / 255, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rgb + rng.uniform(-amount, amount, rgb.shape).astype(np.float32), 0, 1)


def small_jpeg_thumbnail() -> bytes:
    b = io.BytesIO()
    Image.fromarray(u8(gradient(24, 32))).save(b, "JPEG", quality=70)
    return b.getvalue()


def camera_exif(orientation: int = 1, *, gps: bool = True, thumbnail: bool = True, endian: str = "<") -> bytes:
    """An EXIF block like a camera's: IFD0, EXIF IFD, GPS IFD, and a JPEG thumbnail in IFD1."""
    e = endian
    rational = lambda n, d: Entry(0, 5, 1, struct.pack(f"{e}II", n, d))  # noqa: E731

    def rat(tag: int, n: int, d: int) -> Entry:
        r = rational(n, d)
        r.tag = tag
        return r

    exif_ifd = [
        make_entry(e, 0x9003, 2, "2021:04:11 15:47:53"),
        make_entry(e, 0x9004, 2, "2021:04:11 15:47:53"),
        rat(0x829A, 1, 250),
        rat(0x829D, 28, 10),
        make_entry(e, 0x8827, SHORT, [200]),
        make_entry(e, 0x927C, 7, b"MAKERNOTE-bytes-" * 4),
    ]
    ifd0 = [
        make_entry(e, 0x010F, 2, "GhostCam"),
        make_entry(e, 0x0110, 2, "Model 1"),
        make_entry(e, 0x0112, SHORT, [orientation]),
        make_entry(e, 0x0132, 2, "2021:04:11 15:47:53"),
        Entry(0x8769, LONG, 1, b"", exif_ifd),
    ]
    if gps:
        ifd0.append(Entry(0x8825, LONG, 1, b"", [
            make_entry(e, 0x0000, 1, [2, 3, 0, 0]),
            make_entry(e, 0x0001, 2, "N"),
            Entry(0x0002, 5, 3, struct.pack(f"{e}6I", 43, 1, 28, 1, 0, 1)),
        ]))
    block = bytearray(exif_block(e, ifd0))
    if thumbnail:
        thumb = small_jpeg_thumbnail()
        # Append IFD1 (JPEGInterchangeFormat/Length) and the thumbnail; link it from IFD0.
        ifd1_off = len(block) + (len(block) % 2)
        block += b"\x00" * (ifd1_off - len(block))
        thumb_off = ifd1_off + 2 + 2 * 12 + 4
        block += struct.pack(f"{e}H", 2)
        block += struct.pack(f"{e}HHII", 0x0201, LONG, 1, thumb_off)
        block += struct.pack(f"{e}HHII", 0x0202, LONG, 1, len(thumb))
        block += struct.pack(f"{e}I", 0) + thumb
        ifd0_off = struct.unpack(f"{e}I", block[4:8])[0]
        (n,) = struct.unpack(f"{e}H", block[ifd0_off : ifd0_off + 2])
        block[ifd0_off + 2 + 12 * n : ifd0_off + 6 + 12 * n] = struct.pack(f"{e}I", ifd1_off)
    return bytes(block)


def exif_of(path: Path) -> Image.Exif:
    with Image.open(path) as im:
        return im.getexif()


# ----------------------------------------------------------------------------------------------
# Naming


def test_output_path_and_is_output(tmp_path):
    assert output_path(tmp_path / "IMG_1.JPG") == tmp_path / "IMG_1.ghost.JPG"
    assert output_path(tmp_path / "a.HEIC").name == "a.ghost.HEIC"
    assert output_path(tmp_path / "a.png", out_dir=Path("protected")) == tmp_path / "protected" / "a.ghost.png"
    assert output_path(tmp_path / "a.png", out_dir=tmp_path / "x", suffix=".safe") == tmp_path / "x" / "a.safe.png"
    assert output_path(tmp_path / "a.NEF").name == "a.ghost.jpg"
    assert output_path(tmp_path / "a.dng", raw_output="tiff16").name == "a.ghost.tif"
    assert is_output(tmp_path / "a.ghost.jpg") and is_output(tmp_path / ".a.ghost.jpg.ghosttmp-1a2b3c4d")
    assert not is_output(tmp_path / "a.jpg") and not is_output(tmp_path / "ghost.jpg")
    assert is_output(tmp_path / "a.safe.png", suffix=".safe")
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif", ".dng", ".nef"} <= SUPPORTED_SUFFIXES


# ----------------------------------------------------------------------------------------------
# JPEG


@pytest.mark.parametrize("subsampling,progressive", [(0, False), (1, True), (2, False)])
def test_jpeg_keeps_tables_sampling_progression_and_size(tmp_path, subsampling, progressive):
    src = tmp_path / "a.jpg"
    rng = np.random.default_rng(1)
    img = u8(np.clip(gradient(240, 320) + rng.normal(0, 0.03, (240, 320, 3)), 0, 1))
    Image.fromarray(img).save(src, quality=87, subsampling=subsampling, progressive=progressive)
    photo = read_photo(src)
    assert photo.format == "JPEG" and photo.rgb.shape == (240, 320, 3) and photo.rgb.dtype == np.float32
    assert photo.jpeg_progressive == progressive
    dest = output_path(src)
    write_photo(photo, perturb(photo.rgb, 1 / 255), dest)
    with Image.open(src) as a, Image.open(dest) as b:
        assert a.quantization == b.quantization
        assert b.layer == a.layer
        assert bool(b.info.get("progressive")) == progressive
        assert b.size == a.size
    ratio = dest.stat().st_size / src.stat().st_size
    assert 0.85 < ratio < 1.10, ratio


@pytest.mark.parametrize("subsampling", [0, 1, 2])
def test_jpeg_encoding_is_what_the_writer_uses(tmp_path, subsampling):
    """What the optimizer is told about the JPEG it will be written as: the writer's own tables and
    chroma layout; nothing for formats it does not model (PNG) or grey JPEGs."""
    src = tmp_path / "a.jpg"
    Image.fromarray(u8(gradient(64, 80))).save(src, quality=83, subsampling=subsampling)
    tables, _, sub = read_photo(src).jpeg_encoding()
    with Image.open(src) as im:
        assert tables == [list(v) for _, v in sorted(im.quantization.items())]
    assert sub == subsampling
    png = tmp_path / "a.png"
    Image.fromarray(u8(gradient(64, 80))).save(png)
    assert read_photo(png).jpeg_encoding() is None
    grey = tmp_path / "g.jpg"
    Image.fromarray(u8(gradient(64, 80))[..., 0]).save(grey, quality=83)
    assert read_photo(grey).jpeg_encoding() is None


def test_jpeg_metadata_thumbnail_and_gps(tmp_path):
    src = tmp_path / "cam.jpg"
    icc = photo_mod._srgb_icc()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    Image.fromarray(u8(gradient())).save(src, quality=90, exif=b"Exif\x00\x00" + camera_exif(), icc_profile=icc,
                                         xmp=xmp, comment=b"hello")
    photo = read_photo(src)
    dest = output_path(src)
    notes = write_photo(photo, photo.rgb, dest)
    assert "EXIF thumbnail removed" in notes
    a, b = exif_of(src), exif_of(dest)
    assert b[0x010F] == "GhostCam" and b[0x0110] == "Model 1" and b[0x0132] == a[0x0132]
    assert b.get_ifd(0x8769) == a.get_ifd(0x8769)  # dates, exposure, MakerNote byte for byte
    assert b.get_ifd(0x8825) == a.get_ifd(0x8825) and b.get_ifd(0x8825)[2] == (43.0, 28.0, 0.0)
    with Image.open(dest) as im:
        assert im.info["icc_profile"] == icc and im.info["xmp"] == xmp and im.info["comment"] == b"hello"
        raw = im.info["exif"][6:]
    import piexif

    d = piexif.load(raw)
    assert d["thumbnail"] is None and not d["1st"]
    assert not find_embedded_jpegs(raw)
    # strip_gps
    dest2 = tmp_path / "cam.nogps.jpg"
    notes = write_photo(photo, photo.rgb, dest2, strip_gps=True)
    assert any("GPS" in n for n in notes)
    c = exif_of(dest2)
    assert 0x8825 not in c and not c.get_ifd(0x8825) and c[0x0110] == "Model 1"
    assert c.get_ifd(0x8769) == a.get_ifd(0x8769)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_is_applied_and_reset(tmp_path, orientation):
    src = tmp_path / f"o{orientation}.jpg"
    rng = np.random.default_rng(orientation)
    stored = u8(rng.uniform(0, 1, (6, 10, 3)).repeat(8, 0).repeat(8, 1))  # 48x80, blocky: JPEG-stable
    Image.fromarray(stored).save(src, quality=98, subsampling=0, exif=b"Exif\x00\x00" + camera_exif(orientation))
    with Image.open(src) as im:
        expected = np.asarray(ImageOps.exif_transpose(im)).astype(np.float32) / 255
    photo = read_photo(src)
    assert photo.orientation == orientation
    assert photo.rgb.shape == expected.shape
    assert np.abs(photo.rgb - expected).mean() < 1e-6
    dest = output_path(src)
    write_photo(photo, photo.rgb, dest)
    assert exif_of(dest)[0x0112] == 1
    with Image.open(dest) as im:
        assert im.size == (expected.shape[1], expected.shape[0])
        assert np.abs(np.asarray(im).astype(np.float32) / 255 - expected).mean() < 0.02


def test_jpeg_grayscale_stays_grayscale(tmp_path):
    src = tmp_path / "g.jpg"
    Image.fromarray(u8(gradient())[..., 0], "L").save(src, quality=85)
    photo = read_photo(src)
    assert photo.grayscale and photo.rgb.shape == (48, 64, 3)
    dest = output_path(src)
    write_photo(photo, perturb(photo.rgb), dest)
    with Image.open(src) as a, Image.open(dest) as b:
        assert b.mode == "L" and a.quantization == b.quantization


def test_mpo_preview_and_trailing_data_removed(tmp_path):
    src = tmp_path / "m.jpg"
    first = Image.fromarray(u8(gradient(96, 128)))
    second = Image.fromarray(u8(gradient(96, 128)[::-1]))
    first.save(src, format="MPO", save_all=True, append_images=[second], quality=90)
    with Image.open(src) as im:
        assert im.format == "MPO" and im.n_frames == 2
    photo = read_photo(src)
    notes = write_photo(photo, photo.rgb, output_path(src))
    assert any("MPF" in n for n in notes)
    with Image.open(output_path(src)) as out:
        assert out.format == "JPEG" and getattr(out, "n_frames", 1) == 1
    data = output_path(src).read_bytes()
    assert b"MPF\x00" not in data and data.count(b"\xff\xd8") == 1
    # Data appended after EOI (a hidden preview or a motion-photo video) is not carried.
    src2 = tmp_path / "t.jpg"
    src2.write_bytes((tmp_path / "m.ghost.jpg").read_bytes() + small_jpeg_thumbnail() * 3)
    notes = write_photo(read_photo(src2), photo.rgb, output_path(src2))
    assert any("appended" in n for n in notes)
    assert output_path(src2).read_bytes().count(b"\xff\xd8\xff") == 1


def test_cmyk_jpeg_is_converted_with_a_note(tmp_path):
    src = tmp_path / "c.jpg"
    Image.fromarray(u8(gradient())).convert("CMYK").save(src, quality=90)
    photo = read_photo(src)
    assert any("CMYK" in n for n in photo.notes)
    write_photo(photo, photo.rgb, output_path(src))
    with Image.open(output_path(src)) as out:
        assert out.mode == "RGB" and out.format == "JPEG"


def test_unparseable_exif_is_carried_through_with_a_note(tmp_path):
    src = tmp_path / "bad.jpg"
    junk = b"II*\x00\x08\x00\x00\x00\xff\xff" + b"\x13" * 40  # IFD0 claims 65535 entries
    Image.fromarray(u8(gradient())).save(src, exif=b"Exif\x00\x00" + junk)
    photo = read_photo(src)
    notes = write_photo(photo, photo.rgb, output_path(src))
    assert any("raw block carried through" in n for n in notes)
    from ghostmesh_daemon.imaging import jpeg as jpegc

    assert jpegc.find_exif(jpegc.parse(output_path(src).read_bytes())) == junk


# ----------------------------------------------------------------------------------------------
# PNG, WebP, TIFF, HEIF


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_png_8bit_round_trip_is_exact_and_keeps_alpha(tmp_path, mode):
    src = tmp_path / f"a_{mode}.png"
    rgb = u8(gradient())
    alpha = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)
    arr = {"RGB": rgb, "RGBA": np.dstack([rgb, alpha]), "L": rgb[..., 1], "LA": np.dstack([rgb[..., 1], alpha])}[mode]
    Image.fromarray(arr, mode).save(src, pnginfo=_png_text())
    photo = read_photo(src)
    assert photo.bit_depth == 8 and photo.grayscale == mode.startswith("L")
    assert (photo.alpha is not None) == mode.endswith("A")
    dest = output_path(src)
    write_photo(photo, photo.rgb, dest)
    with Image.open(dest) as out:
        assert out.mode == mode and out.text.get("Author") == "Ghost"
        assert (np.asarray(out) == arr).all()
    # A perturbation changes the colour and never the alpha.
    write_photo(photo, perturb(photo.rgb, 0.05), tmp_path / "p.ghost.png")
    with Image.open(tmp_path / "p.ghost.png") as out:
        o = np.asarray(out)
        if mode.endswith("A"):
            assert (o[..., -1] == alpha).all()
        assert (o[..., 0] != arr[..., 0] if arr.ndim == 3 else o != arr).any()


def _png_text():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Author", "Ghost")
    return info


def _png16(arr: np.ndarray) -> bytes:
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ct = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    icc = b"ICC\x00\x00" + zlib.compress(photo_mod._srgb_icc())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ct, 0, 0, 0))
            + chunk(b"iCCP", icc) + chunk(b"eXIf", camera_exif(6, thumbnail=False))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_16bit_stays_16bit(tmp_path, channels):
    rng = np.random.default_rng(channels)
    arr = rng.integers(0, 65536, (20, 30, channels), dtype=np.uint16)
    arr = arr[..., 0] if channels == 1 else arr
    src = tmp_path / "s16.png"
    src.write_bytes(_png16(arr))
    photo = read_photo(src)
    assert photo.bit_depth == 16 and photo.orientation == 6 and photo.rgb.shape == (30, 20, 3)
    stored = arr if arr.ndim == 3 else arr[..., None]
    upright = np.rot90(stored, -1)
    assert np.array_equal(u16(photo.rgb[..., :1]) if channels <= 2 else u16(photo.rgb), upright[..., : 1 if channels <= 2 else 3])
    if channels in (2, 4):
        assert np.array_equal(photo.alpha, upright[..., -1])
    dest = output_path(src)
    write_photo(photo, photo.rgb, dest)
    with Image.open(dest) as out:
        assert out.size == (20, 30) and out.info["icc_profile"] == photo_mod._srgb_icc()
        assert out.getexif()[0x0112] == 1
    again = read_photo(dest)
    assert again.bit_depth == 16 and np.array_equal(u16(again.rgb), u16(photo.rgb))
    if channels in (2, 4):
        assert np.array_equal(again.alpha, photo.alpha)
    # Precision: a perturbation smaller than one 8-bit step survives.
    tiny = np.clip(photo.rgb + 1 / 1024, 0, 1)
    write_photo(photo, tiny, tmp_path / "t.ghost.png")
    assert np.abs(read_photo(tmp_path / "t.ghost.png").rgb - tiny).max() < 1 / 65535


def test_palette_png_is_converted_with_a_note(tmp_path):
    src = tmp_path / "p.png"
    Image.fromarray(u8(gradient())).quantize(16).save(src)
    photo = read_photo(src)
    assert any("palette" in n for n in photo.notes)
    write_photo(photo, photo.rgb, output_path(src))
    with Image.open(output_path(src)) as out:
        assert out.mode == "RGB"


@pytest.mark.parametrize("lossless,with_alpha", [(False, False), (True, False), (True, True), (False, True)])
def test_webp_round_trip(tmp_path, lossless, with_alpha):
    src = tmp_path / "w.webp"
    rng = np.random.default_rng(3)
    rgb = u8(np.clip(gradient(120, 160) + rng.normal(0, 0.02, (120, 160, 3)), 0, 1))
    alpha = np.tile(np.linspace(0, 255, 160).astype(np.uint8), (120, 1))
    im = Image.fromarray(np.dstack([rgb, alpha]), "RGBA") if with_alpha else Image.fromarray(rgb)
    xmp = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"
    im.save(src, lossless=lossless, quality=80, exif=camera_exif(3, thumbnail=True), xmp=xmp,
            icc_profile=photo_mod._srgb_icc())
    photo = read_photo(src)
    assert photo.format == "WEBP" and photo.orientation == 3 and photo.rgb.shape == (120, 160, 3)
    dest = output_path(src)
    write_photo(photo, perturb(photo.rgb), dest)
    with Image.open(dest) as out:
        assert out.format == "WEBP" and out.size == (160, 120)
        assert out.info["xmp"] == xmp and out.info["icc_profile"] == photo_mod._srgb_icc()
        ex = out.getexif()
        assert ex[0x0112] == 1 and ex[0x010F] == "GhostCam" and ex.get_ifd(0x8825)
        if with_alpha:
            assert np.array_equal(np.asarray(out)[..., 3], photo.alpha)
    ratio = dest.stat().st_size / src.stat().st_size
    if not lossless:
        assert 0.7 < ratio < 1.15, ratio


def _tiff(path: Path, arr: np.ndarray, *, extrasamples=None, extra_tags=()) -> None:
    """A TIFF with Make/Model/DateTime/Orientation 8/ICC: written by tifffile (a writer independent
    of ours) when it is installed, else by our own writer."""
    try:
        import tifffile
    except ImportError:
        from ghostmesh_daemon.imaging.tiffio import write_tiff

        e = "<"
        icc = photo_mod._srgb_icc()
        tags = [make_entry(e, 271, 2, "GhostCam"), make_entry(e, 272, 2, "Model 1"),
                make_entry(e, 306, 2, "2021:04:11 15:47:53"), Entry(34675, 7, len(icc), icc)]
        data = bytearray(write_tiff(arr, endian=e, extrasamples=extrasamples, tags=tags, compress=True))
        # Orientation 8 (our writer always writes 1): patch the value in place.
        ifd = struct.unpack("<I", data[4:8])[0]
        for i in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
            pos = ifd + 2 + 12 * i
            if struct.unpack("<H", data[pos : pos + 2])[0] == 274:
                data[pos + 8 : pos + 10] = struct.pack("<H", 8)
        path.write_bytes(bytes(data))
        return
    kw = {"photometric": "rgb" if arr.ndim == 3 and arr.shape[2] >= 3 else "minisblack"}
    if extrasamples is not None:
        kw["extrasamples"] = [extrasamples]
    tifffile.imwrite(path, arr, compression="zlib", predictor=True, software=None,
                     extratags=[(271, "s", 0, "GhostCam", True), (272, "s", 0, "Model 1", True),
                                (306, "s", 0, "2021:04:11 15:47:53", True), (274, "H", 1, 8, True),
                                (34675, "B", len(photo_mod._srgb_icc()), photo_mod._srgb_icc(), True),
                                *extra_tags], **kw)


@pytest.mark.parametrize("kind", ["rgb8", "rgb16", "rgba16", "rgba8_assoc", "grey16"])
def test_tiff_round_trip(tmp_path, kind):
    rng = np.random.default_rng(5)
    dtype = np.uint16 if "16" in kind else np.uint8
    top = 65535 if dtype == np.uint16 else 255
    c = {"rgb8": 3, "rgb16": 3, "rgba16": 4, "rgba8_assoc": 4, "grey16": 1}[kind]
    arr = rng.integers(0, top + 1, (24, 36, c), dtype=np.int64).astype(dtype)
    if kind == "rgba8_assoc":  # premultiplied: colour <= alpha
        arr[..., :3] = (arr[..., :3].astype(np.int64) * arr[..., 3:] // 255).astype(dtype)
    arr = arr[..., 0] if c == 1 else arr
    src = tmp_path / "t.tif"
    _tiff(src, arr, extrasamples={"rgba16": 2, "rgba8_assoc": 1}.get(kind))
    photo = read_photo(src)
    assert photo.bit_depth == (16 if dtype == np.uint16 else 8) and photo.orientation == 8
    assert photo.rgb.shape == (36, 24, 3) and photo.grayscale == (c == 1)
    dest = output_path(src)
    notes = write_photo(photo, photo.rgb, dest)
    assert not any("thumbnail" in n for n in notes)
    with Image.open(dest) as im:  # tags, as Pillow reads them
        tags = im.tag_v2
        assert tags[274] == 1 and tags[271] == "GhostCam" and tags[272] == "Model 1"
        assert tags[258][0] == photo.bit_depth and bytes(tags[34675]) == photo_mod._srgb_icc()
        assert getattr(im, "n_frames", 1) == 1
    try:
        import tifffile

        out = tifffile.imread(dest)
    except ImportError:  # our reader, back to stored integers
        again = read_photo(dest)
        assert again.bit_depth == photo.bit_depth
        top = 65535 if again.bit_depth == 16 else 255
        out = (again.rgb[..., :1] if again.grayscale else again.rgb)
        if again.premultiplied:
            out = out * (again.alpha[..., None] / top)
        out = (out * top + 0.5).astype(dtype)
        out = out[..., 0] if again.grayscale else out
        if again.alpha is not None:
            out = np.dstack([out, again.alpha])
    upright = np.rot90(arr, 1)
    if kind == "rgba8_assoc":  # un-premultiplied and re-premultiplied: equal up to rounding
        assert np.array_equal(out[..., 3], upright[..., 3])
        assert np.abs(out.astype(int) - upright.astype(int)).max() <= 1
    else:
        assert np.array_equal(out, upright)


def test_heif_round_trip(tmp_path):
    pytest.importorskip("pillow_heif")
    src = tmp_path / "h.heic"
    rng = np.random.default_rng(7)
    img = u8(np.clip(gradient(128, 192) + rng.normal(0, 0.02, (128, 192, 3)), 0, 1))
    xmp = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"
    Image.fromarray(img).save(src, format="HEIF", quality=70, exif=b"Exif\x00\x00" + camera_exif(1), xmp=xmp)
    photo = read_photo(src)
    assert photo.format == "HEIF"
    dest = output_path(src)
    assert dest.name == "h.ghost.heic"
    write_photo(photo, perturb(photo.rgb), dest)
    with Image.open(dest) as out:
        assert out.format == "HEIF" and out.size == (192, 128) and out.info["xmp"] == xmp
        ex = out.getexif()
        assert ex[0x0110] == "Model 1" and ex.get_ifd(0x8825) and ex.get(0x0112, 1) == 1
        assert not out.info.get("thumbnails")


# ----------------------------------------------------------------------------------------------
# Refusals and bad input


def test_animated_files_are_refused_by_name(tmp_path):
    frames = [Image.fromarray(u8(gradient() * k)) for k in (0.5, 1.0)]
    for name, kw in [("a.png", {}), ("a.webp", {"lossless": True})]:
        src = tmp_path / name
        frames[0].save(src, save_all=True, append_images=frames[1:], **kw)
        with pytest.raises(PhotoError, match=r"a\.(png|webp).*animated"):
            read_photo(src)
    gif = tmp_path / "a.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    with pytest.raises(PhotoError, match="a.gif"):
        read_photo(gif)
    tif = tmp_path / "pages.tif"
    frames[0].save(tif, save_all=True, append_images=frames[1:])
    with pytest.raises(PhotoError, match="multi-page TIFF"):
        read_photo(tif)


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(50_000, 50_000))  # 2.5 gigapixels in 1 KB
    assert bomb.stat().st_size < 2000
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self, *a: loaded.append(1))
    with pytest.raises(PhotoError, match=r"bomb\.png: 50000x50000 is 2500 megapixels, over the 200 MP limit"):
        read_photo(bomb)
    assert not loaded
    monkeypatch.undo()
    # A JPEG whose frame header claims 60000x60000.
    jb = tmp_path / "bomb.jpg"
    b = io.BytesIO()
    Image.fromarray(u8(gradient(16, 16))).save(b, "JPEG")
    data = bytearray(b.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    jb.write_bytes(bytes(data))
    with pytest.raises(PhotoError, match="over the 200 MP limit"):
        read_photo(jb)
    # The limit is configurable.
    small = tmp_path / "small.png"
    Image.fromarray(u8(gradient())).save(small)
    with pytest.raises(PhotoError, match="over the 0.001 MP limit"):
        read_photo(small, max_megapixels=0.001)
    assert read_photo(small, max_megapixels=0.01).size == (64, 48)


def test_bad_files_give_one_line_errors(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(u8(gradient(200, 300))).save(good, quality=90)
    cases = {
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"hello, this is not a photo\n" * 10, "not an image"),
        "trunc.jpg": (good.read_bytes()[: len(good.read_bytes()) // 2], "truncated or corrupt"),
        "head.png": (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated or corrupt PNG"),
        "trunc.png": (_png_header_only(300, 200)[:-20], "truncated or corrupt"),
        "garbage.heic": (b"\x00\x00\x00\x18ftypheic" + os.urandom(200), "HEIF"),
    }
    for name, (content, why) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(PhotoError) as info:
            read_photo(p)
        msg = str(info.value)
        assert msg.startswith(str(p)) and "\n" not in msg, msg
        assert why in msg, msg
    with pytest.raises(PhotoError, match="cannot read"):
        read_photo(tmp_path / "missing.jpg")
    with pytest.raises(PhotoError, match="folder"):
        read_photo(tmp_path)


def test_never_overwrites_a_file_that_is_not_ours(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(u8(gradient())).save(src)
    photo = read_photo(src)
    theirs = tmp_path / "a.ghost.png"
    theirs.write_bytes(b"someone else's file")
    with pytest.raises(PhotoError, match="already"):
        write_photo(photo, photo.rgb, theirs)
    assert theirs.read_bytes() == b"someone else's file"
    not_ours = tmp_path / "holiday.png"
    not_ours.write_bytes(b"precious")
    with pytest.raises(PhotoError, match="not a Ghost Mesh output"):
        write_photo(photo, photo.rgb, not_ours, overwrite_ours=True)
    assert not_ours.read_bytes() == b"precious"
    with pytest.raises(PhotoError, match="original"):
        write_photo(photo, photo.rgb, src, overwrite_ours=True)
    # A previous output is replaced only when the caller says so.
    theirs.unlink()
    write_photo(photo, photo.rgb, theirs)
    write_photo(photo, perturb(photo.rgb), theirs, overwrite_ours=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ghost.png", "a.png", "holiday.png"]


def test_nan_pixels_and_wrong_shapes_are_refused(tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(u8(gradient())).save(src)
    photo = read_photo(src)
    bad = photo.rgb.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(PhotoError, match="NaN"):
        write_photo(photo, bad, output_path(src))
    with pytest.raises(PhotoError, match="pixels are"):
        write_photo(photo, photo.rgb[:10], output_path(src))
    assert not output_path(src).exists()


# ----------------------------------------------------------------------------------------------
# Atomic output: disk full, read-only folder


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_disk_full_leaves_no_partial_output(tmp_path, monkeypatch):
    src = tmp_path / "a.jpg"
    Image.fromarray(u8(gradient(200, 300))).save(src)
    photo = read_photo(src)
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:100])  # part of it lands on disk, then the disk is full
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(photo_mod.os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    with pytest.raises(PhotoError, match="a.ghost.jpg: cannot write: No space left on device"):
        write_photo(photo, photo.rgb, output_path(src))
    assert _only(tmp_path) == ["a.jpg"]


def test_atomic_write_bytes_failure_leaves_previous_file(tmp_path, monkeypatch):
    dest = tmp_path / "report.json"
    atomic_write_bytes(dest, b"old")
    real_fsync = os.fsync

    def boom(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(dest, b"new" * 1000)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert dest.read_bytes() == b"old" and _only(tmp_path) == ["report.json"]
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash mid-write")
    assert _only(tmp_path) == ["report.json"]


def test_read_only_folder_is_reported_and_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "a.png"
    Image.fromarray(u8(gradient())).save(src)
    photo = read_photo(src)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.geteuid() != 0:  # root ignores folder permissions: simulate EROFS below instead
            with pytest.raises(PhotoError, match=r"ro/a\.ghost\.png: cannot write: Permission denied"):
                write_photo(photo, photo.rgb, ro / "a.ghost.png")
        real_open = os.open

        def erofs(path, flags, *a, **k):
            if str(path).startswith(str(ro)) and flags & os.O_CREAT:
                raise OSError(errno.EROFS, "Read-only file system")
            return real_open(path, flags, *a, **k)

        monkeypatch.setattr(photo_mod.os, "open", erofs)
        with pytest.raises(PhotoError, match="cannot write: Read-only file system"):
            write_photo(photo, photo.rgb, ro / "a.ghost.png")
        assert _only(ro) == []
    finally:
        ro.chmod(0o755)


def test_original_is_never_modified(tmp_path):
    src = tmp_path / "a.jpg"
    Image.fromarray(u8(gradient())).save(src, exif=b"Exif\x00\x00" + camera_exif(6))
    before = src.read_bytes()
    st = src.stat()
    photo = read_photo(src)
    write_photo(photo, perturb(photo.rgb), output_path(src))
    assert src.read_bytes() == before and src.stat().st_mtime_ns == st.st_mtime_ns


def test_photo_is_the_documented_dataclass():
    fields = Photo.__dataclass_fields__
    for name in ("path", "format", "rgb", "alpha", "bit_depth", "notes", "exif", "icc_profile", "xmp",
                 "jpeg_qtables", "jpeg_subsampling", "jpeg_progressive", "mode"):
        assert name in fields


# ----------------------------------------------------------------------------------------------
# Camera RAW (rawpy): a tiny DNG made here (Bayer CFA, 16-bit, EXIF, Orientation 6)


def make_dng(h: int = 64, w: int = 96, orientation: int = 6) -> bytes:
    from ghostmesh_daemon.imaging.tiffmeta import serialize_ifds

    e = "<"

    def rats(tag, vals, typ=5, code="II"):
        return Entry(tag, typ, len(vals), b"".join(struct.pack(f"{e}{code}", int(round(v * 10000)), 10000) for v in vals))

    y, x = np.mgrid[0:h, 0:w]
    r, g, b = 0.2 + 0.6 * x / w, 0.2 + 0.6 * y / h, np.full((h, w), 0.5)
    cfa = np.where((y % 2 == 0) & (x % 2 == 0), r, np.where((y % 2 == 1) & (x % 2 == 1), b, g))
    data = (cfa * 4000 + 64).astype("<u2").tobytes()
    exif = [make_entry(e, 0x9003, 2, "2022:05:01 10:00:00"), rats(0x829A, [1 / 125]), rats(0x829D, [4.0]),
            make_entry(e, 0x8827, SHORT, [400])]
    ifd = [
        make_entry(e, 254, LONG, [0]), make_entry(e, 256, LONG, [w]), make_entry(e, 257, LONG, [h]),
        make_entry(e, 258, SHORT, [16]), make_entry(e, 259, SHORT, [1]), make_entry(e, 262, SHORT, [32803]),
        make_entry(e, 271, 2, "GhostCam"), make_entry(e, 272, 2, "RAW 1"),
        make_entry(e, 273, LONG, [8]), make_entry(e, 274, SHORT, [orientation]),
        make_entry(e, 277, SHORT, [1]), make_entry(e, 278, LONG, [h]), make_entry(e, 279, LONG, [len(data)]),
        make_entry(e, 284, SHORT, [1]), make_entry(e, 306, 2, "2022:05:01 10:00:00"),
        make_entry(e, 33421, SHORT, [2, 2]), make_entry(e, 33422, 1, [0, 1, 1, 2]),
        Entry(0x8769, LONG, 1, b"", exif),
        make_entry(e, 50706, 1, [1, 4, 0, 0]), make_entry(e, 50708, 2, "GhostCam RAW 1"),
        make_entry(e, 50714, SHORT, [64]), make_entry(e, 50717, SHORT, [4095]),
        rats(50721, [1, 0, 0, 0, 1, 0, 0, 0, 1], typ=10, code="ii"), make_entry(e, 50778, SHORT, [21]),
        rats(50728, [1, 1, 1]),
    ]
    return b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + serialize_ifds(e, ifd, 8 + len(data))


@pytest.mark.parametrize("raw_output,fmt,ext,bits", [("jpeg", "JPEG", ".jpg", 8), ("tiff16", "TIFF", ".tif", 16)])
def test_raw_is_developed_and_written_in_the_chosen_format(tmp_path, raw_output, fmt, ext, bits):
    pytest.importorskip("rawpy", reason="camera RAW support is optional: pip install 'ghostmesh[raw]'")
    src = tmp_path / "IMG_1.dng"
    src.write_bytes(make_dng(orientation=6))
    photo = read_photo(src, raw_output=raw_output)
    assert photo.format == fmt and photo.source_format == "RAW" and photo.size == (64, 96)  # rotated upright
    dest = output_path(src, raw_output=raw_output)
    assert dest.name == f"IMG_1.ghost{ext}"
    notes = write_photo(photo, perturb(photo.rgb), dest)
    assert any("RAW" in n for n in notes)
    with Image.open(dest) as out:
        assert out.format == fmt and out.size == (64, 96)
        ex = out.getexif()
        assert ex[0x010F] == "GhostCam" and ex[0x0110] == "RAW 1" and ex.get(0x0112, 1) == 1
        assert ex.get_ifd(0x8769)[0x9003] == "2022:05:01 10:00:00" and ex.get_ifd(0x8769)[0x8827] == 400
        assert out.info.get("icc_profile") == photo_mod._srgb_icc()
    assert read_photo(dest).bit_depth == bits
    with pytest.raises(PhotoError, match="over the 0.001 MP limit"):
        read_photo(src, max_megapixels=0.001)
    with pytest.raises(PhotoError, match="raw_output"):
        read_photo(src, raw_output="png")  # type: ignore[arg-type]


def test_raw_without_rawpy_or_damaged_is_refused_by_name(tmp_path, monkeypatch):
    bad = tmp_path / "broken.nef"
    bad.write_bytes(b"not a raw file at all" * 10)
    with pytest.raises(PhotoError, match=r"broken\.nef: (cannot read this RAW file|camera RAW needs rawpy)"):
        read_photo(bad)
    import sys

    monkeypatch.setitem(sys.modules, "rawpy", None)  # as if not installed
    src = tmp_path / "IMG_2.dng"
    src.write_bytes(make_dng())
    with pytest.raises(PhotoError, match=r"IMG_2\.dng: camera RAW needs rawpy"):
        read_photo(src)


# ----------------------------------------------------------------------------------------------
# XMP thumbnails and GPS, PNG colour key, high-bit-depth HEIF

XMP_WITH_THUMB_AND_GPS = b"""<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:xmpGImg="http://ns.adobe.com/xap/1.0/g/img/"
 xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"
 exif:GPSLatitude="43,28.0N" exif:GPSLongitude="11,52.0E" xmp:Rating="5">
<xmp:Thumbnails><rdf:Alt><rdf:li rdf:parseType="Resource"><xmpGImg:format>JPEG</xmpGImg:format>
<xmpGImg:image>/9j/4AAQSkZJRgABAgEASABIAAD/7QAsUGhvdG9zaG9wIDMuMAA4QklNA+0AAAAAABAASAAAAAEA</xmpGImg:image>
</rdf:li></rdf:Alt></xmp:Thumbnails>
<exif:GPSAltitude>120/1</exif:GPSAltitude>
<dc:creator><rdf:Seq><rdf:li>Ghost</rdf:li></rdf:Seq></dc:creator>
</rdf:Description></rdf:RDF></x:xmpmeta>"""


@pytest.mark.parametrize("fmt,name", [("JPEG", "x.jpg"), ("PNG", "x.png"), ("WEBP", "x.webp")])
def test_xmp_thumbnail_removed_and_gps_stripped_on_request(tmp_path, fmt, name):
    src = tmp_path / name
    kw = {"lossless": True} if fmt == "WEBP" else {}
    if fmt == "PNG":  # Pillow writes no XMP into PNG: put it where Adobe does (iTXt)
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        info.add_itxt("XML:com.adobe.xmp", XMP_WITH_THUMB_AND_GPS.decode())
        kw["pnginfo"] = info
    else:
        kw["xmp"] = XMP_WITH_THUMB_AND_GPS
    Image.fromarray(u8(gradient())).save(src, format=fmt, **kw)
    photo = read_photo(src)
    assert photo.xmp == XMP_WITH_THUMB_AND_GPS
    notes = write_photo(photo, photo.rgb, output_path(src))
    assert "XMP thumbnail removed" in notes
    xmp = read_photo(output_path(src)).xmp
    if fmt != "PNG":
        with Image.open(output_path(src)) as out:
            assert out.info["xmp"] == xmp
    assert b"Thumbnails" not in xmp and b"xmpGImg:image" not in xmp
    assert b'exif:GPSLatitude="43,28.0N"' in xmp and b"<rdf:li>Ghost</rdf:li>" in xmp and b'xmp:Rating="5"' in xmp
    dest = tmp_path / f"nogps.ghost{src.suffix}"
    notes = write_photo(photo, photo.rgb, dest, strip_gps=True)
    assert any("XMP" in n and "GPS" in n for n in notes)
    xmp = read_photo(dest).xmp
    assert b"GPS" not in xmp and b"<rdf:li>Ghost</rdf:li>" in xmp and b'xmp:Rating="5"' in xmp


def test_png_colour_key_becomes_alpha(tmp_path):
    src = tmp_path / "k.png"
    arr = u8(gradient())
    arr[:10, :10] = (1, 2, 3)
    Image.fromarray(arr).save(src, transparency=(1, 2, 3))
    photo = read_photo(src)
    assert photo.alpha is not None and (photo.alpha[:10, :10] == 0).all() and (photo.alpha[20:] == 255).all()
    write_photo(photo, photo.rgb, output_path(src))
    with Image.open(output_path(src)) as out:
        assert out.mode == "RGBA" and (np.asarray(out)[:10, :10, 3] == 0).all()


def test_high_bit_depth_heif_is_kept_above_8_bits(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    src = tmp_path / "hdr.heic"
    arr = u16(gradient(64, 96))
    pillow_heif.from_bytes("RGB;16", (96, 64), arr.tobytes()).save(src, quality=90)
    with Image.open(src) as im:
        assert im.info["bit_depth"] == 10
    photo = read_photo(src)
    assert photo.bit_depth == 16
    write_photo(photo, photo.rgb, output_path(src))
    with Image.open(output_path(src)) as out:
        assert out.info["bit_depth"] == 10 and out.size == (96, 64)
    again = read_photo(output_path(src))
    assert np.abs(again.rgb - photo.rgb).mean() < 0.01


def test_tiff_preview_page_is_dropped_but_real_pages_refused(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    src = tmp_path / "scan.tif"
    full = u8(gradient(60, 80))
    with tifffile.TiffWriter(src) as t:
        t.write(full, photometric="rgb")
        t.write(full[::4, ::4], photometric="rgb", subfiletype=1)  # a reduced-resolution preview
    photo = read_photo(src)
    assert photo.size == (80, 60) and any("preview page" in n for n in photo.notes)
    write_photo(photo, photo.rgb, output_path(src))
    with tifffile.TiffFile(output_path(src)) as t:
        assert len(t.pages) == 1


def test_png_legacy_raw_profile_exif_becomes_exif_chunk(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    block = camera_exif(6, thumbnail=True)
    hexed = block.hex()
    text = "\nexif\n" + f"{len(block):8d}\n" + "\n".join(hexed[i : i + 72] for i in range(0, len(hexed), 72)) + "\n"
    info = PngInfo()
    info.add_text("Raw profile type exif", text, zip=True)
    src = tmp_path / "im.png"
    Image.fromarray(u8(gradient())).save(src, pnginfo=info)
    photo = read_photo(src)
    assert photo.orientation == 6 and photo.size == (48, 64)
    notes = write_photo(photo, photo.rgb, output_path(src))
    assert "EXIF thumbnail removed" in notes and any("Raw profile" in n for n in notes)
    data = output_path(src).read_bytes()
    assert b"Raw profile" not in data
    ex = exif_of(output_path(src))
    assert ex[0x0112] == 1 and ex[0x010F] == "GhostCam"
