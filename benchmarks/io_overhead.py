"""Photo I/O overhead: decode + encode time per megapixel, and output/original file size.

    python -m benchmarks.io_overhead            # writes benchmarks/results/io_overhead.{json,md}

For each photo: ``read_photo`` (decode, orientation, metadata) and ``write_photo`` (encode with the
original's JPEG tables / size-matched quality, metadata splice, fsync'd atomic write) are timed,
best of ``--repeat`` runs. The written pixels are the decoded ones plus a small perturbation
(uniform noise of +-1/255 and +-3/255, the order of magnitude Ghost Mesh adds), and, as a baseline,
unchanged. The size ratio is output bytes / original bytes.

Photos: the real camera files in ../shared/data/exif when present, and synthetic photos made
here (smooth gradients + texture + sensor-like noise, saved as a phone would: JPEG quality 90,
4:2:0), so the benchmark also runs without shared data.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ghostmesh_daemon.imaging import output_path, read_photo, write_photo

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "exif"
RESULTS = ROOT / "benchmarks" / "results"
NOISE = {"unchanged": 0.0, "noise 1/255": 1 / 255, "noise 3/255": 3 / 255}


def synthetic(path: Path, megapixels: float, fmt: str, seed: int = 0) -> Path:
    """A photo-like image: smooth shading, some texture, mild noise."""
    w = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    h = int(round(w * 3 / 4))
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([0.5 + 0.4 * np.sin(x / w * 3 + k) * np.cos(y / h * 2 - k) for k in (0, 1, 2)], -1)
    small = rng.uniform(0, 1, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
    texture = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC))
    img = 0.75 * base + 0.25 * texture.astype(np.float32) / 255 + rng.normal(0, 0.01, (h, w, 3)).astype(np.float32)
    im = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    if fmt == "JPEG":
        im.save(path, quality=90, subsampling=2)
    elif fmt == "WEBP":
        im.save(path, quality=80)
    elif fmt == "HEIF":
        im.save(path, quality=60)
    else:
        im.save(path)
    return path


def measure(src: Path, work: Path, repeat: int) -> list[dict]:
    rows = []
    decode = []
    photo = None
    for _ in range(repeat):
        t = time.perf_counter()
        photo = read_photo(src)
        decode.append(time.perf_counter() - t)
    assert photo is not None
    mp = photo.size[0] * photo.size[1] / 1e6
    rng = np.random.default_rng(0)
    for label, amount in NOISE.items():
        rgb = photo.rgb if amount == 0 else np.clip(
            photo.rgb + rng.uniform(-amount, amount, photo.rgb.shape).astype(np.float32), 0, 1)
        encode = []
        dest = output_path(src, out_dir=work)
        for _ in range(repeat):
            if dest.exists():
                dest.unlink()
            t = time.perf_counter()
            write_photo(photo, rgb, dest)
            encode.append(time.perf_counter() - t)
        rows.append({
            "file": src.name, "format": photo.format, "megapixels": round(mp, 2),
            "pixels": label, "decode_s": round(min(decode), 4), "encode_s": round(min(encode), 4),
            "seconds_per_mp": round((min(decode) + min(encode)) / mp, 4),
            "original_bytes": src.stat().st_size, "output_bytes": dest.stat().st_size,
            "size_ratio": round(dest.stat().st_size / src.stat().st_size, 4),
        })
        dest.unlink()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small synthetic photos only")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = []
        sizes = [1.0] if args.quick else [1.0, 4.0, 12.0]
        for mp in sizes:
            inputs.append(synthetic(work / f"synthetic_{mp:g}mp.jpg", mp, "JPEG"))
        if not args.quick:
            inputs.append(synthetic(work / "synthetic_4mp.png", 4.0, "PNG"))
            inputs.append(synthetic(work / "synthetic_4mp.webp", 4.0, "WEBP"))
            inputs.append(synthetic(work / "synthetic_4mp.tif", 4.0, "TIFF"))
            inputs.append(synthetic(work / "synthetic_4mp.heic", 4.0, "HEIF"))
            if SAMPLES.is_dir():
                # The real camera files of at least 0.25 MP (the 100-px ones time nothing useful).
                for p in sorted(SAMPLES.rglob("*")):
                    if p.is_file() and p.suffix.lower() in (".jpg", ".heic", ".heif", ".tiff"):
                        with Image.open(p) as im:
                            if im.size[0] * im.size[1] >= 250_000:
                                inputs.append(p)
        out_dir = work / "out"
        out_dir.mkdir()
        for src in inputs:
            repeat = 1 if src.suffix.lower() in (".heic", ".heif") else args.repeat
            rows += measure(src, out_dir, repeat)
            print(f"{src.name}: done", flush=True)
    jpeg = [r for r in rows if r["format"] == "JPEG"]
    summary = {
        "jpeg_seconds_per_mp_median": round(statistics.median(r["seconds_per_mp"] for r in jpeg if r["megapixels"] >= 1), 4)
        if any(r["megapixels"] >= 1 for r in jpeg) else None,
        "jpeg_size_ratio": {
            label: {"median": round(statistics.median(r["size_ratio"] for r in jpeg if r["pixels"] == label), 4),
                    "min": min(r["size_ratio"] for r in jpeg if r["pixels"] == label),
                    "max": max(r["size_ratio"] for r in jpeg if r["pixels"] == label)}
            for label in NOISE
        },
    }
    machine = {"cpu_count": __import__("os").cpu_count(), "machine": platform.machine(),
               "processor": platform.processor() or "unknown", "python": platform.python_version()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "io_overhead.json").write_text(json.dumps({"machine": machine, "summary": summary, "rows": rows},
                                                          indent=2) + "\n")
    lines = [
        f"Photo I/O overhead ({machine['cpu_count']}-core CPU, {machine['machine']}, Python {machine['python']}); "
        "seconds are the best of the runs, decode + encode (with metadata and fsync'd atomic write).",
        "",
        "| file | format | MP | pixels written | decode s | encode s | s/MP | size ratio |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['file']} | {r['format']} | {r['megapixels']} | {r['pixels']} | {r['decode_s']} | "
                     f"{r['encode_s']} | {r['seconds_per_mp']} | {r['size_ratio']} |")
    lines += ["", f"JPEG median s/MP (photos of 1 MP or more): {summary['jpeg_seconds_per_mp_median']}",
              "JPEG size ratio (output/original) by pixels written: "
              + "; ".join(f"{k}: median {v['median']} (min {v['min']}, max {v['max']})"
                          for k, v in summary["jpeg_size_ratio"].items())]
    (args.out / "io_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
