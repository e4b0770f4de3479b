"""Camera RAW input through rawpy (LibRaw): developed once, written as a JPEG or a 16-bit TIFF.

RAW cannot be written back (no encoder exists for camera formats), so the protected copy is a
developed image in the user's choice of format (config ``raw_output``: ``"jpeg"`` or ``"tiff16"``),
named ``<stem>.ghost.jpg`` / ``<stem>.ghost.tif``. EXIF (camera, lens, exposure, dates, GPS) is
taken from the RAW's TIFF structure where it has one; MakerNotes are not carried (their offsets
point into the RAW file).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ..errors import PhotoError
from .tiffmeta import TiffStructureError, header, parse_ifd

# IFD0 tags worth carrying from a RAW into the developed copy (who, when, what with).
_KEEP_IFD0 = {0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298, 0x02BC, 0x83BB, 0x8769, 0x8825}


def _exif_from_raw(data: bytes) -> tuple[bytes | None, bytes | None, list[str]]:
    from .photo import exif_from_tiff_entries

    try:
        endian, off = header(data)
        ifd0 = parse_ifd(data, off, endian)
    except (TiffStructureError, struct.error):
        return None, None, ["EXIF not carried: this RAW container is not TIFF-based"]
    xmp = ifd0.get(0x02BC)
    block = exif_from_tiff_entries(endian, ifd0.entries, lambda t: t in _KEEP_IFD0 and t != 0x02BC)
    exif_ifd = ifd0.get(0x8769)
    notes = []
    if exif_ifd is not None and exif_ifd.sub and any(e.tag == 0x927C for e in exif_ifd.sub):
        notes.append("MakerNote not carried from the RAW file (its offsets point into the RAW)")
    return block, (xmp.data if xmp is not None else None), notes


def read_raw(path: Path, data: bytes, *, max_megapixels: float, raw_output: str):
    from .photo import Photo, _bomb_check, _srgb_icc

    if raw_output not in ("jpeg", "tiff16"):
        raise PhotoError(path, f"raw_output must be 'jpeg' or 'tiff16', not {raw_output!r}")
    try:
        import rawpy
    except ImportError:
        raise PhotoError(path, "camera RAW needs rawpy: pip install 'ghostmesh[raw]'") from None
    try:
        raw = rawpy.imread(str(path))
    except Exception as e:  # noqa: BLE001 - LibRaw errors are many
        raise PhotoError(path, f"cannot read this RAW file ({type(e).__name__}: {e})") from None
    with raw:
        s = raw.sizes
        _bomb_check(path, int(s.width), int(s.height), max_megapixels)
        try:
            rgb16 = raw.postprocess(use_camera_wb=True, output_bps=16, no_auto_bright=False,
                                    output_color=rawpy.ColorSpace.sRGB)
        except Exception as e:  # noqa: BLE001
            raise PhotoError(path, f"cannot develop this RAW file ({type(e).__name__}: {e})") from None
    exif, xmp, notes = _exif_from_raw(data)
    notes = [f"camera RAW developed (camera white balance, sRGB) and written as "
             f"{'a JPEG' if raw_output == 'jpeg' else 'a 16-bit TIFF'}"] + notes
    rgb = (rgb16.astype(np.float32) / 65535.0)  # LibRaw already applied the RAW's orientation
    if raw_output == "jpeg":
        fmt, bits, enc = "JPEG", 8, {}
        extra = {"jpeg_qtables": None, "jpeg_subsampling": 0, "jpeg_progressive": False}
    else:
        fmt, bits, enc = "TIFF", 16, {"endian": "<", "compress": True, "extrasamples": None}
        extra = {}
    return Photo(path=path, format=fmt, rgb=np.ascontiguousarray(rgb), alpha=None, bit_depth=bits,
                 source_format="RAW", mode="RGB;16", channels="RGB", orientation=1, exif=exif,
                 icc_profile=_srgb_icc(), xmp=xmp, colour_converted=True, encoder=enc, notes=notes, **extra)
