"""Video: temporal quality and throughput, measured side by side in one run.

1. Temporal quality on generated clips (raystyle.infer.synthetic: photos moved at known
   sub-pixel speeds, so the true flow and where it holds are known): a pan, a moving object
   over a moving background, a bar passing in front of a still photo (occlusion), a change of
   light, a hard scene cut, a still shot with sensor noise. Every frame is stylized once,
   then smoothed from the same stylized frames: per-frame (none), exponential blending with
   the previous output (no motion), motion-guided smoothing (raystyle's ``Smoother``) at
   several strengths, and motion-guided smoothing without its checks (the smoother before
   issue 28: DIS flow with its forward-backward check only) at the default strength.
   Columns (``raystyle.infer.video.temporal_figures``, 0-255 levels, lower is better except
   sharpness): ``flicker``, the warping error along the clip's TRUE flow over the pixels it
   says have a past (independent of the smoother's DIS flow and mask), and its ratio to
   per-frame; ``fidelity``, the mean |output - per-frame stylization| (carrying the first
   frame forward would score no flicker and a large fidelity cost); ``ghosting``, the same
   over the pixels with no past (occlusions, the cut frame); ``sharpness``; ``Farneback``,
   the flicker along Farneback's flow instead (what a real clip, without a true flow, is
   measured with; default strength and per-frame only). On the cut clip: ``cut frame``, mean
   |output - per-frame| at the cut frame, and ``after cut``, mean |output - the same method
   run from the cut frame alone| over the new shot: what is left of the previous shot.
   "At fidelity cost F" compares motion-guided smoothing with blending interpolated to the
   same fidelity cost (per-frame is blending at 0).
2. Throughput in frames/s at 480p and 720p: `raystyle stylize` (one process, ONNX Runtime on
   every core) vs `raystyle batch` (Ray Data, --workers actors x 1 thread, chunks of
   --chunk-frames + warm-up frames), both decoding, smoothing and encoding the same clip.
   The Ray figure is the whole job as a user sees it (actor start-up included; Ray itself
   already running).

    python bench/video.py                                  # random-init generator of the cpu preset
    python bench/video.py --style NAME --models-dir DIR    # an exported style
    python bench/video.py --sizes ''                       # temporal quality only
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

from raystyle.infer import synthetic as Synthetic  # noqa: E402
from raystyle.infer import video as V  # noqa: E402
from raystyle.infer.generator import Stylizer

SIZES = {"480p": (854, 480), "720p": (1280, 720)}


def big_photo(side: int) -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_CUBIC)


MODES = ("per-frame", "blend", "motion", "motion, no checks")


class UncheckedSmoother:
    """The motion-guided smoother as it was before its checks (issue 28), the row "motion, no
    checks": DIS flow and its forward-backward check only, no motion boundaries, no
    photometric check, no still pixels, no gain, no new shots."""

    def __init__(self, strength: float):
        self.strength, self.motion = strength, V.Motion()
        self.prev: tuple[np.ndarray, np.ndarray] | None = None  # (grey input, output)

    def __call__(self, frame: np.ndarray, stylized: np.ndarray) -> np.ndarray:
        g, out = V.grey(frame), stylized
        if self.prev is not None:
            map_x, map_y, mask = self.motion.between(self.prev[0], g)
            warped = V.Motion.warp(self.prev[1], map_x, map_y).astype(np.float32)
            w = (self.strength * mask)[..., None]
            out = np.clip(stylized.astype(np.float32) * (1 - w) + warped * w + 0.5, 0, 255).astype(np.uint8)
        self.prev = (g, out)
        return out


def smooth_all(clip: Synthetic.SyntheticClip, stylized: list[np.ndarray], mode: str, s: float,
               start: int = 0) -> list[np.ndarray]:
    """The clip's frames ``start..`` smoothed by ``mode`` at strength ``s`` from the same stylized frames."""
    if mode == "per-frame":
        return list(stylized[start:])
    smoother = UncheckedSmoother(s) if mode == "motion, no checks" else V.Smoother(s, mode)
    return [smoother(f, y) for f, y in zip(clip.frames[start:], stylized[start:], strict=True)]


def ghost_after_cut(clip: Synthetic.SyntheticClip, stylized: list[np.ndarray], outs: list[np.ndarray],
                    mode: str, s: float) -> dict:
    """After each cut: ``cut_vs_per_frame``, mean |out - per-frame stylization| at the cut frame
    (0 when the smoother starts again there), and ``ghost``, mean |out - the same method run
    from the cut frame alone| over the rest of the shot: what is left of the previous shot
    (0 when nothing is; smoothing within the new shot is not counted)."""
    cut_diff, ghost = [], []
    for start, stop in clip.shots()[1:]:
        fresh = smooth_all(clip, stylized[:stop], mode, s, start)
        cut_diff.append(float(np.abs(outs[start].astype(np.float32) - stylized[start]).mean()))
        ghost += [float(np.abs(outs[t].astype(np.float32) - fresh[t - start]).mean()) for t in range(start, stop)]
    return {"cut_vs_per_frame": round(float(np.mean(cut_diff)), 3), "ghost": round(float(np.mean(ghost)), 3),
            "ghost_max": round(float(np.max(ghost)), 3)}


def flicker_table(clip: Synthetic.SyntheticClip, stylizer: Stylizer, strengths: list[float],
                  default: float, reference: bool = True) -> dict:
    """Every mode and strength on one generated clip, measured along its true flow."""
    stylized: list[np.ndarray] = []
    for i in range(0, len(clip.frames), 4):
        stylized += stylizer.stylize_batch(clip.frames[i:i + 4])
    rows = []
    for mode in MODES:
        values = [0.0] if mode == "per-frame" else [default] if mode == "motion, no checks" else strengths
        for s in values:
            outs = smooth_all(clip, stylized, mode, s)
            fig = V.temporal_figures(clip.frames, stylized, outs, clip.flows)
            row = {"mode": mode, "smooth": s, **{k: round(v, 3) for k, v in fig.items()}}
            if reference and (mode == "per-frame" or s == default):  # the same, along Farneback's flow
                row["flicker_farneback"] = round(V.temporal_figures(clip.frames, stylized, outs)["flicker"], 3)
            if clip.cuts:
                row.update(ghost_after_cut(clip, stylized, outs, mode, s))
            rows.append(row)
    base = rows[0]["flicker"]
    for r in rows:
        r["vs_per_frame"] = round(r["flicker"] / base, 3) if base else None
    # blending's flicker interpolated at each motion row's fidelity cost (per-frame is blending at 0)
    blend = sorted((r for r in rows if r["mode"] in ("per-frame", "blend")), key=lambda r: r["fidelity"])
    xs, ys = [b["fidelity"] for b in blend], [b["flicker"] for b in blend]
    equal = []
    for r in (r for r in rows if r["mode"] == "motion"):
        if xs[0] <= r["fidelity"] <= xs[-1]:
            at = float(np.interp(r["fidelity"], xs, ys))
            equal.append({"smooth": r["smooth"], "fidelity": r["fidelity"], "motion_flicker": r["flicker"],
                          "blend_flicker_at_equal_fidelity": round(at, 3),
                          "motion_vs_blend": round(r["flicker"] / at, 3) if at else None})
    w, h = clip.size
    return {"kind": clip.kind, "frames": len(clip.frames), "size": [w, h], "cuts": list(clip.cuts),
            "rows": rows, "equal_fidelity": equal}


def print_table(t: dict, default: float) -> None:
    w, h = t["size"]
    print(f"{t['kind']} ({w}x{h}, {t['frames']} frames{', cut at ' + str(t['cuts'][0]) if t['cuts'] else ''}):")
    cut = bool(t["cuts"])
    print(f"  {'mode':<18} {'smooth':>6} {'flicker':>8} {'vs per-frame':>12} {'fidelity':>8} {'ghosting':>8}"
          f" {'sharpness':>9} {'Farneback':>9}" + (f" {'cut frame':>9} {'after cut':>9}" if cut else ""))
    for r in t["rows"]:
        ref = f"{r['flicker_farneback']:>9.2f}" if "flicker_farneback" in r else f"{'':>9}"
        ghost = f" {r['cut_vs_per_frame']:>9.2f} {r['ghost']:>9.2f}" if cut else ""
        print(f"  {r['mode']:<18} {r['smooth']:>6.2f} {r['flicker']:>8.2f} {r['vs_per_frame']:>12.2f} "
              f"{r['fidelity']:>8.2f} {r['ghosting']:>8.2f} {r['sharpness']:>9.2f} {ref}{ghost}")
    for e in t["equal_fidelity"]:
        mark = " (default)" if e["smooth"] == default else ""
        print(f"  at fidelity cost {e['fidelity']:.2f}: motion-guided {e['smooth']:.2f}{mark} {e['motion_flicker']:.2f} "
              f"vs blending {e['blend_flicker_at_equal_fidelity']:.2f} ({e['motion_vs_blend']:.2f}x)")


def summarise(tables: dict, default: float) -> dict:
    """Per clip, at the default strength: motion's flicker vs per-frame, vs blending at equal
    fidelity cost, and what is left of the previous shot after a cut (blend, motion)."""
    out = {}
    for kind, t in tables.items():
        motion = next(r for r in t["rows"] if r["mode"] == "motion" and r["smooth"] == default)
        blend = next(r for r in t["rows"] if r["mode"] == "blend" and r["smooth"] == default)
        eq = next((e for e in t["equal_fidelity"] if e["smooth"] == default), None)
        unchecked = next(r for r in t["rows"] if r["mode"] == "motion, no checks")
        r = {"vs_per_frame": motion["vs_per_frame"], "fidelity": motion["fidelity"],
             "motion_vs_blend": eq["motion_vs_blend"] if eq else None,
             "ghosting": motion["ghosting"], "ghosting_unchecked": unchecked["ghosting"]}
        if "ghost" in motion:
            r.update(ghost_motion=motion["ghost"], ghost_blend=blend["ghost"])
        out[kind] = r
    return out


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
    ap.add_argument("--flicker-size", default="320x240", help="W x H of the generated clips")
    ap.add_argument("--flicker-frames", type=int, default=48)
    ap.add_argument("--kinds", default=",".join(Synthetic.KINDS), help="generated clips (empty: none)")
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
        w, h = (int(x) for x in args.flicker_size.split("x"))
        figures: dict = {"style": style, "cores": os.cpu_count(), "default_smooth": V.DEFAULT_SMOOTH}
        strengths = [float(s) for s in args.strengths.split(",")]
        if V.DEFAULT_SMOOTH not in strengths:
            strengths = sorted([*strengths, V.DEFAULT_SMOOTH])
        kinds = [k for k in args.kinds.split(",") if k]
        stylizer = Stylizer(style, models_dir=models)
        figures["flicker"] = {}
        print(f"flicker along the true flow of generated clips ({w}x{h}, {args.flicker_frames} frames), style "
              f"{style}; flicker and fidelity cost in 0-255 levels, lower is better:")
        for kind in kinds:
            clip = Synthetic.make_clip(kind, (w, h), args.flicker_frames)
            table = flicker_table(clip, stylizer, strengths, V.DEFAULT_SMOOTH)
            figures["flicker"][kind] = table
            print_table(table, V.DEFAULT_SMOOTH)
        summary = summarise(figures["flicker"], V.DEFAULT_SMOOTH)
        figures["summary"] = summary
        print(f"at the default strength {V.DEFAULT_SMOOTH:g}:")
        print(f"  {'clip':<10} {'flicker vs per-frame':>20} {'vs blending at equal fidelity':>29} "
              f"{'ghosting (no checks / motion)':>29} {'after cut (blend / motion)':>26}")
        for kind, r in summary.items():
            ghost = f"{r['ghost_blend']:.2f} / {r['ghost_motion']:.2f}" if "ghost_motion" in r else "-"
            eq = f"{r['motion_vs_blend']:.2f}x" if r["motion_vs_blend"] is not None else "-"
            ghosting = f"{r['ghosting_unchecked']:.2f} / {r['ghosting']:.2f}"
            print(f"  {kind:<10} {r['vs_per_frame']:>19.2f}x {eq:>29} {ghosting:>29} {ghost:>26}")
        figures["throughput"] = {}
        photo = big_photo(2048)
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
