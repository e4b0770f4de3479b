"""Decode and encode photos: JPEG, PNG, WebP, TIFF, HEIC/HEIF and camera RAW (with rawpy).

``read_photo`` gives upright float RGB in the file's own colour space plus everything needed to
write the protected copy back faithfully; ``write_photo`` writes it in the same format, with the
original's metadata, atomically. Every failure is a :class:`PhotoError` naming the file and the
reason in one line.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from PIL import Image, ImageCms

from ..errors import PhotoError
from . import jpeg as jpegc
from . import png as pngc
from .atomic import atomic_output
from .naming import is_output
from .tiffio import DROPPED, write_tiff
from .xmp import scrub_xmp
from .tiffmeta import (
    SUB_IFD_TAGS,
    TAG_GPS_IFD,
    TAG_MAKERNOTE,
    TAG_ORIENTATION,
    Entry,
    TiffStructureError,
    exif_block,
    header,
    parse_ifd,
    patch_exif,
    read_exif_tree,
)

try:  # HEIC/HEIF through libheif
    import pillow_heif

    pillow_heif.register_heif_opener()
    HAVE_HEIF = True
except ImportError:  # pragma: no cover - pillow-heif is a dependency
    pillow_heif = None
    HAVE_HEIF = False

RawOutput = Literal["jpeg", "tiff16"]

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})
RAW_SUFFIXES = frozenset({
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".rwl",
    ".pef", ".ptx", ".srw", ".x3f", ".3fr", ".fff", ".iiq", ".erf", ".mrw", ".mef", ".mos", ".kdc", ".dcr",
})
SUPPORTED_SUFFIXES: frozenset[str] = (
    JPEG_SUFFIXES | frozenset({".png", ".webp", ".tif", ".tiff", ".heic", ".heif", ".hif"}) | RAW_SUFFIXES
)
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "HEIF")

_OPEN_LOCK = threading.Lock()
#: x265 speed preset for HEIC output ("medium": about 2x faster than libheif's default "slow"; the
#: quality is matched to the original's size either way).
HEIF_PRESET = "medium"
_HEIF_PRESET_OK = True  # turned off if the HEVC encoder in use has no such parameter
_SRGB_ICC: bytes | None = None

_MAGIC = [
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
]


#: Quality of a JPEG written without the original's tables (a RAW developed to JPEG).
JPEG_QUALITY_WITHOUT_TABLES = 95


@dataclass
class Photo:
    """A decoded photo and everything needed to write its protected copy back faithfully.

    ``rgb`` is float32 (H, W, 3) in [0, 1], upright, in the file's own colour space (grey images
    have three equal channels and are written back grey). ``alpha`` is the original alpha at the
    original depth (uint8 or uint16), upright, written back unchanged.
    """

    path: Path
    format: str  # the format that will be written: "JPEG", "PNG", "WEBP", "TIFF", "HEIF"
    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int  # 8 or 16 (per sample, as written)
    source_format: str = ""  # the file's own format ("MPO", "RAW", ...), same as ``format`` usually
    mode: str = "RGB"  # the original's Pillow mode
    channels: str = "RGB"  # "RGB" or "L": what the output stores
    orientation: int = 1  # EXIF Orientation that was applied to the pixels
    exif: bytes | None = None  # original EXIF TIFF block (no "Exif\0\0" prefix)
    icc_profile: bytes | None = None
    xmp: bytes | None = None
    jpeg_qtables: list[list[int]] | None = None
    jpeg_subsampling: int | None = None  # Pillow's code: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0
    jpeg_progressive: bool = False
    premultiplied: bool = False  # TIFF associated alpha: stored colour is multiplied by alpha
    colour_converted: bool = False  # pixels are not in the original's colour space (CMYK, RAW)
    encoder: dict[str, Any] = field(default_factory=dict)  # format-specific settings
    container: Any = None  # the original's parsed structure (JPEG segments, PNG chunks, TIFF tags)
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the upright image."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])

    @property
    def grayscale(self) -> bool:
        return self.channels == "L"

    def jpeg_quantization(self) -> dict[str, Any]:
        """Pillow's save arguments that decide how the copy's JPEG is quantized: the original's tables
        (or quality 95 without them) and its chroma subsampling, where known."""
        params: dict[str, Any] = {"qtables": self.jpeg_qtables} if self.jpeg_qtables else {"quality": JPEG_QUALITY_WITHOUT_TABLES}
        if self.jpeg_subsampling is not None and self.jpeg_subsampling >= 0:
            params["subsampling"] = self.jpeg_subsampling
        return params

    def jpeg_encoding(self) -> tuple[list[list[int]] | None, int, int] | None:
        """How the protected copy's JPEG will be quantized: (per-component tables, or None for libjpeg's
        tables at the quality given), quality, Pillow's subsampling code (its default, 4:2:0, when the
        original's is unknown). None when the copy is not an RGB JPEG. The optimizer uses it to see the
        copy as it will be written."""
        if self.format != "JPEG" or self.channels != "RGB":
            return None
        q = self.jpeg_quantization()
        return q.get("qtables"), JPEG_QUALITY_WITHOUT_TABLES, q.get("subsampling", 2)


# ---------------------------------------------------------------------------------------------
# Orientation


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF Orientation to an (H, W, ...) array so that it becomes upright."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return np.rot90(arr, 2).swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def unorient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Inverse of :func:`orient` (back to the stored layout)."""
    inverse = {6: 8, 8: 6}.get(orientation, orientation)
    return orient(arr, inverse)


# ---------------------------------------------------------------------------------------------
# Reading


def _sniff(data: bytes) -> str | None:
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return "HEIF"
    return None


def _open(path: Path, data: bytes) -> Image.Image:
    """Pillow open (header only). Pillow's own bomb check is off here: ours runs next, by name."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(data))
        except Image.UnidentifiedImageError:
            kind = _sniff(data)
            if kind:
                raise PhotoError(path, f"truncated or corrupt {kind} file (its header cannot be read)") from None
            raise PhotoError(path, "not an image (unrecognised content)") from None
        except Exception as e:  # noqa: BLE001 - any decoder failure is reported by name
            raise PhotoError(path, f"cannot read the image header ({_why(e)})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _why(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:200]


def _bomb_check(path: Path, w: int, h: int, max_megapixels: float) -> None:
    if w <= 0 or h <= 0:
        raise PhotoError(path, f"invalid image size {w}x{h}")
    if w * h > max_megapixels * 1e6:
        raise PhotoError(
            path,
            f"{w}x{h} is {w * h / 1e6:.0f} megapixels, over the {max_megapixels:g} MP limit "
            "(decompression-bomb guard; raise max_megapixels to allow it)",
        )


def _load(path: Path, im: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
    except MemoryError:
        raise PhotoError(path, f"not enough memory to decode {im.size[0]}x{im.size[1]}") from None
    except Exception as e:  # noqa: BLE001
        raise PhotoError(path, f"cannot decode: truncated or corrupt image data ({_why(e)})") from None


def _frames(im: Image.Image) -> int:
    try:
        return int(getattr(im, "n_frames", 1) or 1)
    except Exception:  # noqa: BLE001
        return 1


_SWAP16 = {"B": "L", "L": "B", "N": "B" if np.little_endian else "L"}


def _with_rawmode(data: bytes, path: Path, change: Callable[[str], str], mode: str | None = None) -> np.ndarray:
    """Decode again with every tile's raw mode changed (to read bytes Pillow's modes drop)."""
    im = _open(path, data)
    if mode is not None:
        im._mode = mode
    tiles = []
    for t in im.tile:
        args = t.args
        if isinstance(args, str):
            tiles.append(t._replace(args=change(args)))
        elif isinstance(args, tuple) and args and isinstance(args[0], str):
            tiles.append(t._replace(args=(change(args[0]),) + tuple(args[1:])))
        else:
            raise PhotoError(path, "cannot decode this sample layout")
    im.tile = tiles
    _load(path, im)
    return np.asarray(im)


def _rawmode(im: Image.Image) -> str:
    t = im.tile[0]
    return t.args if isinstance(t.args, str) else t.args[0]


def _read_16bit_colour(path: Path, data: bytes, im: Image.Image) -> np.ndarray:
    """Full 16-bit samples for RGB(A) images that Pillow would truncate to 8 bits.

    Pillow decodes (and un-filters) the data, then keeps one byte of each sample; decoding twice
    with the opposite byte order in the raw mode gives the other byte.
    """
    raw = _rawmode(im)  # e.g. "RGB;16B", "RGBA;16N"
    base, _, tail = raw.partition(";16")
    base = base.replace("RGBa", "RGBA")  # associated alpha: we want the stored values
    order = tail[:1] or "B"

    def hi(r: str) -> str:
        return f"{base};16{order}"

    def lo(r: str) -> str:
        return f"{base};16{_SWAP16[order]}"

    high = _with_rawmode(data, path, hi).astype(np.uint16)
    low = _with_rawmode(data, path, lo).astype(np.uint16)
    return (high << 8) | low


def read_photo(
    path: Path,
    *,
    max_megapixels: float = 200.0,
    raw_output: RawOutput = "jpeg",
) -> Photo:
    """Decode ``path`` (opened read-only, never modified). Raises :class:`PhotoError`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise PhotoError(path, "is a folder, not a photo") from None
    except OSError as e:
        raise PhotoError(path, f"cannot read: {e.strerror or e}") from None
    if not data:
        raise PhotoError(path, "empty file (0 bytes)")
    if path.suffix.lower() in RAW_SUFFIXES:
        from .raw import read_raw

        return read_raw(path, data, max_megapixels=max_megapixels, raw_output=raw_output)

    im = _open(path, data)
    fmt = im.format or "?"
    w, h = im.size
    _bomb_check(path, w, h, max_megapixels)
    if fmt not in ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "HEIF"):
        raise PhotoError(path, f"{fmt} files are not supported (supported: JPEG, PNG, WebP, TIFF, HEIC/HEIF, RAW)")
    frames = _frames(im)
    if frames > 1 and fmt not in ("MPO", "TIFF"):
        kind = {"PNG": "animated PNG", "WEBP": "animated WebP", "HEIF": "HEIF image sequence"}.get(fmt, fmt)
        raise PhotoError(path, f"{kind} ({frames} frames): animated files are not supported")
    if fmt in ("JPEG", "MPO"):
        return _read_jpeg(path, data, im)
    if fmt == "PNG":
        return _read_png(path, data, im)
    if fmt == "WEBP":
        return _read_webp(path, data, im)
    if fmt == "TIFF":
        return _read_tiff(path, data, im)
    return _read_heif(path, data, im)


def _exif_orientation(block: bytes | None, notes: list[str]) -> int:
    if not block:
        return 1
    try:
        endian, entries = read_exif_tree(block)
        for e in entries:
            if e.tag == TAG_ORIENTATION:
                value = e.ints(endian)[0]
                if 1 <= value <= 8:
                    return value
                notes.append(f"invalid EXIF Orientation {value} ignored")
                return 1
        return 1
    except (TiffStructureError, struct.error, IndexError):
        pass
    try:
        ex = Image.Exif()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ex.load(b"Exif\x00\x00" + block)
        value = int(ex.get(TAG_ORIENTATION, 1) or 1)
        return value if 1 <= value <= 8 else 1
    except Exception:  # noqa: BLE001
        notes.append("EXIF could not be read; Orientation taken as 1")
        return 1


def _pixels(path: Path, im: Image.Image, data: bytes, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, int, str, bool, bool]:
    """(colour (H, W, C) uint8/uint16, alpha or None, bit depth, channels, premultiplied, converted)."""
    mode = im.mode
    if im.format in ("PNG", "TIFF") and _rawmode(im).startswith("LA;16"):
        # 16-bit grey+alpha: Pillow has no unpacker, but its 4 bytes per pixel decode as RGBA bytes.
        big = _rawmode(im).endswith("B") or (_rawmode(im).endswith("N") and not np.little_endian)
        b = _with_rawmode(data, path, lambda r: "RGBA", mode="RGBA").astype(np.uint16)
        hi, lo = (0, 1) if big else (1, 0)
        grey = (b[..., hi] << 8) | b[..., lo]
        alpha = (b[..., 2 + hi] << 8) | b[..., 2 + lo]
        return grey[..., None], alpha, 16, "L", False, False
    if mode in ("RGB", "RGBA") and im.format in ("PNG", "TIFF") and ";16" in _rawmode(im):
        arr = _read_16bit_colour(path, data, im)
        premultiplied = "RGBa" in _rawmode(im)
        colour, alpha = (arr[..., :3], arr[..., 3]) if arr.shape[-1] == 4 else (arr, None)
        return colour, alpha, 16, "RGB", premultiplied, False
    if mode == "RGBA" and im.format == "TIFF" and _rawmode(im).startswith("RGBa"):
        arr = _with_rawmode(data, path, lambda r: r.replace("RGBa", "RGBA"))
        return arr[..., :3], arr[..., 3], 8, "RGB", True, False
    _load(path, im)
    if mode == "RGB":
        return np.asarray(im), None, 8, "RGB", False, False
    if mode == "RGBA":
        a = np.asarray(im)
        return a[..., :3], a[..., 3], 8, "RGB", False, False
    if mode == "L":
        return np.asarray(im)[..., None], None, 8, "L", False, False
    if mode == "LA":
        a = np.asarray(im)
        return a[..., :1], a[..., 1], 8, "L", False, False
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im).astype(np.uint16)[..., None], None, 16, "L", False, False
    if mode == "I":
        a = np.asarray(im)
        if a.min() >= 0 and a.max() < 65536:
            return a.astype(np.uint16)[..., None], None, 16, "L", False, False
        raise PhotoError(path, "32-bit integer images are not supported")
    if mode == "1":
        notes.append("1-bit image converted to 8-bit grey")
        return np.asarray(im.convert("L"))[..., None], None, 8, "L", False, False
    if mode in ("P", "PA"):
        rgba = im.convert("RGBA")
        a = np.asarray(rgba)
        has_alpha = "transparency" in im.info or mode == "PA" or bool((a[..., 3] < 255).any())
        notes.append("palette image converted to " + ("RGBA" if has_alpha else "RGB") + " (written as true colour)")
        return a[..., :3], (a[..., 3] if has_alpha else None), 8, "RGB", False, False
    if mode == "CMYK":
        icc = im.info.get("icc_profile")
        rgb_im = None
        if icc:
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                rgb_im = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
                notes.append("CMYK image converted to sRGB with its embedded profile (written as RGB)")
            except Exception:  # noqa: BLE001
                rgb_im = None
        if rgb_im is None:
            rgb_im = im.convert("RGB")
            notes.append("CMYK image converted to RGB without a colour profile (colours may shift; written as RGB)")
        return np.asarray(rgb_im), None, 8, "RGB", False, True
    raise PhotoError(path, f"colour mode {mode} is not supported (supported: RGB, RGBA, grey, palette, CMYK)")


def _to_float(colour: np.ndarray, bits: int, alpha: np.ndarray | None, premultiplied: bool) -> np.ndarray:
    scale = 65535.0 if bits == 16 else 255.0
    c = colour.astype(np.float32) / scale
    if premultiplied and alpha is not None:
        a = alpha.astype(np.float32)[..., None] / scale
        c = np.where(a > 0, c / np.maximum(a, 1e-12), 0.0).clip(0.0, 1.0).astype(np.float32)
    if c.shape[-1] == 1:
        c = np.repeat(c, 3, axis=-1)
    return c


def _finish(path: Path, fmt: str, source_format: str, mode: str, colour: np.ndarray, alpha: np.ndarray | None,
            bits: int, channels: str, premultiplied: bool, orientation: int, notes: list[str], *,
            already_upright: bool = False, **kw: Any) -> Photo:
    rgb = _to_float(colour, bits, alpha, premultiplied)
    turn = 1 if already_upright else orientation
    rgb = np.ascontiguousarray(orient(rgb, turn))
    if alpha is not None:
        alpha = np.ascontiguousarray(orient(alpha, turn))
    return Photo(path=path, format=fmt, rgb=rgb, alpha=alpha, bit_depth=bits, source_format=source_format,
                 mode=mode, channels=channels, orientation=orientation, premultiplied=premultiplied,
                 notes=notes, **kw)


def _component_qtables(im: Image.Image) -> list[list[int]]:
    """The quantization tables in the order the encoder assigns them to components.

    Pillow's encoder gives component i table i and the remaining components the last table, so
    the tables are listed per component (Y, Cb, Cr) with a trailing repeat collapsed: a file that
    quantizes Cb and Cr with one table gets exactly that again, even if it also defined unused tables.
    """
    tables = {k: list(v) for k, v in getattr(im, "quantization", {}).items()}
    if not tables:
        return []
    layer = getattr(im, "layer", None) or []
    ids = [entry[3] for entry in layer[:3] if entry[3] in tables]
    if len(ids) != min(3, len(layer)) or not ids:
        return [tables[k] for k in sorted(tables)][:3]
    while len(ids) > 1 and ids[-1] == ids[-2]:
        ids.pop()
    return [tables[i] for i in ids]


def _jpeg_sampling(im: Image.Image) -> tuple[int, str | None]:
    """Pillow's subsampling code for the original's chroma sampling, and a note if it had to change.

    The encoder offers 4:4:4, 4:2:2 and 4:2:0; other layouts get the one with the same amount of
    chroma (4:4:0 → 4:2:2, 4:1:1 → 4:2:0).
    """
    layer = getattr(im, "layer", None) or []
    if len(layer) < 3:
        return -1, None
    (_, yh, yv, _), (_, ch, cv, _) = layer[0], layer[1]
    if any((l[1], l[2]) != (ch, cv) for l in layer[2:3]) or ch == 0 or cv == 0:
        return 2, "unusual chroma sampling written as 4:2:0"
    h, v = yh // ch if yh % ch == 0 else 0, yv // cv if yv % cv == 0 else 0
    table = {(1, 1): (0, None), (2, 1): (1, None), (2, 2): (2, None),
             (1, 2): (1, "4:4:0 chroma sampling written as 4:2:2 (same amount of colour detail)"),
             (4, 1): (2, "4:1:1 chroma sampling written as 4:2:0 (same amount of colour detail)")}
    return table.get((h, v), (2, f"chroma sampling {yh}x{yv}/{ch}x{cv} written as 4:2:0"))


def _read_jpeg(path: Path, data: bytes, im: Image.Image) -> Photo:
    notes: list[str] = []
    try:
        layout = jpegc.parse(data)
    except jpegc.JpegStructureError as e:
        raise PhotoError(path, f"truncated or corrupt JPEG ({e})") from None
    fmt = im.format
    if fmt == "MPO":
        with contextlib.suppress(Exception):
            im.seek(0)
    qtables = _component_qtables(im)
    subsampling, sampling_note = _jpeg_sampling(im)
    colour, alpha, bits, channels, _, converted = _pixels(path, im, data, notes)
    exif = jpegc.find_exif(layout)
    orientation = _exif_orientation(exif, notes)
    icc = None if converted else jpegc.find_icc(layout)  # a CMYK profile no longer describes the pixels
    if channels == "RGB" and sampling_note:
        notes.append(sampling_note)
    return _finish(
        path, "JPEG", fmt, im.mode, colour, alpha, bits, channels, False, orientation, notes,
        exif=exif, icc_profile=icc, xmp=jpegc.find_xmp(layout),
        jpeg_qtables=qtables if channels == "RGB" else qtables[:1],
        jpeg_subsampling=subsampling if channels == "RGB" else None, jpeg_progressive=layout.progressive,
        colour_converted=converted, container=layout,
    )


def _read_png(path: Path, data: bytes, im: Image.Image) -> Photo:
    notes: list[str] = []
    try:
        chunks = pngc.parse(data)
    except pngc.PngStructureError as e:
        raise PhotoError(path, f"truncated or corrupt PNG ({e})") from None
    colour, alpha, bits, channels, _, converted = _pixels(path, im, data, notes)
    trns = next((c.data for c in chunks if c.kind == b"tRNS"), None)
    if alpha is None and trns and im.mode not in ("P", "PA", "1") and len(trns) in (2, 6):
        key = np.array(struct.unpack(f">{len(trns) // 2}H", trns), dtype=colour.dtype)
        if key.size == colour.shape[-1]:
            top = 65535 if bits == 16 else 255
            alpha = np.where((colour == key).all(axis=-1), 0, top).astype(colour.dtype)
            notes.append("colour-key transparency (tRNS) written as an alpha channel")
    exif = pngc.find_exif(chunks)
    legacy = pngc.find_raw_profile_exif(chunks)
    if legacy is not None:
        chunks = [c for c in chunks if not pngc.is_raw_profile(c)]
        if exif is None and legacy:
            exif = legacy
        notes.append("legacy 'Raw profile' EXIF text chunk replaced by a standard eXIf chunk"
                     if legacy and pngc.find_exif(chunks) is None else "legacy 'Raw profile' EXIF text chunk removed")
    orientation = _exif_orientation(exif, notes)
    ihdr = chunks[0].data if chunks and chunks[0].kind == b"IHDR" else b""
    if len(ihdr) == 13 and ihdr[12]:
        notes.append("interlaced PNG written non-interlaced")
    if len(ihdr) == 13 and ihdr[8] < 8 and im.mode in ("L", "LA", "1"):
        notes.append(f"{ihdr[8]}-bit grey written as 8-bit")
    icc = im.info.get("icc_profile") or None
    return _finish(path, "PNG", "PNG", im.mode, colour, alpha, bits, channels, False, orientation, notes,
                   exif=exif, icc_profile=icc, xmp=pngc.find_xmp(chunks), container=chunks,
                   colour_converted=converted)


def _webp_chunks(data: bytes) -> dict[bytes, bytes]:
    out, p = {}, 12
    while p + 8 <= len(data):
        kind = data[p : p + 4]
        (size,) = struct.unpack("<I", data[p + 4 : p + 8])
        out.setdefault(kind, data[p + 8 : p + 8 + size])
        p += 8 + size + (size & 1)
    return out


def _read_webp(path: Path, data: bytes, im: Image.Image) -> Photo:
    notes: list[str] = []
    chunks = _webp_chunks(data)
    lossless = b"VP8L" in chunks
    colour, alpha, bits, channels, _, _ = _pixels(path, im, data, notes)
    exif = chunks.get(b"EXIF") or None
    if exif and exif.startswith(b"Exif\x00\x00"):
        exif = exif[6:]
    orientation = _exif_orientation(exif, notes)
    return _finish(path, "WEBP", "WEBP", im.mode, colour, alpha, bits, channels, False, orientation, notes,
                   exif=exif, icc_profile=chunks.get(b"ICCP") or None, xmp=chunks.get(b"XMP ") or None,
                   encoder={"lossless": lossless,
                            "original_bytes": len(chunks.get(b"VP8 ", b"")) + len(chunks.get(b"ALPH", b""))})


def _tiff_pages(data: bytes, endian: str, first: int) -> list[int]:
    """NewSubfileType of every page in the IFD chain (bit 0 set: a reduced-resolution preview)."""
    kinds, seen, off = [], set(), first
    while off and off not in seen and len(kinds) < 1000:
        seen.add(off)
        try:
            ifd = parse_ifd(data, off, endian, subs=())
        except (TiffStructureError, struct.error):
            break
        e = ifd.get(254)
        kinds.append(e.ints(endian)[0] if e is not None else 0)
        off = ifd.next_offset
    return kinds


def _read_tiff(path: Path, data: bytes, im: Image.Image) -> Photo:
    notes: list[str] = []
    try:
        endian, off = header(data)
        ifd0 = parse_ifd(data, off, endian)
    except (TiffStructureError, struct.error) as e:
        raise PhotoError(path, f"TIFF structure cannot be read ({e})") from None
    pages = _tiff_pages(data, endian, off)
    if pages and pages[0] & 1:
        raise PhotoError(path, "the TIFF's first image is a reduced-resolution preview (a RAW-style TIFF); not supported")
    full = [k for k in pages if not k & 1]
    if len(full) > 1:
        raise PhotoError(path, f"multi-page TIFF ({len(full)} pages) is not supported; split the pages first")
    if len(pages) > 1:
        notes.append(f"{len(pages) - 1} TIFF preview page(s) removed")
    planar = ifd0.get(284)
    if planar is not None and planar.ints(endian)[0] == 2:
        notes.append("planar TIFF written as interleaved")
    comp = ifd0.get(259)
    compression = comp.ints(endian)[0] if comp is not None else 1
    colour, alpha, bits, channels, premultiplied, converted = _pixels(path, im, data, notes)
    orientation = 1
    ori = ifd0.get(TAG_ORIENTATION)
    if ori is not None:
        with contextlib.suppress(TiffStructureError, IndexError):
            v = ori.ints(endian)[0]
            orientation = v if 1 <= v <= 8 else 1
    extras = ifd0.get(338)
    extrasamples = extras.ints(endian)[0] if extras is not None else (2 if alpha is not None else None)
    icc = ifd0.get(34675)
    xmp = ifd0.get(700)
    if compression not in (1, 8, 32946):
        notes.append("TIFF compression " + {5: "LZW", 7: "JPEG", 32773: "PackBits"}.get(compression, str(compression))
                     + " written as lossless Deflate")
    # Pillow's TIFF loader applies the Orientation tag itself: the decoded pixels are upright.
    return _finish(path, "TIFF", "TIFF", im.mode, colour, alpha, bits, channels, premultiplied, orientation, notes,
                   already_upright=True,
                   icc_profile=(icc.data if icc is not None and not converted else None),
                   xmp=xmp.data if xmp is not None else None, colour_converted=converted,
                   encoder={"endian": endian, "compress": compression != 1, "extrasamples": extrasamples},
                   container=ifd0.entries)


def _read_heif(path: Path, data: bytes, im: Image.Image) -> Photo:
    notes: list[str] = []
    info = im.info
    bit_depth = int(info.get("bit_depth") or 8)
    if bit_depth > 8:
        try:
            heif = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False)
            arr = np.asarray(heif)
        except Exception as e:  # noqa: BLE001
            raise PhotoError(path, f"cannot decode: truncated or corrupt image data ({_why(e)})") from None
        # libheif returns the samples scaled to 16 bits.
        colour = arr[..., :3].astype(np.uint16)
        alpha = arr[..., 3].astype(np.uint16) if arr.shape[-1] == 4 else None
        bits, channels, mode = 16, "RGB", heif.mode
        notes.append(f"{bit_depth}-bit HEIF processed at 16 bits and written back at {min(bit_depth, 12)} bits")
    else:
        colour, alpha, bits, channels, _, _ = _pixels(path, im, data, notes)
        mode = im.mode
    exif = info.get("exif") or None
    if exif and exif.startswith(b"Exif\x00\x00"):
        exif = exif[6:]
    if info.get("depth_images") or info.get("aux"):
        notes.append("HEIF depth/auxiliary images not carried to the output")
    # libheif has already applied the container's rotation/mirroring: the pixels are upright.
    return _finish(path, "HEIF", "HEIF", mode, colour, alpha, bits, channels, False, 1, notes,
                   exif=exif, icc_profile=info.get("icc_profile") or None, xmp=info.get("xmp") or None,
                   encoder={"chroma": info.get("chroma"), "bit_depth": bit_depth,
                            "original_bytes": len(data) - sum(len(x or b"") for x in (exif, info.get("xmp"),
                                                                                     info.get("icc_profile"))),
                            "nclx": info.get("nclx_profile")})


# ---------------------------------------------------------------------------------------------
# Writing


def _srgb_icc() -> bytes:
    global _SRGB_ICC
    if _SRGB_ICC is None:
        _SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return _SRGB_ICC


@dataclass
class _ExifOut:
    data: bytes | None
    notes: list[str]
    orientation_reset: bool


def prepare_exif(photo: Photo, size: tuple[int, int], strip_gps: bool) -> _ExifOut:
    """The EXIF block for the output: Orientation 1, thumbnail removed, GPS stripped on request."""
    if not photo.exif:
        return _ExifOut(None, [], True)
    notes: list[str] = []
    try:
        import piexif

        piexif.load(photo.exif)
    except Exception as e:  # noqa: BLE001 - piexif raises anything on odd camera data
        notes.append(f"EXIF could not be parsed by piexif ({type(e).__name__}); raw block carried through "
                     "with Orientation and thumbnail patched in place")
    try:
        patched = patch_exif(photo.exif, size=size, strip_gps=strip_gps)
    except (TiffStructureError, struct.error, IndexError) as e:
        notes.append(f"EXIF could not be parsed ({e}); raw block carried through unchanged")
        if strip_gps:
            notes.append("strip_gps: the EXIF block could not be edited, so it was dropped to remove GPS")
            return _ExifOut(None, notes, True)
        return _ExifOut(photo.exif, notes, photo.orientation == 1)
    notes += [n for n in patched.notes if n != "EXIF thumbnail removed"]
    if "EXIF thumbnail removed" in patched.notes:
        notes.append("EXIF thumbnail removed")
    return _ExifOut(patched.data, notes, patched.orientation_reset)


def _quantize(rgb: np.ndarray, bits: int) -> np.ndarray:
    scale = 65535.0 if bits == 16 else 255.0
    out = np.clip(rgb, 0.0, 1.0) * scale + 0.5
    return out.astype(np.uint16 if bits == 16 else np.uint8)


def _output_pixels(photo: Photo, rgb: np.ndarray, unorient_to: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(colour (H, W, C) at the output depth, alpha) in the layout the file will store."""
    if photo.grayscale:
        rgb = rgb.mean(axis=-1, keepdims=True)
    alpha = photo.alpha
    if photo.premultiplied and alpha is not None:
        scale = 65535.0 if photo.bit_depth == 16 else 255.0
        rgb = rgb * (alpha.astype(np.float32)[..., None] / scale)
    colour = _quantize(rgb, photo.bit_depth)
    if unorient_to != 1:
        colour = np.ascontiguousarray(unorient(colour, unorient_to))
        alpha = None if alpha is None else np.ascontiguousarray(unorient(alpha, unorient_to))
    return colour, alpha


def write_photo(
    photo: Photo,
    rgb: np.ndarray,
    dest: Path,
    *,
    strip_gps: bool = False,
    overwrite_ours: bool = False,
) -> list[str]:
    """Write ``rgb`` (float (H, W, 3) in [0, 1], upright) as the protected copy of ``photo``.

    Same format as the original, metadata kept (see the README's "Photo formats and metadata").
    Atomic: a temporary in the destination folder, fsync'd, renamed. Refuses to replace an
    existing file unless ``overwrite_ours`` is set and that file is one of our outputs. Returns
    the notes for the report; raises :class:`PhotoError`.
    """
    dest = Path(dest)
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.shape != photo.rgb.shape:
        raise PhotoError(dest, f"pixels are {rgb.shape}, the photo is {photo.rgb.shape}")
    if not np.isfinite(rgb).all():
        raise PhotoError(dest, "pixels contain NaN or infinity; nothing written")
    with contextlib.suppress(OSError):
        if dest.resolve() == photo.path.resolve():
            raise PhotoError(dest, "refusing to overwrite the original")
    exists = dest.exists() or dest.is_symlink()
    if exists:
        if not is_output(dest) or dest.is_symlink():
            raise PhotoError(dest, "already exists and is not a Ghost Mesh output; not overwritten")
        if not overwrite_ours:
            raise PhotoError(dest, "already exists (a previous Ghost Mesh output; not replaced unless asked to)")
    notes = list(photo.notes)
    exif = prepare_exif(photo, photo.size, strip_gps)
    notes += exif.notes
    unorient_to = 1 if exif.orientation_reset else photo.orientation
    if unorient_to != 1:
        notes.append(f"EXIF Orientation {photo.orientation} kept (the EXIF could not be edited): pixels written in the stored layout")
    colour, alpha = _output_pixels(photo, rgb, unorient_to)
    xmp = None
    if photo.xmp:
        xmp, xmp_notes = scrub_xmp(photo.xmp, strip_gps=strip_gps)
        notes += xmp_notes
    try:
        if photo.format == "JPEG":
            data, more = _encode_jpeg(photo, colour, exif.data, xmp)
        elif photo.format == "PNG":
            data, more = _encode_png(photo, colour, alpha, exif.data, xmp)
        elif photo.format == "WEBP":
            data, more = _encode_webp(photo, colour, alpha, exif.data, xmp)
        elif photo.format == "TIFF":
            data, more = _encode_tiff(photo, colour, alpha, exif.data, strip_gps, xmp)
        elif photo.format == "HEIF":
            data, more = _encode_heif(photo, colour, alpha, exif.data, xmp)
        else:
            raise PhotoError(dest, f"cannot write {photo.format}")
    except PhotoError:
        raise
    except Exception as e:  # noqa: BLE001
        raise PhotoError(dest, f"cannot encode {photo.format} ({_why(e)})") from None
    notes += more
    try:
        with atomic_output(dest, replace=exists) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except FileExistsError:
        raise PhotoError(dest, "appeared while writing and is not ours; not overwritten") from None
    except OSError as e:
        raise PhotoError(dest, f"cannot write: {e.strerror or e}; no partial output left") from None
    return _dedupe(notes)


def _dedupe(notes: list[str]) -> list[str]:
    seen, out = set(), []
    for n in notes:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def _pil(colour: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    c = colour.shape[-1]
    if alpha is not None:
        arr = np.concatenate([colour, alpha[..., None].astype(colour.dtype)], axis=-1)
        return Image.fromarray(arr, "LA" if c == 1 else "RGBA")
    return Image.fromarray(colour[..., 0], "L") if c == 1 else Image.fromarray(colour, "RGB")


def _encode_jpeg(photo: Photo, colour: np.ndarray, exif: bytes | None, xmp: bytes | None) -> tuple[bytes, list[str]]:
    im = _pil(colour, None)
    params: dict[str, Any] = {"optimize": True, "progressive": photo.jpeg_progressive, **photo.jpeg_quantization()}
    if photo.colour_converted:
        params["icc_profile"] = _srgb_icc()
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **params)
    encoded = buf.getvalue()
    layout = photo.container
    if layout is None:  # RAW → JPEG: no original JPEG to take segments from
        layout = jpegc.JpegLayout(head=[], trailing=0, progressive=False)
        segs = []
        if exif:
            segs.append(jpegc.Segment(jpegc.APP1, jpegc.EXIF_PREFIX + exif))
        if xmp:
            segs.append(jpegc.Segment(jpegc.APP1, jpegc.XMP_PREFIX + xmp))
        layout.head = segs
        return jpegc.splice(layout, encoded, exif=exif, keep_icc=False)
    return jpegc.splice(layout, encoded, exif=exif, keep_icc=not photo.colour_converted, xmp=xmp)


def _encode_png(photo: Photo, colour: np.ndarray, alpha: np.ndarray | None, exif: bytes | None,
                xmp: bytes | None) -> tuple[bytes, list[str]]:
    pixels = colour if alpha is None else np.concatenate([colour, alpha[..., None].astype(colour.dtype)], axis=-1)
    if photo.bit_depth == 8 or pixels.shape[-1] == 1:
        # Pillow's encoder (faster, smaller files) covers 8-bit and 16-bit grey; we keep its
        # IHDR and image data and supply every other chunk ourselves.
        im = _pil(colour, alpha) if photo.bit_depth == 8 else Image.fromarray(np.ascontiguousarray(pixels[..., 0], dtype=np.uint16))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        encoded = pngc.parse(buf.getvalue())
        ihdr = encoded[0].data
        stream = b"".join(c.data for c in encoded if c.kind == b"IDAT")
    else:  # 16-bit colour or grey+alpha: Pillow cannot write these
        ihdr, stream = pngc.encode(pixels, photo.bit_depth)
    extra = [pngc.icc_chunk(_srgb_icc(), b"sRGB")] if photo.colour_converted else []
    return pngc.assemble(photo.container or [], ihdr, stream, exif=exif, keep_icc=not photo.colour_converted,
                         extra=extra, xmp=xmp), []


def _match_size(encode: Callable[[Image.Image, int], bytes], im: Image.Image, target_bpp: float,
                lo: int = 30, hi: int = 98, side: int = 1024) -> int:
    """The highest quality whose bits per pixel stay within 3 % of the original's (on a central crop)."""
    w, h = im.size
    crop = im if w * h <= side * side * 1.5 else im.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
    npx = crop.size[0] * crop.size[1]
    best = lo
    for _ in range(6):
        if lo > hi:
            break
        q = (lo + hi) // 2
        bpp = len(encode(crop, q)) * 8 / npx
        if bpp <= target_bpp * 1.03:
            best, lo = q, q + 1
        else:
            hi = q - 1
    return best


def _encode_webp(photo: Photo, colour: np.ndarray, alpha: np.ndarray | None, exif: bytes | None,
                 xmp: bytes | None) -> tuple[bytes, list[str]]:
    im = _pil(colour, alpha)
    params: dict[str, Any] = {}
    if exif:
        params["exif"] = exif
    if xmp:
        params["xmp"] = xmp
    if photo.icc_profile:
        params["icc_profile"] = photo.icc_profile
    if alpha is not None:
        params["exact"] = True
    notes = []
    if photo.encoder.get("lossless"):
        params["lossless"] = True
    else:
        w, h = im.size
        target = photo.encoder.get("original_bytes", w * h // 4) * 8 / (w * h)

        def enc(img: Image.Image, q: int) -> bytes:
            b = io.BytesIO()
            img.save(b, format="WEBP", quality=q)
            return b.getvalue()

        q = _match_size(enc, im, target)
        params["quality"] = q
        notes.append(f"lossy WebP re-encoded at quality {q} (matched to the original's size)")
    buf = io.BytesIO()
    im.save(buf, format="WEBP", **params)
    return buf.getvalue(), notes


def _encode_heif(photo: Photo, colour: np.ndarray, alpha: np.ndarray | None, exif: bytes | None,
                 xmp: bytes | None) -> tuple[bytes, list[str]]:
    if pillow_heif is None:  # pragma: no cover
        raise PhotoError(photo.path, "HEIF output needs pillow-heif")
    h, w = colour.shape[:2]
    if photo.bit_depth == 16:
        arr = colour if alpha is None else np.concatenate([colour, alpha[..., None]], axis=-1)
        mode = "RGBA;16" if alpha is not None else "RGB;16"
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
            mode = "RGB;16"
        heif = pillow_heif.from_bytes(mode, (w, h), np.ascontiguousarray(arr).tobytes())
        img_for_search = Image.fromarray((arr[..., :3] >> 8).astype(np.uint8), "RGB")
    else:
        heif = None
        img_for_search = _pil(colour, alpha)
        if img_for_search.mode in ("L", "LA"):
            img_for_search = img_for_search.convert("RGBA" if alpha is not None else "RGB")
    params: dict[str, Any] = {}
    if exif:
        params["exif"] = b"Exif\x00\x00" + exif
    if xmp:
        params["xmp"] = xmp
    if photo.icc_profile:
        params["icc_profile"] = photo.icc_profile
    chroma = photo.encoder.get("chroma")
    if chroma in (420, 422, 444):
        params["chroma"] = chroma
    target = photo.encoder.get("original_bytes", w * h // 8) * 8 / (w * h)

    def save(target: Any, out: io.BytesIO, **kw: Any) -> None:
        global _HEIF_PRESET_OK
        if _HEIF_PRESET_OK:
            try:
                target.save(out, enc_params={"preset": HEIF_PRESET}, **kw)
                return
            except Exception as e:  # noqa: BLE001 - an encoder without x265's presets
                if "parameter" not in str(e).lower():
                    raise
                _HEIF_PRESET_OK = False
                out.seek(0)
                out.truncate()
        target.save(out, **kw)

    def enc(img: Image.Image, q: int) -> bytes:
        b = io.BytesIO()
        save(img, b, format="HEIF", quality=q, **({"chroma": chroma} if "chroma" in params else {}))
        return b.getvalue()

    q = _match_size(enc, img_for_search.convert("RGB"), target, lo=30, hi=95, side=768)
    buf = io.BytesIO()
    if heif is not None:
        if photo.encoder.get("bit_depth", 8) > 10:
            params["save_to_12bit"] = True
        save(heif, buf, quality=q, **params)
    else:
        save(img_for_search, buf, format="HEIF", quality=q, **params)
    notes = [f"HEIF re-encoded at quality {q} (matched to the original's size)"]
    if alpha is not None:
        notes.append("HEIF alpha re-encoded (HEIF stores alpha as a lossy image)")
    return buf.getvalue(), notes


def _encode_tiff(photo: Photo, colour: np.ndarray, alpha: np.ndarray | None, exif: bytes | None,
                 strip_gps: bool, xmp: bytes | None) -> tuple[bytes, list[str]]:
    notes: list[str] = []
    enc = photo.encoder
    endian = enc.get("endian", "<")
    tags: list[Entry] = []
    if photo.container is not None:  # a TIFF original: its own IFD0 tags
        for e in photo.container:
            if e.tag in DROPPED:
                notes.append(f"{DROPPED[e.tag]} removed")
                continue
            if e.tag == TAG_GPS_IFD and strip_gps:
                notes.append("GPS location removed (strip_gps)")
                continue
            if e.tag == 34675 and photo.colour_converted:
                continue
            if e.tag == 700 and xmp is not None:
                e = Entry(700, e.typ if e.typ in (1, 7) else 1, len(xmp), xmp)
            if e.tag in SUB_IFD_TAGS and e.sub is None:
                continue  # a pointer we could not follow: do not write a dangling one
            if e.tag == 34377:  # Photoshop resources: drop the thumbnail resources
                payload, n = jpegc._scrub_photoshop(jpegc.PS_PREFIX + e.data)
                data = payload[len(jpegc.PS_PREFIX) :]
                if n:
                    notes.append("Photoshop thumbnail removed")
                e = Entry(e.tag, e.typ, len(data), data)
            if e.tag == 0x8769 and e.sub and any(s.tag == TAG_MAKERNOTE for s in e.sub):
                notes.append("MakerNote moved with the EXIF data; maker offsets inside it may not survive")
            tags.append(e)
    elif exif:  # RAW → TIFF: the EXIF we built
        try:
            endian, entries = read_exif_tree(exif)
            tags = [e for e in entries if e.tag != TAG_ORIENTATION]
        except TiffStructureError:
            pass
    if photo.colour_converted:
        tags.append(Entry(34675, 7, len(_srgb_icc()), _srgb_icc()))
    pixels = colour if alpha is None else np.concatenate([colour, alpha[..., None].astype(colour.dtype)], axis=-1)
    extras = enc.get("extrasamples")
    if alpha is not None and extras not in (0, 1, 2):
        extras = 2
    data = write_tiff(pixels, endian=endian, extrasamples=extras if alpha is not None else None, tags=tags,
                      compress=enc.get("compress", True))
    return data, notes


def exif_from_tiff_entries(endian: str, entries: list[Entry], keep: Callable[[int], bool]) -> bytes:
    """An EXIF block from a TIFF's IFD0 entries (for RAW files), keeping tags ``keep`` accepts."""
    ifd0 = []
    for e in entries:
        if not keep(e.tag):
            continue
        if e.sub is not None:
            e = Entry(e.tag, e.typ, e.count, e.data, [s for s in e.sub if s.tag != TAG_MAKERNOTE])
        ifd0.append(e)
    return exif_block(endian, ifd0)


__all__ = [
    "Photo",
    "RAW_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "orient",
    "prepare_exif",
    "read_photo",
    "unorient",
    "write_photo",
]

