"""XMP edits: drop embedded thumbnails (base64 JPEGs of the photo) and, on request, GPS.

The packet is edited as text and otherwise left byte for byte as it was.
"""

from __future__ import annotations

import re

# <xmp:Thumbnails> ... </xmp:Thumbnails> (an rdf:Alt of xmpGImg:image base64 JPEGs), and the
# attribute form xmpGImg:image="...".
_THUMB_ELEMENT = re.compile(rb"<(\w+):Thumbnails\b[^>]*?(?:/>|>.*?</\1:Thumbnails>)", re.S)
_THUMB_ATTR = re.compile(rb"\s\w+:image=\"[A-Za-z0-9+/=&#;\s]{64,}\"")
# exif:GPSLatitude="..." attributes and <exif:GPSLatitude>...</exif:GPSLatitude> elements.
_GPS_ATTR = re.compile(rb"\s(?:exif|exifEX):GPS\w+=\"[^\"]*\"")
_GPS_ELEMENT = re.compile(rb"<((?:exif|exifEX):GPS\w+)\b[^>]*?(?:/>|>.*?</\1>)", re.S)


def scrub_xmp(xmp: bytes, *, strip_gps: bool = False) -> tuple[bytes, list[str]]:
    notes = []
    out, n = _THUMB_ELEMENT.subn(b"", xmp)
    out, m = _THUMB_ATTR.subn(b"", out)
    if n or m:
        notes.append("XMP thumbnail removed")
    if strip_gps:
        out, a = _GPS_ATTR.subn(b"", out)
        out, b = _GPS_ELEMENT.subn(b"", out)
        if a or b:
            notes.append("GPS location removed from XMP (strip_gps)")
    return out, notes
