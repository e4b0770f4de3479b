"""Is a file finished? The last gate before a photo is queued: it must decode to the end.

A size/mtime window cannot tell a writer that paused from one that finished; a truncated JPEG or
PNG fails to decode, so a decode closes that gap. JPEGs are decoded at 1/8 scale (``draft``), which
still reads the whole entropy-coded stream but costs a few milliseconds.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from PIL import Image

HASH_CHUNK = 1 << 20


def decode_problem(path: Path) -> str | None:
    """``None`` if ``path`` decodes completely (or is a format this check cannot judge, such as a
    camera RAW: the stability window alone decides for those), else the decoder's complaint."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
    except Image.UnidentifiedImageError:
        return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return str(e) or type(e).__name__
    return None


def content_hash(path: Path) -> str:
    """SHA-256 of the file's bytes: the ledger's key (a renamed or copied-back photo keeps it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()
