"""TIFF output: the original's tags (IFD0, EXIF, GPS) around new pixels, 8 or 16 bits per sample.

Pillow cannot write 16-bit RGB(A) TIFF nor keep a TIFF's EXIF sub-IFDs and private tags byte for
byte, so the file is laid out here: header, compressed strips, IFD0 with the original's
descriptive tags, then the EXIF/GPS sub-IFDs. Byte order is the original's so raw values are
copied unchanged. Compression: uncompressed stays uncompressed; everything else is written as
Deflate with horizontal predictor (lossless, read by every TIFF reader of the last 20 years).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .tiffmeta import LONG, SHORT, Entry, make_entry, serialize_ifds

# Tags describing the pixel layout: rebuilt for the new pixels, never copied.
STRUCTURAL = {
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 274, 277, 278, 279, 280, 281, 284, 290, 291, 292, 293,
    317, 320, 322, 323, 324, 325, 338, 339, 340, 341, 347, 512, 513, 514, 515, 517, 518, 519, 520, 521,
    529, 530, 531, 532,
}
# Tags dropped with a note: they hold other images (SubIFDs: previews; ImageSourceData: Photoshop
# layers, i.e. the unprotected picture).
DROPPED = {330: "SubIFDs (embedded previews)", 37724: "Photoshop layer data (ImageSourceData)"}

COMPRESSION_NONE, COMPRESSION_DEFLATE, COMPRESSION_ADOBE_DEFLATE = 1, 32946, 8


def write_tiff(
    pixels: np.ndarray,
    *,
    endian: str,
    extrasamples: int | None,
    tags: list[Entry],
    compress: bool,
) -> bytes:
    """A complete TIFF file. ``pixels``: (H, W, C) uint8 or uint16, C in 1..4."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    h, w, c = pixels.shape
    bits = 16 if pixels.dtype == np.uint16 else 8
    photometric = 2 if c >= 3 else 1
    dtype = np.dtype(f"{endian}u{bits // 8}")
    row_bytes = w * c * bits // 8
    rows_per_strip = max(1, min(h, (1 << 18) // max(1, row_bytes)))
    strips: list[bytes] = []
    for y in range(0, h, rows_per_strip):
        block = pixels[y : y + rows_per_strip]
        if compress:
            diff = block.astype(dtype.newbyteorder("=")).copy()
            diff[:, 1:] -= block[:, :-1].astype(diff.dtype)  # horizontal predictor (wraps)
            strips.append(zlib.compress(diff.astype(dtype).tobytes(), 6))
        else:
            strips.append(block.astype(dtype).tobytes())
    data = bytearray((b"II*\x00" if endian == "<" else b"MM\x00*") + b"\x00\x00\x00\x00")
    offsets, counts = [], []
    for s in strips:
        offsets.append(len(data))
        counts.append(len(s))
        data += s
        if len(data) % 2:
            data += b"\x00"
    e = endian
    entries = [
        make_entry(e, 256, LONG, [w]),
        make_entry(e, 257, LONG, [h]),
        make_entry(e, 258, SHORT, [bits] * c),
        make_entry(e, 259, SHORT, [COMPRESSION_ADOBE_DEFLATE if compress else COMPRESSION_NONE]),
        make_entry(e, 262, SHORT, [photometric]),
        make_entry(e, 273, LONG, offsets),
        make_entry(e, 274, SHORT, [1]),
        make_entry(e, 277, SHORT, [c]),
        make_entry(e, 278, LONG, [rows_per_strip]),
        make_entry(e, 279, LONG, counts),
        make_entry(e, 284, SHORT, [1]),
        make_entry(e, 339, SHORT, [1] * c),
    ]
    if compress:
        entries.append(make_entry(e, 317, SHORT, [2]))
    if extrasamples is not None and c in (2, 4):
        entries.append(make_entry(e, 338, SHORT, [extrasamples]))
    entries += [t for t in tags if t.tag not in STRUCTURAL]
    ifd_offset = len(data)
    data[4:8] = struct.pack(f"{endian}I", ifd_offset)
    data += serialize_ifds(endian, entries, ifd_offset)
    return bytes(data)
