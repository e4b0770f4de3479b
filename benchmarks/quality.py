"""Independent quality measures at the photo's own resolution, and native-resolution contact sheets.

The engine optimizes LPIPS-AlexNet, so LPIPS-AlexNet alone cannot say a protected face looks the same:
an optimizer finds textures the measure it minimizes scores low. Each protected face is therefore also
checked with measures the engine never sees (LPIPS-VGG16, MS-SSIM, HaarPSI), every one of them on the
face's native crop (the chip's bounding box, the region the engine measures, never resized), and each
compared with a *noise reference*: the same native crop with uniform noise in [-4/255, 4/255] per pixel
and channel, quantized to 8 bits as a written file would be. A face is "no further from the original
than the noise" for a measure when its value is at least as good as the reference's.

Notes on the measures:

- LPIPS-VGG: LPIPS v0.1 with VGG16 (real weights, ``ghostmesh_daemon.weights.load_lpips(net="vgg")``).
- MS-SSIM: ``piq.multi_scale_ssim`` (Gaussian window 11, sigma 1.5, the paper's five scale weights). Five
  scales need a crop of at least 161 px on its short side; a smaller crop uses as many scales as fit
  (the first weights, renormalised), recorded as ``ms_ssim_scales``; under 11 px it is not measured.
- HaarPSI: ``piq.haarpsi`` at the crop's own resolution (``subsample=False``: the published method first
  halves the image, which is its model of a viewing distance, and would hide exactly the fine texture that
  shows at 100 %); needs 16 px.
- Large crops and whole photos are measured in tiles of at most 1024 px at native scale (LPIPS is a spatial
  mean, so the area-weighted mean of the tiles is the whole's value up to the tiles' borders).

    python -m benchmarks.quality ORIGINAL PROTECTED [ORIGINAL PROTECTED ...] [--name NAME] [--seed N]

writes ``benchmarks/results/NAME.json``, ``NAME.md`` and ``NAME_contact_sheet.jpg``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

#: The noise reference: uniform noise of this amplitude, per pixel and channel.
NOISE_AMPLITUDE = 4 / 255
#: Tiles of at most this many pixels a side for native-resolution LPIPS.
TILE = 1024
#: Measures the engine does not optimize, and the one it does.
UNOPTIMIZED = ("lpips_vgg", "ms_ssim", "haarpsi")
OPTIMIZED = ("lpips_alex",)
MEASURES = OPTIMIZED + UNOPTIMIZED
#: For these larger is better (similarity); for the LPIPS ones smaller is better (distance).
SIMILARITIES = ("ms_ssim", "haarpsi")
#: MS-SSIM's scale weights (Wang, Simoncelli & Bovik 2003), window 11.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_WINDOW = 11
HAARPSI_SCALES = 3
#: Contact sheets: a crop wider or taller than this shows a window of this size at 100 % instead.
SHEET_WINDOW = 640
#: |after - before| is multiplied by this in the difference panel.
DIFF_GAIN = 8


# --- inputs -------------------------------------------------------------------------------------

def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_tensor(rgb: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] from an (H, W, 3) uint8 array (or such a tensor, passed through)."""
    if isinstance(rgb, torch.Tensor):
        t = rgb.float()
    else:
        arr = np.asarray(rgb)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected (H, W, 3) uint8 RGB, got {arr.shape} {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255
    return t if device is None else t.to(device)


def read_uint8(path: Path) -> np.ndarray:
    """A photo decoded as the pipeline decodes it (upright, own colour space), as (H, W, 3) uint8."""
    from ghostmesh_daemon.imaging import read_photo

    return np.ascontiguousarray((read_photo(Path(path)).rgb * 255).round().clip(0, 255).astype(np.uint8))


# --- face crops -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FaceCrop:
    """One face's native-resolution crop, before and after, and where it lies (x0, y0, x1, y1; x1/y1 exclusive)."""

    index: int
    box: tuple[int, int, int, int]
    face_box: tuple[float, float, float, float]  # the detector's box, for centring windows
    original: np.ndarray  # (h, w, 3) uint8
    protected: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.box[2] - self.box[0], self.box[3] - self.box[1]


def face_crops(original: np.ndarray, protected: np.ndarray, faces=None) -> list[FaceCrop]:
    """The native crop of every face: the bounding box of its dlib chip (the region the engine measures).

    ``faces`` are engine ``Face`` records; None finds them on the original (dlib HOG + 5 points). The
    crops are slices of the photos at their own resolution: nothing is ever resized.
    """
    from ghostmesh_daemon.engine.geometry import bounding_box

    if original.shape != protected.shape:
        raise ValueError(f"original {original.shape} and protected {protected.shape} differ in size")
    if faces is None:
        from ghostmesh_daemon.faces import detect_faces

        faces = detect_faces(original)
    h, w = original.shape[:2]
    crops = []
    for i, face in enumerate(faces):
        x0, y0, x1, y1 = bounding_box(face.chip_corners(), h, w)
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        crops.append(FaceCrop(i, (x0, y0, x1, y1), tuple(float(v) for v in face.box),
                              np.ascontiguousarray(original[y0:y1, x0:x1]), np.ascontiguousarray(protected[y0:y1, x0:x1])))
    return crops


# --- models ---------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _lpips(net: str, device: str):
    from ghostmesh_daemon.weights import load_lpips

    return load_lpips(device, net=net)[0]


def lpips_model(net: str = "alex", device: torch.device | str | None = None):
    """LPIPS v0.1 ("alex" or "vgg"), real weights, loaded once per process and device."""
    return _lpips(net, str(torch.device(device) if device is not None else default_device()))


@torch.no_grad()
def lpips_many(model, ref: torch.Tensor, others: list[torch.Tensor], tile: int = TILE) -> list[float]:
    """LPIPS(ref, o) for each o, at native scale: tiles of at most ``tile`` px, area-weighted mean.

    The reference's features are computed once per tile and shared (the engine's
    :class:`~ghostmesh_daemon.engine.losses.ReferenceLPIPS`, the same numbers as
    ``model(ref, o, normalize=True)`` on each tile).
    """
    from ghostmesh_daemon.engine.losses import ReferenceLPIPS, tiles

    device = next(model.parameters()).device
    h, w = ref.shape[-2:]
    sums = [0.0] * len(others)
    for y0, y1, x0, x1 in tiles(h, w, tile):
        measure = ReferenceLPIPS(model, ref[..., y0:y1, x0:x1].to(device))
        for k, o in enumerate(others):
            sums[k] += float(measure(o[..., y0:y1, x0:x1].to(device))) * (y1 - y0) * (x1 - x0)
    return [s / (h * w) for s in sums]


def whole_photo_lpips_native(a, b, tile: int = TILE, device: torch.device | str | None = None) -> float:
    """LPIPS-AlexNet of two whole photos at native scale: tiles of at most ``tile`` px, area-weighted mean
    (the engine's own native measure, :func:`~ghostmesh_daemon.engine.losses.tiled_lpips`).

    ``a``/``b``: (H, W, 3) uint8 arrays or (1, 3, H, W) tensors in [0, 1].
    """
    from ghostmesh_daemon.engine.losses import tiled_lpips

    model = lpips_model("alex", device)
    target = next(model.parameters()).device
    return tiled_lpips(model, to_tensor(a).to(target), to_tensor(b).to(target), tile)


def ms_ssim_scales(h: int, w: int) -> int:
    """How many MS-SSIM scales fit an h x w crop (5 at most; 0 when not even one does)."""
    side = min(h, w)
    k = 0
    while k < len(MS_SSIM_WEIGHTS) and side >= (MS_SSIM_WINDOW - 1) * 2 ** k + 1:
        k += 1
    return k


def _ms_ssim(a: torch.Tensor, b: torch.Tensor) -> tuple[float | None, int]:
    import piq

    scales = ms_ssim_scales(*a.shape[-2:])
    if scales == 0:
        return None, 0
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=a.dtype, device=a.device)
    value = piq.multi_scale_ssim(a, b, data_range=1.0, kernel_size=MS_SSIM_WINDOW, scale_weights=weights)
    return float(value), scales


def _haarpsi(a: torch.Tensor, b: torch.Tensor) -> float | None:
    import piq

    if min(a.shape[-2:]) < 2 ** (HAARPSI_SCALES + 1):
        return None
    return float(piq.haarpsi(a, b, data_range=1.0, scales=HAARPSI_SCALES, subsample=False))


@torch.no_grad()
def _measure_many(a: torch.Tensor, others: list[torch.Tensor], device=None) -> list[dict]:
    a = a.clamp(0, 1)
    others = [o.clamp(0, 1) for o in others]
    alex = lpips_many(lpips_model("alex", device), a, others)
    vgg = lpips_many(lpips_model("vgg", device), a, others)
    out = []
    for k, o in enumerate(others):
        ms, scales = _ms_ssim(a, o)
        out.append({"lpips_alex": alex[k], "lpips_vgg": vgg[k], "ms_ssim": ms, "ms_ssim_scales": scales,
                    "haarpsi": _haarpsi(a, o)})
    return out


def independent_measures(a: torch.Tensor, b: torch.Tensor, device=None) -> dict:
    """Every measure of ``b`` against ``a`` (float tensors (1, 3, h, w) in [0, 1]) at their own resolution.

    Keys: ``lpips_alex`` (the engine's own measure, for reference), ``lpips_vgg``, ``ms_ssim`` (with
    ``ms_ssim_scales``: fewer than 5 on a crop under 161 px), ``haarpsi``; None where a crop is too small.
    """
    return _measure_many(a, [b], device)[0]


def noise_crop(a: torch.Tensor, seed: int, amplitude: float = NOISE_AMPLITUDE) -> torch.Tensor:
    """``a`` plus uniform noise in [-amplitude, amplitude] per pixel and channel, clipped, quantized to 8 bits."""
    g = torch.Generator().manual_seed(int(seed))
    noise = (torch.rand(a.shape, generator=g, dtype=torch.float32) * 2 - 1) * amplitude
    return ((a.float().cpu() + noise).clamp(0, 1) * 255).round().div(255).to(a.device)


def noise_reference(a: torch.Tensor, seed: int, device=None) -> dict:
    """The measures of the noise reference (``noise_crop(a, seed)``) against ``a``."""
    return independent_measures(a, noise_crop(a, seed), device)


def within_reference(name: str, value: float | None, reference: float | None) -> bool | None:
    """Is ``value`` no further from the original than the noise reference by measure ``name``?"""
    if value is None or reference is None:
        return None
    return value >= reference if name in SIMILARITIES else value <= reference


def measure_faces(original: np.ndarray, protected: np.ndarray, faces=None, seed: int = 0,
                  crops: list[FaceCrop] | None = None, device=None) -> list[dict]:
    """Per face: crop box and size, every measure of protected against original, the noise reference's
    (noise seeded with ``seed + face index``), and for each measure whether the face is within the reference."""
    rows = []
    for crop in crops if crops is not None else face_crops(original, protected, faces):
        a, b = to_tensor(crop.original), to_tensor(crop.protected)
        measured, ref = _measure_many(a, [b, noise_crop(a, seed + crop.index)], device)
        within = {m: within_reference(m, measured[m], ref[m]) for m in MEASURES}
        unopt = [within[m] for m in UNOPTIMIZED if within[m] is not None]
        rows.append({
            "face": crop.index, "box": list(crop.box), "width": crop.size[0], "height": crop.size[1],
            **{m: measured[m] for m in MEASURES}, "ms_ssim_scales": measured["ms_ssim_scales"],
            "noise_reference": {m: ref[m] for m in MEASURES},
            "within_noise": within,
            "unoptimized_within": sum(unopt), "unoptimized_measured": len(unopt),
            "two_unoptimized_within": sum(unopt) >= 2,
        })
    return rows


def measure_photo(label: str, original: np.ndarray, protected: np.ndarray, faces=None, seed: int = 0,
                  device=None) -> dict:
    """Whole-photo native LPIPS-AlexNet and every face's measures with its noise reference."""
    crops = face_crops(original, protected, faces)
    return {
        "photo": label, "width": original.shape[1], "height": original.shape[0],
        "whole_photo_lpips_native": whole_photo_lpips_native(original, protected, device=device),
        "faces": measure_faces(original, protected, seed=seed, crops=crops, device=device),
    }


def summarize(photos: list[dict]) -> dict:
    """Fractions of faces within the noise reference per measure and for two unoptimized measures at once,
    face LPIPS-AlexNet median/max, whole-photo native LPIPS median/max."""
    faces = [f for p in photos for f in p["faces"]]
    out: dict = {"photos": len(photos), "faces": len(faces)}
    for m in MEASURES:
        judged = [f["within_noise"][m] for f in faces if f["within_noise"][m] is not None]
        out[f"{m}_within_noise"] = (sum(judged) / len(judged)) if judged else None
    out["two_unoptimized_within_noise"] = (sum(f["two_unoptimized_within"] for f in faces) / len(faces)) if faces else None
    alex = [f["lpips_alex"] for f in faces]
    out["median_face_lpips_alex_native"] = statistics.median(alex) if alex else None
    out["max_face_lpips_alex_native"] = max(alex) if alex else None
    whole = [p["whole_photo_lpips_native"] for p in photos if p.get("whole_photo_lpips_native") is not None]
    out["median_whole_photo_lpips_native"] = statistics.median(whole) if whole else None
    out["max_whole_photo_lpips_native"] = max(whole) if whole else None
    out["small_crops_ms_ssim"] = [f"{p['photo']}#{f['face']}: {f['ms_ssim_scales']} scales" for p in photos
                                  for f in p["faces"] if f["ms_ssim_scales"] < len(MS_SSIM_WEIGHTS)]
    return out


def _fmt(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f} %"


def summary_lines(summary: dict) -> list[str]:
    """Markdown bullet lines: the fractions of faces within the noise reference, native LPIPS median/max."""
    lines = [
        f"- Faces no further from the original than the ±4/255 noise reference (native crops, {summary['faces']} faces): "
        f"LPIPS-VGG {_pct(summary['lpips_vgg_within_noise'])}, MS-SSIM {_pct(summary['ms_ssim_within_noise'])}, "
        f"HaarPSI {_pct(summary['haarpsi_within_noise'])}; at least two unoptimized measures at once "
        f"{_pct(summary['two_unoptimized_within_noise'])}; LPIPS-AlexNet (optimized, for reference) "
        f"{_pct(summary['lpips_alex_within_noise'])}",
        f"- Face LPIPS-AlexNet at native resolution: median {_fmt(summary['median_face_lpips_alex_native'])}, "
        f"max {_fmt(summary['max_face_lpips_alex_native'])}; whole-photo LPIPS-AlexNet at native resolution "
        f"(tiles of at most {TILE} px): median {_fmt(summary['median_whole_photo_lpips_native'])}, "
        f"max {_fmt(summary['max_whole_photo_lpips_native'])}",
    ]
    if summary["small_crops_ms_ssim"]:
        lines.append(f"- MS-SSIM with fewer than 5 scales (crop under 161 px): {', '.join(summary['small_crops_ms_ssim'])}")
    return lines


def table_lines(photos: list[dict], whole_photo_table: bool = True) -> list[str]:
    """Markdown: one row per face (each value beside its noise reference), then one row per photo."""
    from benchmarks.common import md_table

    mark = lambda b: "-" if b is None else ("yes" if b else "NO")
    lines = ["Each value, then the noise reference's for the same crop in parentheses; 'within' says whether the "
              "face is no further than the reference by that measure (alex / vgg / ms-ssim / haarpsi).", ""]
    rows = []
    for p in photos:
        for f in p["faces"]:
            nr = f["noise_reference"]
            ms = f"{_fmt(f['ms_ssim'])} ({_fmt(nr['ms_ssim'])})" + (
                f" [{f['ms_ssim_scales']} scales]" if f["ms_ssim_scales"] < len(MS_SSIM_WEIGHTS) else "")
            rows.append([p["photo"], f["face"], f"{f['width']}x{f['height']}",
                         f"{_fmt(f['lpips_alex'])} ({_fmt(nr['lpips_alex'])})",
                         f"{_fmt(f['lpips_vgg'])} ({_fmt(nr['lpips_vgg'])})", ms,
                         f"{_fmt(f['haarpsi'])} ({_fmt(nr['haarpsi'])})",
                         " / ".join(mark(f["within_noise"][m]) for m in MEASURES),
                         "yes" if f["two_unoptimized_within"] else "NO"])
    lines.append(md_table(["photo", "face", "crop px", "LPIPS-alex (noise)", "LPIPS-VGG (noise)", "MS-SSIM (noise)",
                           "HaarPSI (noise)", "within noise: alex / vgg / ms-ssim / haarpsi", ">= 2 unoptimized"], rows))
    if whole_photo_table:
        lines += ["", md_table(["photo", "size", "faces", "whole-photo LPIPS-alex, native"],
                               [[p["photo"], f"{p['width']}x{p['height']}", len(p["faces"]), _fmt(p["whole_photo_lpips_native"])]
                                for p in photos])]
    return lines


def markdown_lines(photos: list[dict], summary: dict) -> list[str]:
    """The summary lines, then the per-face and per-photo tables."""
    return [*summary_lines(summary), "", *table_lines(photos)]


# --- contact sheets -------------------------------------------------------------------------------

def _window(crop: FaceCrop, limit: int = SHEET_WINDOW) -> tuple[int, int, int, int]:
    """The part of the crop shown (x0, y0, x1, y1 in crop pixels): all of it, or a ``limit`` px window
    centred on the face when the crop is larger (still at 100 %)."""
    w, h = crop.size
    if w <= limit and h <= limit:
        return 0, 0, w, h
    fx = (crop.face_box[0] + crop.face_box[2]) / 2 - crop.box[0]
    fy = (crop.face_box[1] + crop.face_box[3]) / 2 - crop.box[1]
    ww, wh = min(w, limit), min(h, limit)
    x0 = int(min(max(0, round(fx - ww / 2)), w - ww))
    y0 = int(min(max(0, round(fy - wh / 2)), h - wh))
    return x0, y0, x0 + ww, y0 + wh


def native_contact_sheet(rows, dest: Path, diff: bool = True, gap: int = 8, quality: int = 92) -> list[dict]:
    """One strip per face of every photo: before | after [| |after - before| x 8], at 100 % (never scaled).

    ``rows``: (label, original uint8, protected uint8, faces or None to detect them). A crop larger than
    640 px shows a 640 px window centred on the face instead of being scaled. Saved as JPEG (quality 92,
    4:4:4). Returns each strip's layout: label, face, the crop box in the photo, the shown window
    (x0, y0, x1, y1 in the photo) and each panel's (x, y, w, h) in the sheet.
    """
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = probe.textbbox((0, 0), "Ag", font=font)[3] + 4
    strips, layout = [], []
    for label, original, protected, faces in rows:
        crops = face_crops(original, protected, faces)
        if not crops:
            continue
        for crop in crops:
            wx0, wy0, wx1, wy1 = _window(crop)
            before = crop.original[wy0:wy1, wx0:wx1]
            after = crop.protected[wy0:wy1, wx0:wx1]
            panels = [before, after]
            if diff:
                d = np.abs(after.astype(np.int16) - before.astype(np.int16)) * DIFF_GAIN
                panels.append(d.clip(0, 255).astype(np.uint8))
            ph, pw = before.shape[:2]
            cw, ch = crop.size
            shown = "" if (pw, ph) == (cw, ch) else f", {pw}x{ph} window"
            text = (f"{label}  face {crop.index}  ({cw}x{ch} px at 100 %{shown})  before | after"
                    + (f" | |diff| x{DIFF_GAIN}" if diff else ""))
            width = max(len(panels) * pw + (len(panels) - 1) * gap, int(probe.textlength(text, font=font)) + 4)
            strip = Image.new("RGB", (width, text_h + ph), "white")
            ImageDraw.Draw(strip).text((2, 2), text, fill="black", font=font)
            boxes = []
            for k, panel in enumerate(panels):
                x = k * (pw + gap)
                strip.paste(Image.fromarray(np.ascontiguousarray(panel)), (x, text_h))
                boxes.append((x, text_h, pw, ph))
            strips.append(strip)
            x0, y0 = crop.box[:2]
            layout.append({"label": label, "face": crop.index, "box": crop.box,
                           "window": (x0 + wx0, y0 + wy0, x0 + wx1, y0 + wy1),
                           "panels": dict(zip(("before", "after", "diff"), boxes))})
    if not strips:
        return []
    sheet = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips) + gap * (len(strips) - 1)), "white")
    y = 0
    for strip, item in zip(strips, layout):
        sheet.paste(strip, (0, y))
        item["panels"] = {k: (px, py + y, pw, ph) for k, (px, py, pw, ph) in item["panels"].items()}
        y += strip.height + gap
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(dest, format="JPEG", quality=quality, subsampling=0)
    return layout


# --- command line ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure protected photos against their originals at native "
                                     "resolution, with a noise reference per face, and draw a contact sheet.")
    parser.add_argument("paths", nargs="+", metavar="ORIGINAL PROTECTED", help="pairs of files")
    parser.add_argument("--name", default="quality", help="results file name (benchmarks/results/NAME.*)")
    parser.add_argument("--seed", type=int, default=0, help="noise reference seed (plus the face's index)")
    args = parser.parse_args(argv)
    if len(args.paths) % 2:
        parser.error("expected pairs: ORIGINAL PROTECTED [ORIGINAL PROTECTED ...]")
    from benchmarks.common import RESULTS, git_rev, machine, write_results

    photos, sheet_rows = [], []
    for orig_path, prot_path in zip(args.paths[::2], args.paths[1::2]):
        original, protected = read_uint8(Path(orig_path)), read_uint8(Path(prot_path))
        label = Path(prot_path).name
        from ghostmesh_daemon.faces import detect_faces

        faces = detect_faces(original)
        photo = measure_photo(label, original, protected, faces, seed=args.seed)
        photo.update(original=str(orig_path), protected=str(prot_path))
        photos.append(photo)
        sheet_rows.append((label, original, protected, faces))
        print(f"{label}: {len(photo['faces'])} face(s), whole-photo LPIPS {photo['whole_photo_lpips_native']:.4f}", flush=True)
    summary = summarize(photos)
    data = {"name": args.name, "machine": machine(), "revision": git_rev(), "noise_amplitude": "4/255",
            "seed": args.seed, "summary": summary, "photos": photos}
    md = [f"# Quality at native resolution ({args.name})", "",
          f"Machine: {data['machine']}. Revision {data['revision']}. Noise reference: uniform ±4/255 per pixel and "
          f"channel, 8-bit, seed {args.seed} + face index. Measures the engine does not optimize: LPIPS-VGG, MS-SSIM, "
          "HaarPSI (piq, no subsampling). Contact sheet: " f"{args.name}_contact_sheet.jpg (100 %, never scaled).", "",
          *markdown_lines(photos, summary)]
    write_results(args.name, data, "\n".join(md))
    native_contact_sheet(sheet_rows, RESULTS / f"{args.name}_contact_sheet.jpg")
    print("\n".join(md[4:6]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
