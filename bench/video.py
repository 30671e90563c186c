"""Video: flicker and throughput, measured side by side in one run.

1. Flicker on a panning clip (a window sliding across a photo at a known sub-pixel speed, so
   the motion is real and known): every frame is stylized once, then smoothed three ways from
   the same stylized frames: per-frame (none), exponential blending with the previous output
   (no motion) and motion-guided smoothing (DIS flow, forward-backward check), at several
   strengths. The flicker figure is the warping error (mean |out_t - warp(out_t-1)| over
   reliable pixels, 0-255 levels, along the input's own flow, the same for every method);
   sharpness is the mean gradient magnitude. "At equal sharpness" compares motion-guided
   smoothing with blending interpolated to the same sharpness.
2. Throughput in frames/s at 480p and 720p: `raystyle stylize` (one process, ONNX Runtime on
   every core) vs `raystyle batch` (Ray Data, --workers actors x 1 thread, chunks of
   --chunk-frames + warm-up frames), both decoding, smoothing and encoding the same clip.
   The Ray figure is the whole job as a user sees it (actor start-up included; Ray itself
   already running).

    python bench/video.py                                  # random-init generator of the cpu preset
    python bench/video.py --style NAME --models-dir DIR    # an exported style
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch import random_style  # noqa: E402  (bench/batch.py: a random-init style)

from raystyle.infer import video as V  # noqa: E402
from raystyle.infer.generator import Stylizer

SIZES = {"480p": (854, 480), "720p": (1280, 720)}


def big_photo(side: int) -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_CUBIC)


def flicker_table(clip: Path, stylizer: Stylizer, strengths: list[float]) -> dict:
    info, frames = V.read_video(clip)
    stylized = []
    for i in range(0, len(frames), 4):
        stylized += stylizer.stylize_batch(frames[i:i + 4])
    rows = []
    for mode, values in (("per-frame", [0.0]), ("blend", strengths), ("motion", strengths)):
        for s in values:
            smoother = V.Smoother(s, "motion" if mode == "per-frame" else mode)
            outs = [smoother(f, y) for f, y in zip(frames, stylized, strict=True)]
            error, sharp = V.flicker(frames, outs)
            rows.append({"mode": mode, "smooth": s, "flicker": round(error, 3), "sharpness": round(sharp, 3)})
    base = rows[0]["flicker"]
    for r in rows:
        r["vs_per_frame"] = round(r["flicker"] / base, 3)
    blend = sorted((r for r in rows if r["mode"] == "blend"), key=lambda r: r["sharpness"])
    equal = []
    for r in (r for r in rows if r["mode"] == "motion"):
        xs = [b["sharpness"] for b in blend]
        if xs[0] <= r["sharpness"] <= xs[-1]:
            at = float(np.interp(r["sharpness"], xs, [b["flicker"] for b in blend]))
            equal.append({"smooth": r["smooth"], "sharpness": r["sharpness"], "motion_flicker": r["flicker"],
                          "blend_flicker_at_equal_sharpness": round(at, 3)})
    return {"frames": info.frames, "size": list(info.size), "rows": rows, "equal_sharpness": equal}


def throughput(clip: Path, style: str, models: Path, workers: int, chunk: int, work: Path) -> dict:
    from raystyle.batch.images import run_batch

    stylizer = Stylizer(style, models_dir=models)  # every core
    start = time.perf_counter()
    single = V.stylize_video(clip, work / "single.mp4",  # the tile raystyle stylize uses for video
                            lambda frames: stylizer.stylize_batch(frames, tile=V.VIDEO_TILE))
    t_single = time.perf_counter() - start
    folder = work / f"in_{clip.stem}"  # this clip alone
    folder.mkdir(exist_ok=True)
    shutil.copy(clip, folder / clip.name)
    out = work / f"out_{clip.stem}"
    shutil.rmtree(out, ignore_errors=True)
    result = run_batch(folder, out, style, models_dir=models, workers=workers, chunk_frames=chunk,
                       echo=lambda line: print("   ", line))
    assert result.frames == single.frames and not result.errors, result
    return {"frames": single.frames, "single_s": round(t_single, 2),
            "single_fps": round(single.frames / t_single, 2), "ray_s": round(result.seconds, 2),
            "ray_fps": round(result.frames / result.seconds, 2),
            "ray_vs_single": round(t_single / result.seconds, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--style", help="registry style (default: a random-init generator of --preset)")
    ap.add_argument("--models-dir", type=Path)
    ap.add_argument("--preset", default="cpu", help="CycleGAN preset of the random-init generator")
    ap.add_argument("--flicker-size", default="320x240", help="W x H of the flicker clip")
    ap.add_argument("--flicker-frames", type=int, default=48)
    ap.add_argument("--strengths", default="0.3,0.5,0.6,0.8")
    ap.add_argument("--sizes", default="480p,720p", help="throughput clips (480p, 720p; empty: none)")
    ap.add_argument("--frames", type=int, default=48, help="frames per throughput clip")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-frames", type=int, default=24)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="raystyle-bench-video-"))
    try:
        models, style = args.models_dir, args.style
        if style is None:
            models, style = random_style(work, args.preset), "bench"
        photo = big_photo(2048)
        w, h = (int(x) for x in args.flicker_size.split("x"))
        clip = work / "pan.mp4"
        V.write_pan_clip(clip, photo, frames=args.flicker_frames, size=(w, h), speed=(1.5, 0.5))
        figures: dict = {"style": style, "cores": os.cpu_count()}
        table = flicker_table(clip, Stylizer(style, models_dir=models),
                              [float(s) for s in args.strengths.split(",")])
        figures["flicker"] = table
        print(f"flicker on a {w}x{h} pan of {table['frames']} frames (1.5, 0.5 px/frame), style {style}:")
        print(f"  {'mode':<10} {'smooth':>6} {'flicker':>8} {'vs per-frame':>12} {'sharpness':>9}")
        for r in table["rows"]:
            print(f"  {r['mode']:<10} {r['smooth']:>6.2f} {r['flicker']:>8.2f} {r['vs_per_frame']:>12.2f} "
                  f"{r['sharpness']:>9.2f}")
        for e in table["equal_sharpness"]:
            print(f"  at sharpness {e['sharpness']:.2f}: motion-guided (smooth {e['smooth']:.2f}) "
                  f"{e['motion_flicker']:.2f} vs blending {e['blend_flicker_at_equal_sharpness']:.2f}")
        figures["throughput"] = {}
        for name in [s for s in args.sizes.split(",") if s]:
            w, h = SIZES[name]
            clip = work / f"clip_{name}.mp4"
            V.write_pan_clip(clip, photo, frames=args.frames, size=(w, h), speed=(2.0, 0.5))
            print(f"throughput at {name} ({w}x{h}, {args.frames} frames):")
            t = throughput(clip, style, models, args.workers, args.chunk_frames, work)
            figures["throughput"][name] = t
            print(f"  single process {t['single_fps']:.2f} frames/s ({t['single_s']} s); Ray Data "
                  f"{args.workers} workers {t['ray_fps']:.2f} frames/s ({t['ray_s']} s); "
                  f"ratio {t['ray_vs_single']:.2f}x")
        if args.out:
            args.out.write_text(json.dumps(figures, indent=2))
            print(f"figures: {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
