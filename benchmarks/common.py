"""What the benchmarks share: where the data is, the identity set, and how results are written."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: ../shared/data beside the project; $GHOSTMESH_BENCH_DATA names another copy (a lent GPU machine has no ../shared).
DATA = Path(os.environ.get("GHOSTMESH_BENCH_DATA", ROOT.parent / "shared" / "data"))
FACES = DATA / "faces"
RESULTS = ROOT / "benchmarks" / "results"

#: Photos in ``_mixed`` whose person is known: extra references (never protected themselves).
EXTRA_REFERENCES = {
    "obama1.jpg": "obama",
    "obama-1080p.jpg": "obama",
    "alex_lacamoire1.jpg": "alex_lacamoire",
    "johnsnow_test1.jpg": "kit_harington",
}


def face_photos() -> list[tuple[str, Path]]:
    """(person, path) for every photo in a person's folder: the photos we protect."""
    if not FACES.is_dir():
        raise SystemExit(f"benchmark data {FACES} is absent (expected ../shared/data beside the project)")
    return [(d.name, p) for d in sorted(FACES.iterdir()) if d.is_dir() and not d.name.startswith("_")
            for p in sorted(d.iterdir()) if p.is_file()]


def references() -> list[tuple[str, Path]]:
    """(person, path) for every photo with a known person: the ones a protected photo must not match."""
    extra = [(person, FACES / "_mixed" / name) for name, person in EXTRA_REFERENCES.items()
             if (FACES / "_mixed" / name).exists()]
    return face_photos() + extra


def machine() -> str:
    """A one-line description of where the numbers were measured."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        model = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


def _head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


#: The revision checked out when this process started: the code a run measures is the code it imported,
#: and a benchmark of an hour outlives commits made meanwhile (HEAD read at the end named those).
_STARTED_AT = _head()


def git_rev() -> str:
    return _STARTED_AT


def write_results(name: str, data: dict, markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    j, m = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    j.write_text(json.dumps(data, indent=2) + "\n")
    m.write_text(markdown.rstrip() + "\n")
    return j, m


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def jpeg_encoding_of(path: Path):
    """A JPEG's own quantization tables and Pillow subsampling code, and the engine's model of that
    encoder (what the pipeline gets from ``Photo.jpeg_encoding``, without the photo reader's packages)."""
    from PIL import Image, JpegImagePlugin

    from ghostmesh_daemon.engine.eot import JpegCodec

    with Image.open(path) as im:
        tables = [list(v) for _, v in sorted(im.quantization.items())]
        sub = JpegImagePlugin.get_sampling(im)
    sub = 2 if sub < 0 else sub
    return tables, sub, JpegCodec.from_pillow(tables, 95, sub)
