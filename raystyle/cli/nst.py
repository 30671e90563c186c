"""`raystyle nst`: Gatys style transfer of one image (raystyle.methods.nst), and the
style-transfer options it shares with `raystyle batch --nst`. Importing this is cheap: torch
loads when a command runs."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from raystyle.cli.common import add_preserve_color_arg, preserve_color_of
from raystyle.config import FEATURE_ARCHS, VGG_WEIGHTS_ENV
from raystyle.methods.nst import (
    COARSEST,
    INITS,
    MULTISCALE_ABOVE,
    OPTIMIZERS,
    NSTError,
    NSTOptions,
    check_images,
    run_nst,
)

# the options `raystyle batch --nst` shares (flags: --size, --content-weight, ...)
OPTION_FIELDS = ("size", "steps", "optimizer", "lr", "content_weight", "style_weight", "tv_weight",
                  "init", "features", "vgg_weights", "scales", "seed")


def add_options(p: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """The style-transfer options, shared by `raystyle nst` and `raystyle batch --nst`.
    ``suppress``: options not given are absent from the namespace (batch checks that none is
    given with --style)."""
    d = NSTOptions()

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--size", type=int, default=default(d.size), metavar="N",
                   help=f"the output's longer side in px, aspect kept (default {d.size})")
    p.add_argument("--steps", type=int, default=default(d.steps), metavar="N",
                   help=f"optimiser steps, split evenly over the scales (default {d.steps})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=default(d.optimizer),
                   help=f"L-BFGS (one iteration per step) or Adam (default {d.optimizer})")
    p.add_argument("--lr", type=float, default=default(None), metavar="LR",
                   help="step size (default 1 for lbfgs, 0.02 for adam; the image is in [-1, 1])")
    p.add_argument("--content-weight", type=float, default=default(d.content_weight), metavar="W",
                   help=f"weight of the content loss (default {d.content_weight:g})")
    p.add_argument("--style-weight", type=float, default=default(d.style_weight), metavar="W",
                   help=f"weight of the Gram (style) loss (default {d.style_weight:g}); the losses "
                   "are relative to their targets, so weights hold for any --features")
    p.add_argument("--tv-weight", type=float, default=default(d.tv_weight), metavar="W",
                   help=f"weight of the total-variation smoothness loss (default {d.tv_weight:g})")
    p.add_argument("--init", choices=INITS, default=default(d.init),
                   help=f"start from the content image or from noise (default {d.init})")
    p.add_argument("--features", choices=FEATURE_ARCHS, default=default(d.features),
                   help=f"perceptual features (default {d.features}); random needs no weights file")
    p.add_argument("--vgg-weights", metavar="PATH", default=default(None),
                   help=f"torchvision VGG .pth (default ${VGG_WEIGHTS_ENV}, else torchvision's cache "
                   "under TORCH_HOME, downloaded there when missing)")
    p.add_argument("--scales", type=int, default=default(None), metavar="N",
                   help=f"coarse-to-fine scales, each double the previous (default: 1 up to "
                   f"{MULTISCALE_ABOVE} px, else from about {COARSEST} px up)")
    p.add_argument("--seed", type=int, default=default(d.seed), metavar="N",
                   help=f"seed of the noise init and random features (default {d.seed})")


def options_from_args(args: argparse.Namespace, **overrides: Any) -> NSTOptions:
    """NSTOptions from parsed arguments (absent ones take the defaults)."""
    given = {name: getattr(args, name) for name in OPTION_FIELDS if hasattr(args, name)}
    known = {f.name for f in fields(NSTOptions)}
    return NSTOptions(**{k: v for k, v in {**given, **overrides}.items() if k in known})


def add_parser(sub) -> None:
    """Register `raystyle nst` on an argparse subparsers object."""
    p = sub.add_parser(
        "nst", help="Gatys style transfer: optimise one image towards a style image (no training)",
        description="Neural style transfer after Gatys et al. 2016: optimise the pixels of "
        "CONTENT so that its VGG features keep CONTENT's layout and their Gram matrices match "
        "STYLE_IMAGE's. No training and no registry style; minutes per image on a CPU "
        "(VGG-19: about 0.4 s a step at 256 px, 2 s at 512 px on 2 cores), seconds on a GPU. "
        f"Outputs above {MULTISCALE_ABOVE} px are optimised coarse to fine "
        f"(from about {COARSEST} px, doubling), --steps split evenly over the scales. VGG "
        f"weights: --vgg-weights, ${VGG_WEIGHTS_ENV}, or torchvision's cache (downloaded once); "
        "--features random needs none.")
    p.add_argument("content", metavar="CONTENT", help="the photo to stylize")
    p.add_argument("style", metavar="STYLE_IMAGE", help="the image whose style (colours, texture) to take")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output image; the format follows the suffix (.png, .jpg, .webp)")
    add_options(p)
    add_preserve_color_arg(p, "CONTENT")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    p.add_argument("--json", action="store_true",
                   help="print the report (losses, steps, seconds, sizes) as one JSON line")


def _write(path: Path, data: bytes) -> None:
    """Write under a fresh temporary name, created exclusively, and rename: never a half-written
    image at ``path``, never a link planted at the temporary name followed."""
    from raystyle.util.storage import write_local_atomic

    write_local_atomic(path, lambda f: f.write(data))


def cmd_nst(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from raystyle.data.images import encode, format_for_path, load_rgb

    options = options_from_args(args, preserve_color=preserve_color_of(args), device=args.device)
    out = Path(args.output)
    fmt = format_for_path(out)  # a bad suffix fails before minutes of work
    if out.is_dir():
        raise NSTError(f"-o {out} is a folder; give an image file name")
    content, style = load_rgb(args.content), load_rgb(args.style)
    check_images(content, style, options)  # before the weights load (or download)
    from raystyle.core.perceptual import load_features

    layers = options.layers
    features = load_features(options.features, layers["content"] + layers["style"],
                             options.vgg_weights, seed=options.seed)
    bar = tqdm(total=sum(options.steps_per_scale()), file=sys.stderr, unit="step",
               desc="nst", dynamic_ncols=True)

    def progress(p: dict[str, Any]) -> None:
        bar.update(1)
        bar.set_postfix(scale=f"{p['scale']}/{p['scales']}", content=f"{p['content']:.3g}",
                        style=f"{p['style']:.3g}", total=f"{p['total']:.3g}", refresh=False)

    try:
        result, report = run_nst(content, style, options, features=features, progress=progress)
    finally:
        bar.close()
    _write(out, encode(result, fmt))
    report = {"content": str(args.content), "style": str(args.style), "output": str(out), **report}
    if args.json:
        print(json.dumps(report))
    else:
        i, f = report["initial"], report["final"]
        print(f"{args.content} -> {out} ({report['size'][0]}x{report['size'][1]}, "
              f"{report['steps']} steps, {report['seconds']:.1f} s on {report['device']}; "
              f"content {i['content']:.3g} -> {f['content']:.3g}, style {i['style']:.3g} -> {f['style']:.3g})")
    return 0


COMMANDS = {"nst": cmd_nst}
