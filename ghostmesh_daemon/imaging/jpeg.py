"""JPEG container surgery: read the original's metadata segments, splice them around new pixels.

Pillow encodes the pixels (with the original's quantization tables, subsampling and progression);
the metadata segments are then taken byte for byte from the original, so nothing Pillow does not
model (IPTC, comments, maker segments, multi-segment ICC) is lost. What is dropped, on purpose:
the MPF index and FlashPix (APP2) that carry preview images, Photoshop's thumbnail resources,
any other segment that embeds a JPEG, and data appended after the end of the image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .tiffmeta import _jpeg_end, find_embedded_jpegs

SOI, EOI, SOS = 0xD8, 0xD9, 0xDA
APP0, APP1, APP2, APP13, APP14, COM = 0xE0, 0xE1, 0xE2, 0xED, 0xEE, 0xFE
EXIF_PREFIX = b"Exif\x00\x00"
XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_EXT_PREFIX = b"http://ns.adobe.com/xmp/extension/\x00"
ICC_PREFIX = b"ICC_PROFILE\x00"
PS_PREFIX = b"Photoshop 3.0\x00"
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
# Photoshop image resources that are pictures of the image (thumbnails).
_PS_THUMBNAILS = {0x0409, 0x040C}


class JpegStructureError(ValueError):
    pass


@dataclass
class Segment:
    marker: int
    payload: bytes  # without marker and length


@dataclass
class JpegLayout:
    head: list[Segment]  # every segment before the first SOS (tables and metadata)
    trailing: int  # bytes after EOI
    progressive: bool


def parse(data: bytes) -> JpegLayout:
    """Segments before the scan data, whether the frame is progressive, and trailing bytes."""
    if data[:2] != b"\xff\xd8":
        raise JpegStructureError("no JPEG start-of-image marker")
    p, n = 2, len(data)
    head: list[Segment] = []
    progressive = False
    while p + 4 <= n:
        if data[p] != 0xFF:
            raise JpegStructureError(f"bad marker at byte {p}")
        marker = data[p + 1]
        if marker == 0xFF:
            p += 1
            continue
        if marker in (SOI, EOI) or 0xD0 <= marker <= 0xD7:
            p += 2
            continue
        (length,) = struct.unpack(">H", data[p + 2 : p + 4])
        if length < 2 or p + 2 + length > n:
            raise JpegStructureError(f"segment {marker:#04x} at byte {p} runs past the end of the file")
        if marker == SOS:
            break
        if marker in _SOF_MARKERS:
            progressive = marker in _PROGRESSIVE
        head.append(Segment(marker, data[p + 4 : p + 2 + length]))
        p += 2 + length
    end = _jpeg_end(data, 0, n)
    trailing = n - end if end is not None else 0
    return JpegLayout(head, trailing, progressive)


def is_metadata(seg: Segment) -> bool:
    return 0xE0 <= seg.marker <= 0xEF or seg.marker == COM


def find_exif(layout: JpegLayout) -> bytes | None:
    for seg in layout.head:
        if seg.marker == APP1 and seg.payload.startswith(EXIF_PREFIX):
            return seg.payload[len(EXIF_PREFIX) :]
    return None


def find_xmp(layout: JpegLayout) -> bytes | None:
    for seg in layout.head:
        if seg.marker == APP1 and seg.payload.startswith(XMP_PREFIX):
            return seg.payload[len(XMP_PREFIX) :]
    return None


def find_icc(layout: JpegLayout) -> bytes | None:
    chunks = [s.payload[len(ICC_PREFIX) :] for s in layout.head if s.marker == APP2 and s.payload.startswith(ICC_PREFIX)]
    if not chunks:
        return None
    try:
        chunks.sort(key=lambda c: c[0])
        return b"".join(c[2:] for c in chunks)
    except IndexError:
        return None


def _scrub_photoshop(payload: bytes) -> tuple[bytes, int]:
    """Drop thumbnail resources from a Photoshop APP13 payload. Returns (payload, removed)."""
    body = payload[len(PS_PREFIX) :]
    out = bytearray(PS_PREFIX)
    p, removed = 0, 0
    while p + 12 <= len(body) and body[p : p + 4] == b"8BIM":
        rid = struct.unpack(">H", body[p + 4 : p + 6])[0]
        name_len = body[p + 6]
        name_total = 1 + name_len + ((1 + name_len) % 2)
        q = p + 6 + name_total
        if q + 4 > len(body):
            break
        size = struct.unpack(">I", body[q : q + 4])[0]
        end = q + 4 + size + (size % 2)
        if end > len(body):
            end = len(body)
        if rid in _PS_THUMBNAILS:
            removed += 1
        else:
            out += body[p:end]
        p = end
    out += body[p:]  # anything we could not walk is kept as is
    return bytes(out), removed


def splice(
    original: JpegLayout,
    encoded: bytes,
    *,
    exif: bytes | None,
    keep_icc: bool = True,
    xmp: bytes | None = None,
) -> tuple[bytes, list[str]]:
    """The final file: ``encoded``'s tables and scans, the original's metadata segments.

    ``exif`` replaces the original's EXIF APP1 payload (already patched, no prefix); ``None``
    drops it. ``keep_icc=False`` drops the original's ICC segments (the pixels were converted).
    ``xmp`` (when not None) replaces the standard XMP packet.
    """
    notes: list[str] = []
    new = parse(encoded)
    scan_start = _scan_start(encoded)
    meta = bytearray()
    dropped_mpf = dropped_fpxr = dropped_other = removed_ps = 0
    had_jfif = any(s.marker == APP0 and s.payload.startswith(b"JFIF\x00") for s in original.head)
    for seg in original.head:
        if not is_metadata(seg):
            continue
        payload = seg.payload
        if seg.marker == APP1 and payload.startswith(EXIF_PREFIX):
            if exif is None:
                continue
            payload = EXIF_PREFIX + exif
        elif seg.marker == APP1 and payload.startswith(XMP_PREFIX) and xmp is not None:
            payload = XMP_PREFIX + xmp
        elif seg.marker == APP2 and payload.startswith(b"MPF\x00"):
            dropped_mpf += 1
            continue
        elif seg.marker == APP2 and payload.startswith(b"FPXR\x00"):
            dropped_fpxr += 1
            continue
        elif seg.marker == APP2 and payload.startswith(ICC_PREFIX):
            if not keep_icc:
                continue
        elif seg.marker == APP14:  # Adobe colour-transform flag: must describe *our* encoding
            continue
        elif seg.marker == APP13 and payload.startswith(PS_PREFIX):
            payload, n = _scrub_photoshop(payload)
            removed_ps += n
        elif seg.marker == APP0 and payload.startswith(b"JFXX"):
            dropped_other += 1  # JFIF extension: a thumbnail
            continue
        if seg.marker != APP1 and find_embedded_jpegs(payload):
            dropped_other += 1
            continue
        if len(payload) + 2 > 0xFFFF:
            raise JpegStructureError(f"metadata segment {seg.marker:#04x} is too large to write")
        meta += bytes((0xFF, seg.marker)) + struct.pack(">H", len(payload) + 2) + payload
    if not had_jfif:
        # Pillow writes a JFIF APP0; a file that had none keeps none.
        pass
    tables = bytearray()
    for seg in new.head:
        if is_metadata(seg):
            if seg.marker == APP0 and seg.payload.startswith(b"JFIF\x00") and not had_jfif:
                continue
            if seg.marker == APP0 and had_jfif:
                continue  # the original's APP0 is already in `meta`
            if seg.marker == APP2 and seg.payload.startswith(ICC_PREFIX) and not keep_icc:
                tables += bytes((0xFF, seg.marker)) + struct.pack(">H", len(seg.payload) + 2) + seg.payload
            continue
        tables += bytes((0xFF, seg.marker)) + struct.pack(">H", len(seg.payload) + 2) + seg.payload
    if dropped_mpf:
        notes.append("embedded MPF preview image removed")
    if dropped_fpxr:
        notes.append("FlashPix (FPXR) preview data removed")
    if removed_ps:
        notes.append("Photoshop thumbnail removed from the IPTC/Photoshop block")
    if dropped_other:
        notes.append(f"{dropped_other} metadata segment(s) carrying a preview image removed")
    if original.trailing > 16:
        notes.append(f"{original.trailing} bytes appended after the image (previews, video) removed")
    end = _jpeg_end(encoded, 0, len(encoded)) or len(encoded)
    return b"\xff\xd8" + bytes(meta) + bytes(tables) + encoded[scan_start:end], notes


def _scan_start(data: bytes) -> int:
    p = 2
    while p + 4 <= len(data):
        marker = data[p + 1]
        if marker == 0xFF:
            p += 1
            continue
        if marker == SOS:
            return p
        (length,) = struct.unpack(">H", data[p + 2 : p + 4])
        p += 2 + length
    raise JpegStructureError("encoded JPEG has no scan")
