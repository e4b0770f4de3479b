"""Photo I/O a photographer can trust: decode, keep every byte of metadata that matters, encode back.

Public API (used by the engine pipeline, the CLI and the daemon)::

    photo = read_photo(path)                 # Photo: upright float RGB in the file's own colour space
    notes = write_photo(photo, rgb, dest)    # same format, metadata kept, atomic
    dest = output_path(path)                 # <stem>.ghost<ext>
"""

from __future__ import annotations

from ..errors import PhotoError
from .atomic import atomic_output, atomic_write_bytes
from .naming import is_output, output_path
from .photo import SUPPORTED_SUFFIXES, Photo, read_photo, write_photo

__all__ = [
    "Photo",
    "PhotoError",
    "SUPPORTED_SUFFIXES",
    "atomic_output",
    "atomic_write_bytes",
    "is_output",
    "output_path",
    "read_photo",
    "write_photo",
]
