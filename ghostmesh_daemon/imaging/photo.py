"""Decode and encode photos (first version: JPEG and PNG)."""

from __future__ import annotations

import io
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, JpegImagePlugin

from ..errors import PhotoError
from .atomic import atomic_output

SUPPORTED_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".jpe", ".png"})

_OPEN_LOCK = threading.Lock()


@dataclass
class Photo:
    """A decoded photo and everything needed to write its protected copy back faithfully."""

    path: Path
    format: str
    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    mode: str = "RGB"
    grayscale: bool = False
    orientation: int = 1
    exif: bytes | None = None
    icc_profile: bytes | None = None
    xmp: bytes | None = None
    jpeg_qtables: Any = None
    jpeg_subsampling: int | None = None
    jpeg_progressive: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the upright image."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
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


def read_photo(path: Path, *, max_megapixels: float = 200.0) -> Photo:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise PhotoError(path, f"cannot read: {e.strerror or e}") from None
    if size == 0:
        raise PhotoError(path, "empty file")
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Image.UnidentifiedImageError:
        raise PhotoError(path, "not an image (format not recognised)") from None
    except OSError as e:
        raise PhotoError(path, f"cannot read: {e}") from None
    with im:
        w, h = im.size
        if w * h > max_megapixels * 1e6:
            raise PhotoError(
                path, f"{w}x{h} is {w * h / 1e6:.0f} MP, over the {max_megapixels:g} MP limit (decompression-bomb guard)"
            )
        fmt = im.format or "?"
        if fmt not in ("JPEG", "MPO", "PNG"):
            raise PhotoError(path, f"format {fmt} is not supported yet")
        notes: list[str] = []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise PhotoError(path, f"cannot decode ({e})") from None
        exif_raw = im.info.get("exif")
        exif = bytes(exif_raw) if exif_raw else None
        if exif and exif.startswith(b"Exif\x00\x00"):
            exif = exif[6:]
        orientation = 1
        try:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        except Exception:
            notes.append("EXIF could not be parsed; Orientation taken as 1")
        if orientation not in range(1, 9):
            notes.append(f"invalid EXIF Orientation {orientation}; taken as 1")
            orientation = 1
        mode = im.mode
        alpha = None
        grayscale = mode in ("L", "LA", "I;16", "I")
        if mode in ("RGB", "L"):
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        elif mode in ("RGBA", "LA"):
            a = np.asarray(im.convert("RGBA"), dtype=np.uint8)
            arr, alpha = a[..., :3], a[..., 3].copy()
        else:
            notes.append(f"{mode} image converted to RGB")
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        rgb = arr.astype(np.float32) / 255.0
        rgb = np.ascontiguousarray(_orient(rgb, orientation))
        if alpha is not None:
            alpha = np.ascontiguousarray(_orient(alpha, orientation))
        photo = Photo(
            path=path,
            format="JPEG" if fmt == "MPO" else fmt,
            rgb=rgb,
            alpha=alpha,
            bit_depth=8,
            mode=mode,
            grayscale=grayscale,
            orientation=orientation,
            exif=exif,
            icc_profile=im.info.get("icc_profile") or None,
            xmp=im.info.get("xmp") or None,
            notes=notes,
        )
        if fmt in ("JPEG", "MPO"):
            photo.jpeg_qtables = im.quantization
            photo.jpeg_subsampling = JpegImagePlugin.get_sampling(im)
            photo.jpeg_progressive = bool(im.info.get("progressive") or im.info.get("progression"))
            if fmt == "MPO":
                photo.notes.append("embedded MPF preview image removed")
        if "dpi" in im.info:
            photo.info["dpi"] = im.info["dpi"]
        return photo


def _exif_for_output(photo: Photo, size: tuple[int, int], strip_gps: bool) -> tuple[bytes | None, list[str]]:
    if not photo.exif:
        return None, []
    import piexif

    notes: list[str] = []
    try:
        d = piexif.load(photo.exif)
        d["0th"][piexif.ImageIFD.Orientation] = 1
        d["thumbnail"] = None
        d["1st"] = {}
        if strip_gps:
            d["GPS"] = {}
            d["0th"].pop(piexif.ImageIFD.GPSTag, None)
            notes.append("GPS removed (strip_gps)")
        if piexif.ExifIFD.PixelXDimension in d["Exif"]:
            d["Exif"][piexif.ExifIFD.PixelXDimension] = size[0]
            d["Exif"][piexif.ExifIFD.PixelYDimension] = size[1]
        return b"Exif\x00\x00" + piexif.dump(d), notes
    except Exception:
        notes.append("EXIF could not be parsed; raw block carried through")
        return b"Exif\x00\x00" + photo.exif, notes


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_photo(photo: Photo, rgb: np.ndarray, dest: Path, *, strip_gps: bool = False) -> list[str]:
    dest = Path(dest)
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.shape != photo.rgb.shape:
        raise PhotoError(dest, f"pixels are {rgb.shape}, the photo is {photo.rgb.shape}")
    notes = list(photo.notes)
    arr = _to_uint8(rgb)
    if photo.grayscale:
        im = Image.fromarray(arr, "RGB").convert("L")
    else:
        im = Image.fromarray(arr, "RGB")
    if photo.alpha is not None:
        im = im.convert("LA" if photo.grayscale else "RGBA")
        im.putalpha(Image.fromarray(photo.alpha))
    exif, exif_notes = _exif_for_output(photo, im.size, strip_gps)
    notes += exif_notes
    params: dict[str, Any] = {}
    if exif:
        params["exif"] = exif
    if photo.icc_profile:
        params["icc_profile"] = photo.icc_profile
    if photo.xmp:
        params["xmp"] = photo.xmp
    if "dpi" in photo.info:
        params["dpi"] = photo.info["dpi"]
    if photo.format == "JPEG":
        params.update(qtables=photo.jpeg_qtables, progressive=photo.jpeg_progressive, optimize=True)
        if photo.jpeg_subsampling is not None and photo.jpeg_subsampling >= 0:
            params["subsampling"] = photo.jpeg_subsampling
    buf = io.BytesIO()
    try:
        im.save(buf, format=photo.format, **params)
    except (OSError, ValueError) as e:
        raise PhotoError(dest, f"cannot encode {photo.format}: {e}") from None
    try:
        with atomic_output(dest) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getbuffer())
    except OSError as e:
        raise PhotoError(dest, f"cannot write: {e.strerror or e}") from None
    return notes
