"""PNG container: read the original's chunks, encode new pixels at the original's depth, splice.

The encoder handles what Pillow cannot write (16-bit RGB/RGBA and grey+alpha) and is used for every
PNG so that the output always has the original's colour type and bit depth. Filters are chosen per
row (the usual minimum-sum-of-absolute-differences heuristic), computed on whole arrays in numpy.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks describing the pixels' colour, resolution and text: copied from the original.
_COPY_BEFORE_DATA = {b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"cICP", b"mDCV", b"cLLI", b"sBIT", b"pHYs", b"tIME",
                     b"tEXt", b"zTXt", b"iTXt", b"eXIf"}
# Chunks we rebuild or that would be wrong for new pixels.
_DROP = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"bKGD", b"hIST", b"sPLT", b"acTL", b"fcTL", b"fdAT"}


class PngStructureError(ValueError):
    pass


@dataclass
class Chunk:
    kind: bytes
    data: bytes


def parse(data: bytes) -> list[Chunk]:
    if not data.startswith(SIGNATURE):
        raise PngStructureError("no PNG signature")
    p, out = 8, []
    while p + 8 <= len(data):
        (length,) = struct.unpack(">I", data[p : p + 4])
        kind = data[p + 4 : p + 8]
        if p + 12 + length > len(data):
            raise PngStructureError(f"chunk {kind!r} runs past the end of the file")
        out.append(Chunk(kind, data[p + 8 : p + 8 + length]))
        p += 12 + length
        if kind == b"IEND":
            break
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def find_exif(chunks: list[Chunk]) -> bytes | None:
    for c in chunks:
        if c.kind == b"eXIf":
            return c.data[6:] if c.data.startswith(b"Exif\x00\x00") else c.data
    return None


def find_xmp(chunks: list[Chunk]) -> bytes | None:
    for c in chunks:
        if c.kind == b"iTXt" and c.data.startswith(b"XML:com.adobe.xmp\x00"):
            rest = c.data[len(b"XML:com.adobe.xmp\x00") :]
            flag, _method = rest[0], rest[1]
            rest = rest[2:]
            _lang, _, rest = rest.partition(b"\x00")
            _tkey, _, text = rest.partition(b"\x00")
            return zlib.decompress(text) if flag else text
    return None


def _filter_rows(raw: np.ndarray, bpp: int) -> bytes:
    """raw: (H, rowbytes) uint8. Returns the filtered stream (filter byte + row) per row."""
    h, rb = raw.shape
    x = raw.astype(np.int16)
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    up = np.zeros_like(x)
    up[1:] = x[:-1]
    upleft = np.zeros_like(x)
    upleft[1:, bpp:] = x[:-1, :-bpp]
    cands = [x, x - left, x - up, x - ((left + up) >> 1)]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    cands.append(x - pred)
    stacked = np.stack([c.astype(np.uint8) for c in cands])  # wraps mod 256
    cost = np.abs(stacked.view(np.int8).astype(np.int32)).sum(axis=2)  # (5, H)
    best = cost.argmin(axis=0)
    rows = stacked[best, np.arange(h)]
    out = np.empty((h, rb + 1), np.uint8)
    out[:, 0] = best
    out[:, 1:] = rows
    return out.tobytes()


def encode(pixels: np.ndarray, bit_depth: int, *, level: int = 6) -> tuple[bytes, bytes]:
    """(IHDR payload, zlib stream) for (H, W, C) pixels, C in 1..4 (grey, grey+alpha, RGB, RGBA)."""
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    h, w, c = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    if bit_depth == 16:
        raw = pixels.astype(">u2").view(np.uint8).reshape(h, w * c * 2)
        bpp = 2 * c
    else:
        raw = pixels.astype(np.uint8).reshape(h, w * c)
        bpp = c
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    comp = zlib.compressobj(level)
    stream = bytearray()
    step = max(1, (1 << 22) // max(1, raw.shape[1]))  # ~4 MB of rows at a time
    for y in range(0, h, step):
        block = raw[max(0, y - 1) : y + step]
        filtered = _filter_rows(block, bpp)
        if y > 0:  # drop the context row
            filtered = filtered[raw.shape[1] + 1 :]
        stream += comp.compress(filtered)
    stream += comp.flush()
    return ihdr, bytes(stream)


def assemble(original: list[Chunk], ihdr: bytes, stream: bytes, *, exif: bytes | None, keep_icc: bool = True,
             extra: list[Chunk] | None = None, xmp: bytes | None = None) -> bytes:
    """Signature, IHDR, the original's descriptive chunks (eXIf replaced), new IDATs, IEND."""
    out = bytearray(SIGNATURE + _chunk(b"IHDR", ihdr))
    wrote_exif = False
    have = set()
    for c in original:
        if c.kind in _DROP:
            continue
        if c.kind == b"eXIf":
            if exif is not None:
                out += _chunk(b"eXIf", exif)
                wrote_exif = True
            continue
        if c.kind in (b"iCCP", b"sRGB", b"gAMA", b"cHRM") and not keep_icc:
            continue
        if c.kind == b"iTXt" and xmp is not None and c.data.startswith(b"XML:com.adobe.xmp\x00"):
            out += _chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)
            continue
        if c.kind in _COPY_BEFORE_DATA or (c.kind[3:4].islower()):  # known, or safe-to-copy
            out += _chunk(c.kind, c.data)
            have.add(c.kind)
    for c in extra or []:
        if c.kind not in have:
            out += _chunk(c.kind, c.data)
    if exif is not None and not wrote_exif:
        out += _chunk(b"eXIf", exif)
    for i in range(0, len(stream), 1 << 20):
        out += _chunk(b"IDAT", stream[i : i + (1 << 20)])
    out += _chunk(b"IEND", b"")
    return bytes(out)


def icc_chunk(profile: bytes, name: bytes = b"ICC profile") -> Chunk:
    return Chunk(b"iCCP", name + b"\x00\x00" + zlib.compress(profile))


_RAW_PROFILE_KEYS = (b"Raw profile type exif", b"Raw profile type APP1")


def is_raw_profile(c: Chunk) -> bool:
    """ImageMagick's legacy hex copy of the EXIF (thumbnail included) in a text chunk."""
    return c.kind in (b"tEXt", b"zTXt", b"iTXt") and any(c.data.startswith(k + b"\x00") for k in _RAW_PROFILE_KEYS)


def find_raw_profile_exif(chunks: list[Chunk]) -> bytes | None:
    """The EXIF block from a legacy raw-profile chunk: b"" if present but unreadable, None if absent."""
    for c in chunks:
        if not is_raw_profile(c):
            continue
        key, _, rest = c.data.partition(b"\x00")
        try:
            if c.kind == b"zTXt":
                text = zlib.decompress(rest[1:])
            elif c.kind == b"iTXt":
                flag, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\x00")
                _tk, _, text = rest.partition(b"\x00")
                text = zlib.decompress(text) if flag else text
            else:
                text = rest
            lines = text.strip().split(b"\n")
            blob = bytes.fromhex(b"".join(line.strip() for line in lines[2:]).decode("ascii"))
        except (ValueError, zlib.error, IndexError):
            return b""
        if blob.startswith(b"Exif\x00\x00"):
            blob = blob[6:]
        return blob if blob[:4] in (b"II*\x00", b"MM\x00*") else b""
    return None
