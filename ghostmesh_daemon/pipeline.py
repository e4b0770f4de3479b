"""One photo's journey: decode -> find faces -> engine -> encode -> measure the written file.

:class:`Protector` is the one object per process that holds the loaded models; the CLI, the daemon
and the editor plugins all call :meth:`Protector.protect_file`. It never raises for a bad photo: the
report entry says what went wrong, naming the file, and the caller carries on with the next one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from . import ENGINE_VERSION
from .dlib_check import MATCH_THRESHOLD, best_match, descriptor_at, distances_to_original, find_faces, upload_like
from .engine import EngineSettings, evaluate, protect_image
from .engine.eot import JpegCodec
from .engine.losses import psnr, ssim
from .errors import GhostMeshError, ModelUnavailable, PhotoError
from .faces import detect_faces
from .imaging import atomic_output, is_output, output_path, read_photo, write_photo
from .imaging.atomic import temp_name
from .report import ReportEntry, TargetResult
from .targets import Target, create_target, list_targets
from .verdict import apply_verdict
from .weights import load_lpips

log = logging.getLogger("ghostmesh")

#: What the report's robustness check does to a protected copy: what platforms do to uploads.
UPLOAD_QUALITY = 75
UPLOAD_LONG_SIDE = 1080

Progress = Callable[[int, int], None]

#: A photo without a face when every pushed target is a face model: nothing to protect, nothing written.
NO_FACE_REASON = "no face found: nothing for the face recognizers to protect"


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, then Apple's MPS, then the CPU; an explicit request that cannot be met is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GhostMeshError(f"--device {requested}: no CUDA GPU is available (use auto or cpu)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise GhostMeshError(f"--device {requested}: Apple MPS is not available (use auto or cpu)")
    return device


def load_targets(settings: EngineSettings, device: torch.device, warn: Callable[[str], None]) -> tuple[list[Target], list[str]]:
    """The targets to protect against, and the warnings the report must carry.

    ``auto`` loads every registered target whose weights can be found, warning loudly (stderr and
    report) about each one that cannot; a target named explicitly that cannot load is an error.
    Held-out judges (registered with ``auto=False``, e.g. ``mobilefacenet``) are used only when named.
    """
    names: Sequence[str] = settings.targets
    auto = list(names) == ["auto"]
    if auto:
        names = list_targets(auto=True)
    unknown = [n for n in [*names, *dict(settings.target_weights)] if n not in list_targets()]
    if unknown:
        raise GhostMeshError(f"unknown target(s) {', '.join(unknown)} (known: {', '.join(list_targets())}, or auto)")
    targets, warnings = [], []
    for name in names:
        try:
            decision = _check_hub_model(settings.siglip_model, warn) if name == "siglip" else None
            goal = settings.face_goal if name != "siglip" else settings.image_goal
            try:
                targets.append(create_target(name, device=device, goal=goal, siglip_model=settings.siglip_model,
                                             auto=auto))
            except ModelUnavailable as e:
                if decision is not None and decision.download:
                    from .hub import download_failed

                    download_failed(e.reason)  # not again for a day
                raise
        except ModelUnavailable as e:
            if not auto:
                raise
            message = f"target {name!r} is not used: {e}"
            warnings.append(message)
            warn(message)
    if not targets:
        raise ModelUnavailable("any target", "no target could be loaded", "See `ghostmesh models`.")
    return targets, warnings


def _check_hub_model(model: str, warn: Callable[[str], None]):
    """Decide whether SigLIP can load without waiting on a network that is not there
    (:func:`ghostmesh_daemon.hub.decide`): raises :class:`ModelUnavailable` at once when it cannot;
    says so in one line before a first download."""
    from .hub import decide

    decision = decide(model)
    if not decision.usable:
        raise ModelUnavailable(
            f"siglip ({model})", decision.reason,
            f"Download it once with network access (`ghostmesh models --probe`, or python -c \"from transformers "
            f"import SiglipVisionModel; SiglipVisionModel.from_pretrained('{model}')\"), or point "
            "engine.siglip_model at a local folder holding config.json and model.safetensors.",
        )
    if decision.download:
        warn(f"SigLIP ({model}) is not on this machine yet: downloading it once from the Hugging Face hub "
             "(about 800 MB for the base model) into its cache; later runs use the cache")
    return decision


def _to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None].to(device)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))


class Protector:
    """Loads the models once; protects any number of photos."""

    def __init__(self, settings: EngineSettings, *, warn: Callable[[str], None] | None = None,
                 targets: Sequence[Target] | None = None) -> None:
        self.settings = settings
        self._warn = warn or (lambda m: print(m, file=sys.stderr))
        self.device = pick_device(settings.device)
        if targets is None:
            self.targets, self.warnings = load_targets(settings, self.device, self._warn)
        else:
            self.targets, self.warnings = list(targets), []
        self.lpips, self.lpips_source = load_lpips(self.device)
        if self.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, os.cpu_count() or 1))

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    def protect_file(
        self,
        src: Path,
        *,
        dest: Path | None = None,
        out_dir: Path | None = None,
        in_place: bool = False,
        suffix: str = ".ghost",
        strip_gps: bool = False,
        max_megapixels: float = 200.0,
        raw_output: str = "jpeg",
        keep_weak: bool = False,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
        settings: EngineSettings | None = None,
    ) -> ReportEntry:
        """Protect ``src`` and write the copy; returns its report entry (ok/weak/failed/skipped).

        The copy is written to a hidden temporary in the destination folder, measured there (decoded
        again) and judged (:func:`~ghostmesh_daemon.verdict.weak_reasons`); only a copy judged ok
        is renamed to the protected name (with ``in_place``: over ``src``). A weak copy is removed
        and reported (``output`` is ``None``; with ``in_place`` the file stays as it was), unless
        ``keep_weak``: the user asked for it, so it is published and the status stays ``weak``.

        ``settings`` overrides the engine settings for this photo only (the daemon's retry of a weak
        photo); the models stay the ones loaded.
        """
        src = Path(src)
        started = time.perf_counter()
        settings = settings or self.settings
        common = {"targets": self.target_names, "device": str(self.device), "preset": settings.preset,
                  "mode": settings.mode, "limits": settings.limits(), "warnings": list(self.warnings)}
        if not in_place and is_output(src, suffix):
            return ReportEntry.skipped(src, "already a Ghost Mesh output", **common)
        try:
            return self._protect(src, dest, out_dir, in_place, suffix, strip_gps, max_megapixels, raw_output,
                                 keep_weak, progress, should_stop, started, common, settings)
        except PhotoError as e:
            return ReportEntry.failed(e.path, e.reason, **common)
        except Exception as e:  # out of memory on a huge photo, a torch failure, a bug: the next photo goes on
            oom = isinstance(e, MemoryError) or "out of memory" in str(e).lower()
            reason = "out of memory" if oom else f"processing failed ({type(e).__name__}: {e})"
            log.warning("processing %s failed", src, exc_info=not oom)
            return ReportEntry.failed(src, reason, **common)

    def _protect(self, src, dest, out_dir, in_place, suffix, strip_gps, max_megapixels, raw_output, keep_weak,
                 progress, should_stop, started, common, settings: EngineSettings) -> ReportEntry:
        photo = read_photo(src, max_megapixels=max_megapixels, raw_output=raw_output)
        if in_place:
            final = src
        else:
            final = Path(dest) if dest is not None else output_path(src, out_dir=out_dir, suffix=suffix,
                                                                    raw_output=raw_output)
            _check_destination(photo, final, suffix)  # before minutes of work, not after
        faces = detect_faces(_to_uint8(photo.rgb))
        if not faces and not self._pushes_image(settings):
            entry = ReportEntry.skipped(src, NO_FACE_REASON, **common)
            entry.faces = 0
            entry.seconds = round(time.perf_counter() - started, 3)
            return entry
        x = _to_tensor(photo.rgb, self.device)
        encoding = photo.jpeg_encoding()
        outcome = protect_image(x, faces, self.targets, self.lpips, settings, progress=progress,
                                should_stop=should_stop, codec=JpegCodec.from_pillow(*encoding) if encoding else None)
        if outcome.interrupted:
            return ReportEntry.skipped(src, "stopped before it finished; nothing written", **common)
        protected = outcome.image[0].permute(1, 2, 0).cpu().numpy()
        candidate = temp_name(final)
        try:
            notes = write_photo(photo, protected, candidate, strip_gps=strip_gps)
            entry = self._measure(photo.rgb, read_photo(candidate).rgb, faces, common, settings)
            entry = apply_verdict(entry, settings)
            publish = entry.status == "ok" or keep_weak
            if publish:
                _publish(candidate, final, replace=in_place, suffix=suffix)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(candidate)
        entry.input = str(src)
        entry.output = str(final) if publish else None
        entry.max_delta = round(outcome.max_delta, 5)
        entry.max_flow_px = round(outcome.max_flow_px, 3)
        entry.notes = notes
        if entry.status == "weak":
            entry.notes.append("weak: written at your request (keep_weak)" if publish else
                               "weak: the file was left as it was" if in_place else "weak: nothing written")
        entry.seconds = round(time.perf_counter() - started, 3)
        entry.steps = outcome.steps
        return entry

    def _pushes_image(self, settings: EngineSettings) -> bool:
        """Whether a target that works on the whole photo (SigLIP) is pushed: it protects a photo
        without faces; face targets alone have nothing to do there."""
        return any(t.info.kind != "face" and settings.weight_of(t.name) > 0 for t in self.targets)

    def verify(self, original: Path, protected: Path, *, max_megapixels: float = 200.0) -> ReportEntry:
        """The report's numbers for an existing pair of files (``ghostmesh verify``), and the same
        verdict ``protect`` gives: status ``weak`` with the reasons when the copy fails it."""
        common = {"targets": self.target_names, "device": str(self.device), "preset": self.settings.preset,
                  "mode": self.settings.mode, "limits": self.settings.limits(), "warnings": list(self.warnings)}
        try:
            a = read_photo(Path(original), max_megapixels=max_megapixels)
            b = read_photo(Path(protected), max_megapixels=max_megapixels)
            if a.rgb.shape != b.rgb.shape:
                raise PhotoError(protected, f"size {b.rgb.shape[1]}x{b.rgb.shape[0]} differs from the original's "
                                            f"{a.rgb.shape[1]}x{a.rgb.shape[0]}")
            faces = detect_faces(_to_uint8(a.rgb))
            entry = self._measure(a.rgb, b.rgb, faces, common, self.settings)
        except PhotoError as e:
            return ReportEntry.failed(e.path, e.reason, **common)
        entry.input, entry.output = str(original), str(protected)
        if not faces and not self._pushes_image(self.settings):
            entry.status, entry.reason = "skipped", NO_FACE_REASON
        else:
            apply_verdict(entry, self.settings)
        entry.notes.append(f"largest pixel difference {float(np.abs(a.rgb - b.rgb).max()):.4f} "
                           "(noise and warp limits are only known to the optimizer)")
        return entry

    def _measure(self, original: np.ndarray, decoded: np.ndarray, faces, common, settings: EngineSettings) -> ReportEntry:
        """Numbers for the report, measured on the file as written (decoded again), not on floats.

        Returns an ``ok`` entry with every figure; :func:`~ghostmesh_daemon.verdict.apply_verdict`
        decides whether it is weak.
        """
        x, y = _to_tensor(original, self.device), _to_tensor(decoded, self.device)
        ev = evaluate(x, y, faces, self.targets, self.lpips, settings)
        infos = {t.name: t.info for t in self.targets}
        results = {
            name: TargetResult(name=name, cosine_before=o.cosine_before, cosine_after=o.cosine_after,
                               distance_after=o.distance_after, goal=o.goal, protected=o.protected,
                               kind=infos[name].kind,
                               threshold=infos[name].match_threshold if infos[name].kind == "face" else None)
            for name, o in ev.targets.items()
        }
        entry = ReportEntry(
            input="", output=None, status="ok", faces=len(faces), target_results=results,
            lpips=round(ev.lpips, 5), lpips_resolution=list(ev.lpips_resolution),
            face_lpips=[round(v, 5) for v in ev.face_lpips], ssim=round(ssim(x, y), 5), psnr=_finite(psnr(x, y)),
            engine_version=ENGINE_VERSION, measured=dict(getattr(ev, "method", None) or {}), **common,
        )
        entry.face_dlib_distance = distances_to_original(_to_uint8(original), _to_uint8(decoded), list(faces))
        unpushed = [n for n, r in results.items() if settings.weight_of(n) <= 0 and not all(r.protected)]
        if unpushed:
            entry.warnings.append(f"not every face/image reached its goal for {', '.join(unpushed)} "
                                  "(weight 0: measured, not pushed)")
        entry.robustness = self._after_upload(original, decoded, faces, settings)
        return entry

    def _after_upload(self, original: np.ndarray, decoded: np.ndarray, faces, settings: EngineSettings) -> dict:
        """The same numbers after what a platform does to an upload (JPEG 75, 1080 px long side).

        ``weak`` is dlib's own verdict: its detector finds a face in the uploaded copy that it still
        calls the same person as the original (distance < 0.6).
        """
        uploaded = upload_like(_to_uint8(decoded), UPLOAD_QUALITY, UPLOAD_LONG_SIDE)
        h, w = uploaded.shape[:2]
        sx, sy = w / original.shape[1], h / original.shape[0]
        reference = np.asarray(Image.fromarray(_to_uint8(original)).resize((w, h), Image.Resampling.LANCZOS))
        small_faces = [f.scaled(sx, sy) for f in faces]
        ev = evaluate(_to_tensor(reference / 255.0, self.device), _to_tensor(uploaded / 255.0, self.device),
                      small_faces, self.targets, self.lpips, settings)
        found = find_faces(uploaded)
        matched = []
        for f in faces:
            d = best_match(found, descriptor_at(_to_uint8(original), f.box))
            matched.append(None if d is None else round(d, 4))
        return {
            "transform": f"JPEG {UPLOAD_QUALITY}, long side {UPLOAD_LONG_SIDE} px",
            "size": [w, h],
            "targets": {n: {"cosine_after": o.cosine_after, "distance_after": o.distance_after, "protected": o.protected}
                        for n, o in ev.targets.items()},
            "face_dlib_distance": distances_to_original(reference, uploaded, small_faces),
            "dlib_detected_distance": matched,
            "dlib_same_person": [d is not None and d < MATCH_THRESHOLD for d in matched],
            "weak": any(d is not None and d < MATCH_THRESHOLD for d in matched),
        }


def _check_destination(photo, final: Path, suffix: str) -> None:
    """The protected name must be free or hold one of our outputs (which is replaced); never the
    original, never a file of the user's."""
    with contextlib.suppress(OSError):
        if final.resolve() == Path(photo.path).resolve():
            raise PhotoError(final, "refusing to overwrite the original")
    if not final.parent.is_dir():
        raise PhotoError(final.parent, "output folder does not exist")
    _check_not_theirs(final, suffix)


def _check_not_theirs(final: Path, suffix: str) -> None:
    if final.is_symlink() or (final.exists() and not (is_output(final, suffix) or is_output(final))):
        raise PhotoError(final, "already exists and is not a Ghost Mesh output; not overwritten")


def _publish(candidate: Path, final: Path, *, replace: bool, suffix: str) -> None:
    """Give the measured ``candidate`` the name ``final``, atomically. ``replace`` (in place): over
    the file there. Otherwise only over one of our own outputs; a file that is not ours, even one
    that appeared meanwhile, is never replaced."""
    if not replace:
        _check_not_theirs(final, suffix)
        replace = final.exists()
    try:
        with atomic_output(final, replace=replace) as tmp:
            os.replace(candidate, tmp)
    except FileExistsError:
        raise PhotoError(final, "appeared while writing and is not ours; not overwritten") from None
    except OSError as e:
        raise PhotoError(final, f"cannot write: {e.strerror or e}; no partial output left") from None


def _finite(value: float) -> float | None:
    """JSON has no infinity: identical pixels give PSNR ``null``."""
    return round(value, 3) if np.isfinite(value) else None
