"""`raystyle batch`: a folder (or s3:// prefix) of images and videos through a registry style
with a Ray Data actor pool, or through Gatys style transfer (--nst) one image per Ray task; the
work is raystyle.batch.images and raystyle.batch.videos."""

from __future__ import annotations

import argparse
from pathlib import Path

from raystyle.batch.images import FORMATS, MANIFEST, BatchError, run_batch, run_nst_batch
from raystyle.cli.common import add_preserve_color_arg, add_verbose_arg, preserve_color_of
from raystyle.cli.nst import OPTION_FIELDS, add_options, options_from_args
from raystyle.methods.nst import NSTOptions


def add_parser(sub) -> None:
    """Register `raystyle batch` on an argparse subparsers object."""
    p = sub.add_parser(
        "batch", help="stylize a whole folder (or s3:// prefix) with a Ray Data actor pool",
        description="Stylize every image under INPUT (subfolders too) into OUTPUT, keeping "
        "relative paths, with Ray Data actors that each hold one Stylizer. Inputs whose "
        f"output exists are skipped; failures are listed in OUTPUT/{MANIFEST} and retried "
        "by the next run. INPUT and OUTPUT are folders or pyarrow URIs (s3://, gs://, ...). "
        "An arbitrary (AdaIN) style takes --style-image PAINTING (repeat it to blend several "
        "with --weights): one trained network, the painting's statistics computed once per "
        "actor. --nst STYLE_IMAGE runs Gatys style transfer instead (raystyle nst): no registry "
        "style, an optimisation per image, one image per Ray task.")
    p.add_argument("input", metavar="INPUT", help="folder or URI of input images")
    p.add_argument("output", metavar="OUTPUT", help="folder or URI for the stylized images")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--style", metavar="NAME", help="style name in the registry")
    which.add_argument("--nst", metavar="STYLE_IMAGE",
                       help="Gatys style transfer towards this image instead of a registry style: "
                       "one image per Ray task, minutes each on a CPU (the style-transfer "
                       "options below apply only here); for a trained arbitrary style use "
                       "--style NAME --style-image PAINTING")
    p.add_argument("--style-image", dest="style_images", action="append", metavar="PAINTING",
                   help="with --style NAME of an arbitrary (AdaIN) style: the painting whose "
                   "style to apply (path or URI, read once on the driver and shared with every "
                   "actor); repeat to blend several (see --weights). Not for --nst")
    p.add_argument("--weights", metavar="W1,W2,...",
                   help="blend weights of the --style-image paintings, in order (default: equal)")
    p.add_argument("--alpha", type=float, default=1.0, metavar="A",
                   help="arbitrary styles: 0 = the content's own features, 1 = fully stylised (default)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="actors (--nst: tasks at a time) (default: cluster CPUs / "
                   "--cpus-per-worker, or GPUs with --gpu)")
    p.add_argument("--cpus-per-worker", type=int, default=1, metavar="N",
                   help="CPUs (= ONNX Runtime or torch threads) per actor or task (default 1)")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor (CUDA provider)")
    p.add_argument("--models-dir", type=Path, metavar="DIR",
                   help="styles registry (default ~/raystyle/models; env RAYSTYLE_MODELS)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--strength", type=float, default=1.0, metavar="S", help="0 = input unchanged, 1 = full style")
    add_preserve_color_arg(p)
    p.add_argument("--max-side", type=int, metavar="N", help="downscale inputs so the longer side is at most N")
    p.add_argument("--tile", type=int, metavar="N",
                   help="tile size for large images (default 1024; video frames 2048)")
    p.add_argument("--format", choices=list(FORMATS),
                   help="output format (default: the input's if png/jpeg/webp, else png)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per actor call (default 8)")
    p.add_argument("--smooth", type=float, metavar="S",
                   help="videos: temporal smoothing along the motion, 0 (per-frame) to below 1 (default 0.6)")
    p.add_argument("--fps", type=float, metavar="F",
                   help="videos: output frame rate (default: the input's own timestamps)")
    p.add_argument("--chunk-frames", type=int, metavar="N",
                   help="videos: frames per Ray Data chunk (default 48; each adds a few warm-up frames)")
    p.add_argument("--crf", type=int, default=18, metavar="Q",
                   help="videos: H.264 quality, 0 (lossless) to 51 (default 18)")
    p.add_argument("--max-frames", type=int, metavar="N",
                   help="videos: one of more than N frames, input or output, is an error row "
                   "(default 360000; env RAYSTYLE_MAX_FRAMES)")
    p.add_argument("--max-duration", type=float, metavar="S",
                   help="videos: one whose frames span more than S seconds is an error row "
                   "(default 14400; env RAYSTYLE_MAX_DURATION)")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else start a local Ray)")
    add_verbose_arg(p)
    add_options(p.add_argument_group("style transfer (--nst)"), suppress=True)


def _nst_args(args: argparse.Namespace) -> NSTOptions:
    """The --nst options; registry-style options that mean nothing there are errors."""
    ignored = [flag for flag, value, default in (
        ("--models-dir", args.models_dir, None), ("--precision", args.precision, "fp32"),
        ("--strength", args.strength, 1.0), ("--max-side", args.max_side, None),
        ("--tile", args.tile, None), ("--batch-size", args.batch_size, 8),
        ("--style-image", args.style_images, None), ("--weights", args.weights, None),
        ("--alpha", args.alpha, 1.0), ("--smooth", args.smooth, None), ("--fps", args.fps, None),
        ("--chunk-frames", args.chunk_frames, None), ("--crf", args.crf, 18),
        ("--max-frames", args.max_frames, None), ("--max-duration", args.max_duration, None)) if value != default]
    if ignored:
        raise BatchError(f"{', '.join(ignored)} only apply with --style; --nst takes --size, "
                         "--steps and the other style-transfer options")
    return options_from_args(args, preserve_color=preserve_color_of(args))


def cmd_batch(args: argparse.Namespace) -> int:
    if args.nst is not None:
        run_nst_batch(args.input, args.output, args.nst, _nst_args(args), workers=args.workers,
                      cpus_per_worker=args.cpus_per_worker, gpu=args.gpu, fmt=args.format,
                      address=args.address)
        return 0  # failed inputs are listed in the manifest; they do not fail the job
    from raystyle.infer.arbitrary import parse_weights

    given = [f"--{name.replace('_', '-')}" for name in OPTION_FIELDS if hasattr(args, name)]
    if given:
        raise BatchError(f"{', '.join(given)} only apply with --nst STYLE_IMAGE, not with --style")
    result = run_batch(args.input, args.output, args.style, workers=args.workers,
                       cpus_per_worker=args.cpus_per_worker, gpu=args.gpu,
                       models_dir=args.models_dir, precision=args.precision,
                       strength=args.strength, preserve_color=preserve_color_of(args),
                       max_side=args.max_side, fmt=args.format, batch_size=args.batch_size,
                       tile=args.tile, address=args.address, style_images=args.style_images,
                       weights=parse_weights(args.weights), alpha=args.alpha, smooth=args.smooth,
                       fps=args.fps, chunk_frames=args.chunk_frames, crf=args.crf,
                       max_frames=args.max_frames, max_duration=args.max_duration)
    del result  # failed inputs are listed in the manifest; they do not fail the job
    return 0


COMMANDS = {"batch": cmd_batch}
