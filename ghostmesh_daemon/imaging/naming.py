"""Output names: ``<stem>.ghost<ext>`` beside the original, or in a chosen folder."""

from __future__ import annotations

from pathlib import Path

from .atomic import is_temp

DEFAULT_SUFFIX = ".ghost"


def output_path(
    src: Path,
    *,
    out_dir: Path | None = None,
    suffix: str = DEFAULT_SUFFIX,
    raw_output: str = "jpeg",
) -> Path:
    """Where the protected copy of ``src`` goes: ``<stem><suffix><ext>`` (``IMG_1.ghost.jpg``).

    The extension is the original's, spelling included (``.HEIC`` stays ``.HEIC``). ``out_dir``
    puts it in that folder instead of beside the original (relative folders are taken relative to
    the original's folder). Camera RAW files get the extension of the chosen ``raw_output``
    (``.jpg`` for ``"jpeg"``, ``.tif`` for ``"tiff16"``).
    """
    from .photo import RAW_SUFFIXES

    src = Path(src)
    if not suffix or "/" in suffix or "\\" in suffix:
        raise ValueError(f"invalid output suffix {suffix!r}")
    folder = src.parent
    if out_dir is not None:
        out_dir = Path(out_dir)
        folder = out_dir if out_dir.is_absolute() else src.parent / out_dir
    ext = src.suffix
    if ext.lower() in RAW_SUFFIXES:
        ext = {"jpeg": ".jpg", "tiff16": ".tif"}[raw_output]
    return folder / f"{src.stem}{suffix}{ext}"


def is_output(path: Path, suffix: str = DEFAULT_SUFFIX) -> bool:
    """True when ``path`` is one of our outputs (``*.ghost.<ext>``) or one of our temporaries."""
    path = Path(path)
    if is_temp(path):
        return True
    return Path(path.stem).suffix == suffix or path.stem.endswith(suffix)
