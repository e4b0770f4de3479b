"""A small, strict reader and writer of TIFF structures (classic TIFF: EXIF blocks and TIFF files).

Two uses:

* :func:`patch_exif` edits an EXIF block *in place*: Orientation set to 1, pixel dimensions updated,
  the thumbnail (IFD1) unlinked and its bytes zeroed, embedded JPEG previews (MakerNote previews)
  zeroed, GPS removed on request. Nothing moves, so MakerNotes whose internal offsets are absolute
  survive byte for byte, and so does every tag we do not know.
* :func:`serialize_ifds` lays out IFDs (with EXIF/GPS/Interop sub-IFDs) from raw entries, for the
  TIFF writer and for EXIF built from RAW files.

Values are kept as the raw bytes of the source file, in the source's byte order; writers keep that
byte order so nothing is reinterpreted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
SHORT, LONG = 3, 4

TAG_ORIENTATION = 0x0112
TAG_EXIF_IFD = 0x8769
TAG_GPS_IFD = 0x8825
TAG_INTEROP_IFD = 0xA005
TAG_PIXEL_X = 0xA002
TAG_PIXEL_Y = 0xA003
TAG_JPEG_IF = 0x0201
TAG_JPEG_IF_LEN = 0x0202
TAG_STRIP_OFFSETS = 0x0111
TAG_STRIP_BYTE_COUNTS = 0x0117
TAG_TILE_OFFSETS = 0x0144
TAG_TILE_BYTE_COUNTS = 0x0145
TAG_MAKERNOTE = 0x927C
SUB_IFD_TAGS = (TAG_EXIF_IFD, TAG_GPS_IFD, TAG_INTEROP_IFD)

_MAX_ENTRIES = 4096


class TiffStructureError(ValueError):
    """The bytes are not a TIFF structure we can read safely."""


@dataclass
class Entry:
    """One IFD entry. ``data`` is the raw value bytes (source byte order); ``sub`` a sub-IFD's entries."""

    tag: int
    typ: int
    count: int
    data: bytes = b""
    sub: list[Entry] | None = None
    # Where the entry and its value live in the source (for in-place patching).
    entry_pos: int = -1
    value_pos: int = -1

    def ints(self, endian: str) -> list[int]:
        if self.typ in (SHORT, 8):
            return list(struct.unpack(f"{endian}{self.count}{'H' if self.typ == SHORT else 'h'}", self.data))
        if self.typ in (LONG, 9, 13):
            return list(struct.unpack(f"{endian}{self.count}{'I' if self.typ != 9 else 'i'}", self.data))
        if self.typ in (1, 7):
            return list(self.data)
        raise TiffStructureError(f"tag {self.tag:#06x} is not an integer type ({self.typ})")


@dataclass
class Ifd:
    offset: int
    entries: list[Entry] = field(default_factory=list)
    next_offset: int = 0
    next_pos: int = -1  # position of the 4-byte next-IFD pointer

    def get(self, tag: int) -> Entry | None:
        for e in self.entries:
            if e.tag == tag:
                return e
        return None


def header(buf: bytes | bytearray) -> tuple[str, int]:
    """(struct byte-order char, IFD0 offset) of a classic TIFF structure."""
    if len(buf) < 8:
        raise TiffStructureError("too short for a TIFF header")
    if buf[:4] == b"II*\x00":
        endian = "<"
    elif buf[:4] == b"MM\x00*":
        endian = ">"
    elif buf[:4] in (b"II+\x00", b"MM\x00+"):
        raise TiffStructureError("BigTIFF is not supported")
    else:
        raise TiffStructureError("no TIFF header")
    return endian, struct.unpack(f"{endian}I", buf[4:8])[0]


def parse_ifd(buf: bytes | bytearray, offset: int, endian: str, *, subs: tuple[int, ...] = SUB_IFD_TAGS,
              _depth: int = 0) -> Ifd:
    """Parse the IFD at ``offset`` (and, recursively, the sub-IFDs named by ``subs``)."""
    n = len(buf)
    if offset < 8 or offset + 2 > n:
        raise TiffStructureError(f"IFD offset {offset} out of range")
    (count,) = struct.unpack(f"{endian}H", buf[offset : offset + 2])
    if count > _MAX_ENTRIES or offset + 2 + 12 * count + 4 > n:
        raise TiffStructureError(f"IFD at {offset} has an impossible entry count {count}")
    ifd = Ifd(offset)
    for i in range(count):
        pos = offset + 2 + 12 * i
        tag, typ, cnt = struct.unpack(f"{endian}HHI", buf[pos : pos + 8])
        size = TYPE_SIZES.get(typ)
        if size is None:
            # Unknown type: keep the 4 value bytes as they are (cannot be relocated, see serialize).
            ifd.entries.append(Entry(tag, typ, cnt, bytes(buf[pos + 8 : pos + 12]), None, pos, pos + 8))
            continue
        length = size * cnt
        if length <= 4:
            vpos = pos + 8
        else:
            (vpos,) = struct.unpack(f"{endian}I", buf[pos + 8 : pos + 12])
            if vpos + length > n:
                raise TiffStructureError(f"tag {tag:#06x} points outside the block")
        e = Entry(tag, typ, cnt, bytes(buf[vpos : vpos + length]), None, pos, vpos)
        if tag in subs and typ in (LONG, 13) and cnt == 1 and _depth < 3:
            (sub_off,) = struct.unpack(f"{endian}I", e.data)
            e.sub = parse_ifd(buf, sub_off, endian, subs=subs, _depth=_depth + 1).entries
        ifd.entries.append(e)
    ifd.next_pos = offset + 2 + 12 * count
    (ifd.next_offset,) = struct.unpack(f"{endian}I", buf[ifd.next_pos : ifd.next_pos + 4])
    return ifd


# ---------------------------------------------------------------------------------------------
# In-place EXIF patching


def find_embedded_jpegs(buf: bytes | bytearray, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Spans of complete JPEG streams (SOI ... EOI) inside ``buf[start:end]``, for scrubbing previews."""
    end = len(buf) if end is None else end
    spans = []
    i = buf.find(b"\xff\xd8\xff", start, end)
    while i != -1:
        j = _jpeg_end(buf, i, end)
        if j is not None and j - i >= 128:
            spans.append((i, j))
            i = buf.find(b"\xff\xd8\xff", j, end)
        else:
            i = buf.find(b"\xff\xd8\xff", i + 3, end)
    return spans


def _jpeg_end(buf: bytes | bytearray, i: int, end: int) -> int | None:
    """End (exclusive) of the JPEG stream starting at ``i`` if its markers make sense, else None."""
    p = i + 2
    saw_frame = False
    while p + 4 <= end:
        if buf[p] != 0xFF:
            return None
        marker = buf[p + 1]
        if marker == 0xFF:
            p += 1
            continue
        if marker == 0xD9:
            return p + 2 if saw_frame else None
        (length,) = struct.unpack(">H", buf[p + 2 : p + 4])
        if length < 2:
            return None
        if marker in (0xC0, 0xC1, 0xC2, 0xC3):
            saw_frame = True
        if marker == 0xDA:  # scan data: the stream ends at the next EOI not inside the data
            q = p + 2 + length
            while q + 1 < end:
                q = buf.find(b"\xff", q, end)
                if q == -1 or q + 1 >= end:
                    return None
                nxt = buf[q + 1]
                if nxt == 0xD9:
                    return q + 2 if saw_frame else None
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
                    q += 1 if nxt == 0xFF else 2
                    continue
                break  # another segment (progressive scans): continue parsing markers
            p = q
            continue
        p += 2 + length
    return None


@dataclass
class ExifPatch:
    data: bytes
    notes: list[str]
    orientation_reset: bool  # False when an Orientation other than 1 could not be reset


def patch_exif(block: bytes, *, size: tuple[int, int] | None, strip_gps: bool = False) -> ExifPatch:
    """Patch an EXIF TIFF block (no ``Exif\\0\\0`` prefix) in place; see the module docstring.

    Raises :class:`TiffStructureError` when the block cannot be walked safely (the caller then
    carries it through unchanged and says so).
    """
    buf = bytearray(block)
    endian, ifd0_off = header(buf)
    ifd0 = parse_ifd(buf, ifd0_off, endian)
    notes: list[str] = []
    orientation_reset = True
    zeroed: list[tuple[int, int]] = []  # spans we blanked (only these may be cut off the end)

    ori = ifd0.get(TAG_ORIENTATION)
    if ori is not None:
        if ori.typ == SHORT and ori.count >= 1:
            buf[ori.value_pos : ori.value_pos + 2] = struct.pack(f"{endian}H", 1)
        else:
            orientation_reset = False

    exif_ifd = ifd0.get(TAG_EXIF_IFD)
    if size is not None and exif_ifd is not None and exif_ifd.sub:
        for e in exif_ifd.sub:
            if e.tag in (TAG_PIXEL_X, TAG_PIXEL_Y) and e.count == 1:
                v = size[0] if e.tag == TAG_PIXEL_X else size[1]
                if e.typ == SHORT and v < 65536:
                    buf[e.value_pos : e.value_pos + 2] = struct.pack(f"{endian}H", v)
                elif e.typ == LONG:
                    buf[e.value_pos : e.value_pos + 4] = struct.pack(f"{endian}I", v)

    # IFD1 (and any later IFDs): the thumbnail. Zero its image data and its entries, then unlink it.
    if ifd0.next_offset:
        try:
            ifd1 = parse_ifd(buf, ifd0.next_offset, endian, subs=())
        except TiffStructureError:
            ifd1 = None
        if ifd1 is not None:
            zeroed += _zero_ifd(buf, ifd1, endian)
        buf[ifd0.next_pos : ifd0.next_pos + 4] = b"\x00\x00\x00\x00"
        notes.append("EXIF thumbnail removed")

    if strip_gps:
        gps = ifd0.get(TAG_GPS_IFD)
        if gps is not None:
            if gps.sub:
                sub_off = struct.unpack(f"{endian}I", gps.data)[0]
                zeroed += _zero_ifd(buf, Ifd(sub_off, gps.sub, 0, sub_off + 2 + 12 * len(gps.sub)), endian)
            _remove_entry(buf, ifd0, gps, endian)
            notes.append("GPS location removed (strip_gps)")

    # Previews hidden elsewhere in the block (MakerNote preview images): zero any complete JPEG.
    scrubbed = 0
    for a, b in find_embedded_jpegs(buf):
        buf[a:b] = bytes(b - a)
        zeroed.append((a, b))
        scrubbed += 1
    if scrubbed:
        notes.append(f"{scrubbed} embedded preview image(s) in the EXIF MakerNote zeroed")
    # The thumbnail usually sits at the end of the block: drop the zeros it left behind.
    cut = len(buf)
    while True:  # walk back over the blanked spans (and word padding) that end the block
        cover = [a for a, b in zeroed if a < cut <= b + 1]
        if not cover or min(cover) >= cut:
            break
        cut = min(cover)
    cut = max(cut, _used_end(buf, endian, ifd0_off))
    if cut < len(buf) and not any(buf[cut:]):
        del buf[cut:]
    return ExifPatch(bytes(buf), notes, orientation_reset)


def _used_end(buf: bytearray, endian: str, ifd0_off: int) -> int:
    """End of the last byte that any remaining IFD or value refers to."""
    end = 8
    try:
        ifd = parse_ifd(buf, ifd0_off, endian)
    except TiffStructureError:
        return len(buf)

    def walk(offset: int, entries: list[Entry]) -> None:
        nonlocal end
        end = max(end, offset + 2 + 12 * len(entries) + 4)
        for e in entries:
            end = max(end, e.value_pos + len(e.data))
            if e.sub is not None:
                walk(struct.unpack(f"{endian}I", e.data)[0], e.sub)

    walk(ifd0_off, ifd.entries)
    return end + (end % 2)


def _zero_ifd(buf: bytearray, ifd: Ifd, endian: str) -> list[tuple[int, int]]:
    offsets = ifd.get(TAG_JPEG_IF)
    lengths = ifd.get(TAG_JPEG_IF_LEN)
    spans = []
    if offsets is not None and lengths is not None:
        try:
            spans.append((offsets.ints(endian)[0], lengths.ints(endian)[0]))
        except (TiffStructureError, IndexError, struct.error):
            pass
    for off_tag, len_tag in ((TAG_STRIP_OFFSETS, TAG_STRIP_BYTE_COUNTS), (TAG_TILE_OFFSETS, TAG_TILE_BYTE_COUNTS)):
        o, n = ifd.get(off_tag), ifd.get(len_tag)
        if o is not None and n is not None:
            try:
                spans += list(zip(o.ints(endian), n.ints(endian), strict=False))
            except (TiffStructureError, struct.error):
                pass
    zeroed = []
    for start, length in spans:
        if 0 < start < len(buf) and length > 0:
            end = min(len(buf), start + length)
            buf[start:end] = bytes(end - start)
            zeroed.append((start, end))
    for e in ifd.entries:
        if e.value_pos != e.entry_pos + 8 and e.value_pos > 0:  # out-of-line value
            buf[e.value_pos : e.value_pos + len(e.data)] = bytes(len(e.data))
            zeroed.append((e.value_pos, e.value_pos + len(e.data)))
    end = ifd.offset + 2 + 12 * len(ifd.entries) + 4
    buf[ifd.offset : end] = bytes(end - ifd.offset)
    zeroed.append((ifd.offset, end))
    return zeroed


def _remove_entry(buf: bytearray, ifd: Ifd, entry: Entry, endian: str) -> None:
    """Remove one entry from an IFD in place (entries after it and the next pointer shift up)."""
    count = len(ifd.entries)
    start = entry.entry_pos
    end = ifd.offset + 2 + 12 * count + 4
    buf[start : end - 12] = buf[start + 12 : end]
    buf[end - 12 : end] = bytes(12)
    buf[ifd.offset : ifd.offset + 2] = struct.pack(f"{endian}H", count - 1)


def read_exif_tree(block: bytes) -> tuple[str, list[Entry]]:
    """(byte order, IFD0 entries with sub-IFDs) of an EXIF block; raises TiffStructureError."""
    endian, off = header(block)
    return endian, parse_ifd(block, off, endian).entries


# ---------------------------------------------------------------------------------------------
# Serialization


def _entry_length(e: Entry) -> int:
    return len(e.data)


def serialize_ifds(endian: str, entries: list[Entry], base: int, *, next_offset: int = 0) -> bytes:
    """Lay out an IFD (and its sub-IFDs) starting at file offset ``base`` (must be even).

    Sub-IFD entries (``e.sub`` not None) get a LONG pointer. Entries are sorted by tag, values
    longer than 4 bytes are placed after the IFD, word-aligned.
    """
    entries = sorted(entries, key=lambda e: e.tag)
    ifd_size = 2 + 12 * len(entries) + 4
    values = bytearray()
    fixups: list[tuple[int, bytes]] = []  # (entry index, 4 value bytes)
    subs: list[tuple[int, list[Entry]]] = []
    cursor = base + ifd_size
    for i, e in enumerate(entries):
        if e.sub is not None:
            subs.append((i, e.sub))
            fixups.append((i, b""))
            continue
        if e.typ not in TYPE_SIZES:
            fixups.append((i, e.data[:4].ljust(4, b"\x00")))
            continue
        if len(e.data) <= 4:
            fixups.append((i, e.data.ljust(4, b"\x00")))
        else:
            pos = cursor + len(values)
            fixups.append((i, struct.pack(f"{endian}I", pos)))
            values += e.data
            if len(values) % 2:
                values += b"\x00"
    sub_blobs = bytearray()
    sub_ptr: dict[int, int] = {}
    sub_base = cursor + len(values)
    for i, sub in subs:
        pos = sub_base + len(sub_blobs)
        sub_ptr[i] = pos
        sub_blobs += serialize_ifds(endian, sub, pos)
        if len(sub_blobs) % 2:
            sub_blobs += b"\x00"
    out = bytearray(struct.pack(f"{endian}H", len(entries)))
    for (i, value), e in zip(fixups, entries, strict=True):
        if e.sub is not None:
            out += struct.pack(f"{endian}HHI", e.tag, LONG, 1) + struct.pack(f"{endian}I", sub_ptr[i])
        else:
            out += struct.pack(f"{endian}HHI", e.tag, e.typ, e.count) + value
    out += struct.pack(f"{endian}I", next_offset)
    return bytes(out + values + sub_blobs)


def exif_block(endian: str, ifd0: list[Entry]) -> bytes:
    """A standalone EXIF TIFF block (for APP1, eXIf, WebP EXIF) from IFD0 entries."""
    head = (b"II*\x00" if endian == "<" else b"MM\x00*") + struct.pack(f"{endian}I", 8)
    return head + serialize_ifds(endian, ifd0, 8)


def make_entry(endian: str, tag: int, typ: int, values: list[int] | bytes | str) -> Entry:
    if isinstance(values, str):
        data = values.encode("utf-8", "replace") + b"\x00"
        return Entry(tag, 2, len(data), data)
    if isinstance(values, bytes):
        return Entry(tag, typ, len(values), values)
    code = {SHORT: "H", LONG: "I", 1: "B", 8: "h", 9: "i"}[typ]
    return Entry(tag, typ, len(values), struct.pack(f"{endian}{len(values)}{code}", *values))
