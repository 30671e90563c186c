"""`raystyle stylize`: images, videos, folders or stdin through a registry style with ONNX Runtime.

The options and the lines printed live here; what the inputs mean, where each result goes and
how a style of any kind runs is raystyle.infer.files."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from raystyle.cli.common import add_preserve_color_arg, preserve_color_of
from raystyle.errors import RaystyleError


def add_parser(sub) -> None:
    """Register `raystyle stylize` on an argparse subparsers object."""
    p = sub.add_parser("stylize", help="stylize images, videos, folders or stdin with a style",
                       description="Stylize images and videos with ONNX Runtime. INPUT is an image, "
                       "a video (.mp4, .mov, .mkv, .webm, .avi, .m4v), a folder (searched "
                       "recursively) or - for stdin; -o - writes to stdout. A video keeps its frame "
                       "rate, duration and audio and is written as H.264 (.mp4 unless -o names .mov "
                       "or .mkv), with motion-guided temporal smoothing (--smooth).")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--style", required=True, metavar="NAME", help="style name in the registry")
    p.add_argument("-o", "--output", default="stylized",
                   help="output file (one input), folder (default ./stylized) or - for stdout")
    p.add_argument("--strength", type=float, default=1.0, metavar="S", help="0 = input unchanged, 1 = full style")
    add_preserve_color_arg(p)
    p.add_argument("--style-image", dest="style_images", action="append", metavar="PAINTING",
                   help="an arbitrary (AdaIN) style's painting; repeat to blend several (see --weights)")
    p.add_argument("--weights", metavar="W1,W2,...",
                   help="blend weights of the --style-image paintings, in order (default: equal)")
    p.add_argument("--alpha", type=float, default=1.0, metavar="A",
                   help="arbitrary styles: 0 = the content's own features, 1 = fully stylised (default)")
    p.add_argument("--tile", type=int, metavar="N",
                   help="tile size for large images (default 1024; video frames 2048)")
    p.add_argument("--max-side", type=int, metavar="N", help="downscale inputs so the longer side is at most N")
    p.add_argument("--smooth", type=float, metavar="S",
                   help="videos: temporal smoothing along the motion, 0 (per-frame) to below 1 "
                   "(default 0.6)")
    p.add_argument("--fps", type=float, metavar="F",
                   help="videos: output frame rate (default: the input's own timestamps)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="videos: frames per ONNX Runtime call (default 1; more can pay on a GPU)")
    p.add_argument("--crf", type=int, default=18, metavar="Q",
                   help="videos: H.264 quality, 0 (lossless) to 51 (default 18)")
    p.add_argument("--max-frames", type=int, metavar="N",
                   help="videos: refuse one of more than N frames, input or output (default 360000; "
                   "env RAYSTYLE_MAX_FRAMES)")
    p.add_argument("--max-duration", type=float, metavar="S",
                   help="videos: refuse one whose frames span more than S seconds (default 14400; "
                   "env RAYSTYLE_MAX_DURATION)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"])
    p.add_argument("--format", choices=["png", "jpeg", "webp"],
                   help="output format (default: the input's if png/jpeg/webp, else png)")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="styles registry (default ~/raystyle/models; env RAYSTYLE_MODELS)")
    p.add_argument("--json", action="store_true", help="one JSON line per image instead of text")


def cmd_stylize(args: argparse.Namespace) -> int:
    from raystyle.data.images import ImageError, encode
    from raystyle.infer.files import NO_INPUTS, STDIN, expand_inputs, plan_outputs, style_runner
    from raystyle.infer.video import VIDEO_TILE, VideoError
    from raystyle.util.storage import write_local_atomic

    items = expand_inputs(args.inputs, warn=lambda line: print(f"raystyle: warning: {line}", file=sys.stderr))
    if not items:
        raise RaystyleError(NO_INPUTS)
    videos = [i for i in items if i.video]
    if not videos and (args.smooth is not None or args.fps is not None):
        raise RaystyleError("--smooth and --fps are for videos; no input is a video")
    if not videos and (args.max_frames is not None or args.max_duration is not None):
        raise RaystyleError("--max-frames and --max-duration are for videos; no input is a video")
    if args.smooth is not None:
        from raystyle.infer.video import check_smooth

        check_smooth(args.smooth)  # a bad value fails before the style is loaded
    if videos:
        from raystyle.infer.video import check_crf, check_fps, check_limits

        check_crf(args.crf)
        check_fps(args.fps)  # once, not once per video
        check_limits(args.max_frames, args.max_duration)
    if args.batch_size < 1:
        raise RaystyleError(f"--batch-size must be at least 1, got {args.batch_size}")
    jobs = plan_outputs(items, args.output, args.format)  # every destination, before any work
    run = style_runner(args.style, models_dir=args.models_dir, precision=args.precision, provider=args.provider,
                       tile=1024 if args.tile is None else args.tile, style_images=args.style_images,
                       weights=args.weights, alpha=args.alpha)
    options = dict(strength=args.strength, preserve_color=preserve_color_of(args))
    failed = 0
    for job in jobs:
        src, dest = job.src, job.dest
        if job.video:
            try:
                result = _stylize_video(args, src, dest,
                                        lambda frames: run(frames, tile=VIDEO_TILE if args.tile is None else args.tile, **options))
            except VideoError as exc:
                failed += 1
                print(f"raystyle: error: {exc}", file=sys.stderr)
                continue
            if args.json:
                print(json.dumps({"input": src, "output": str(dest), "width": result.width,
                                  "height": result.height, "frames": result.frames, "fps": result.rate,
                                  "seconds": round(result.seconds, 2),
                                  "frames_per_s": round(result.frames_per_s, 2), "audio": result.audio,
                                  "style": args.style}))
            else:
                print(f"{src} -> {dest} ({result.width}x{result.height}, {result.frames} frames at "
                      f"{result.rate:.3g} fps{', audio copied' if result.audio else ''}; "
                      f"{result.frames_per_s:.1f} frames/s)")
            continue
        start = time.perf_counter()
        try:
            data = sys.stdin.buffer.read() if src == STDIN else Path(src)
            result = run([data], max_side=args.max_side, **options)[0]
        except ImageError as exc:
            failed += 1
            print(f"raystyle: error: {exc}", file=sys.stderr)
            continue
        payload = encode(result, job.fmt)
        ms = (time.perf_counter() - start) * 1000
        if dest is None or (src == STDIN and args.output == "stylized"):
            sys.stdout.buffer.write(payload)
            sys.stdout.buffer.flush()
            continue
        write_local_atomic(dest, lambda f, data=payload: f.write(data))  # exclusive temp + rename
        h, w = result.shape[:2]
        if args.json:
            print(json.dumps({"input": src, "output": str(dest), "width": w, "height": h,
                              "ms": round(ms, 1), "style": args.style}))
        else:
            print(f"{src} -> {dest} ({w}x{h}, {ms:.0f} ms)")
    return 2 if failed else 0


def _stylize_video(args: argparse.Namespace, src: str, dest: Path, run):
    """One video through raystyle.infer.video with a progress bar (frames/s and ETA) on stderr."""
    from tqdm import tqdm

    from raystyle.infer.video import DEFAULT_SMOOTH, stylize_video

    bars = []

    def start(info, plan):  # probed: the bar knows its total
        bars.append(tqdm(total=plan.frames, unit="frame", desc=Path(src).name, file=sys.stderr,
                         dynamic_ncols=True, mininterval=0.5, disable=args.json))

    try:
        return stylize_video(src, dest, run, smooth=DEFAULT_SMOOTH if args.smooth is None else args.smooth,
                             max_side=args.max_side, fps=args.fps, batch=args.batch_size, crf=args.crf,
                             max_frames=args.max_frames, max_duration=args.max_duration,
                             on_start=start, progress=lambda n: bars[0].update(n))
    finally:
        for bar in bars:
            bar.close()


COMMANDS = {"stylize": cmd_stylize}
