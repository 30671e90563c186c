"""Styles from one painting: Gatys optimisation and fast per-style nets, measured in one run.

    python bench/fast.py [--out DIR] [--features random] [--train-steps 1500] [--side 128]

Prints, on this machine:
  - Gatys (raystyle.methods.nst): seconds per step at 256 and 512 px, L-BFGS and Adam;
  - fast nets (the `fast` and `fast-small` presets): parameters, GMACs at 256 px, ms/image through
    ONNX Runtime (CPU) at 256, 512 and 1024 px, fp32 and int8;
  - fast-net training on Ray Train: images/s with 1 worker x 2 CPUs and 2 workers x 1 CPU
    (`fast-small`, --side px crops, batch 4 per worker);
and writes DIR/fast_grid.png: content | style | Gatys | fast net (the fast-small net trained for
--train-steps steps on the sample photos, exported, run through the Stylizer), and, with the
pretrained EfficientNet-Lite0 features of raystyle.quality, each method's style distance to the
painting and content distance to its photo beside the photo itself and the colour-transfer
baseline (the photo histogram-matched to the painting): on the grid's photo (Gatys, fast net)
and on the held-out sample photos (testA; fast net), printed and in DIR/bench_fast.json.

The style image is drawn by ``strokes_painting`` (short brush strokes in a fixed palette): no
painting ships with any package here. With --features random (the default here: no VGG weights
can be downloaded on this machine) both methods use the fixed-seed random VGG-19-shaped features
of raystyle.core.perceptual; they cost the same per step as VGG-19's.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from distill import _ms_per_image  # bench/distill.py: one ORT timing for both benches
from PIL import Image, ImageDraw, ImageFilter

PALETTE = [(28, 52, 112), (52, 92, 168), (236, 196, 64), (246, 226, 140), (32, 40, 60),
           (90, 140, 200), (220, 120, 40), (250, 250, 230)]


def strokes_painting(side: int = 384, seed: int = 7) -> Image.Image:
    """A stand-in painting: thousands of short, thick, curved strokes in a blue/yellow palette."""
    rng = random.Random(seed)
    img = Image.new("RGB", (side, side), PALETTE[0])
    draw = ImageDraw.Draw(img)
    for _ in range(side * 12):
        x, y = rng.uniform(0, side), rng.uniform(0, side)
        angle = math.sin(x / side * 6.0) + math.cos(y / side * 5.0)  # a flow field: swirls
        colour = PALETTE[rng.randrange(len(PALETTE))] if rng.random() < 0.6 else PALETTE[int(y / side * 4) % 4]
        pts = [(x, y)]
        for _ in range(4):
            angle += rng.uniform(-0.3, 0.3)
            x, y = x + 5 * math.cos(angle), y + 5 * math.sin(angle)
            pts.append((x, y))
        draw.line(pts, fill=colour, width=rng.randint(3, 6))
    return img.filter(ImageFilter.SMOOTH)


def _to_tensor(images):
    """uint8 (H, W, 3) arrays or PIL images, all one size -> (N, 3, H, W) in [-1, 1]."""
    import torch

    arr = np.stack([np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def quality_rows(photos, painting, outputs: dict) -> dict:
    """Style distance to ``painting`` and content distance to ``photos`` (raystyle.quality:
    pretrained EfficientNet-Lite0 features) of the photos themselves, the colour-transfer
    baseline (each photo histogram-matched to the painting) and each method's ``outputs``
    ({label: images, one per photo}). Images: uint8 (H, W, 3) arrays or PIL images."""
    from raystyle import quality

    p, ref = _to_tensor(photos), _to_tensor([painting])
    fp, fref = quality.features(p), quality.features(ref)
    sets = {"photo (no change)": fp, "colour transfer (baseline)": quality.features(quality.colour_transfer(p, ref))}
    sets.update({label: quality.features(_to_tensor(imgs)) for label, imgs in outputs.items()})
    return {label: {"style_distance": round(quality.style_distance(f, fref), 4),
                    "content_distance": round(quality.content_distance(f, fp), 4)} for label, f in sets.items()}


def print_quality(title: str, rows: dict) -> None:
    print(f"{title}\nmethod | style distance to its painting | content distance to its photo")
    for label, r in rows.items():
        print(f"{label} | {r['style_distance']:.4f} | {r['content_distance']:.4f}")


def _gatys_seconds_per_step(content, style, side: int, optimizer: str, features: str, steps: int) -> float:
    from raystyle.methods.nst import NSTOptions, run_nst

    _, report = run_nst(content, style, NSTOptions(size=side, steps=steps, optimizer=optimizer,
                                                   features=features, device="cpu"))
    return report["seconds"] / steps


def _train(painting: Path, data: Path, storage: Path, name: str, preset: str, features: str,
           side: int, steps: int, workers: int, cpus: int, extra_sets: list[str] | None = None):
    from raystyle.methods.fast import plan
    from raystyle.runlog import read_metrics
    from raystyle.train.loop import fit

    sets = [f"fast.features={features}", f"data.load_size={side}", f"data.crop_size={side}",
            "train.log_every=10", f"train.checkpoint_every={max(steps, 10)}",
            f"train.sample_every={max(steps, 10)}", "data.loader_workers=1", *(extra_sets or [])]
    cfg, extra = plan(painting, preset, sets, {"cluster": {"workers": workers, "cpus_per_worker": cpus,
                                                           "storage": str(storage)},
                                               "train": {"max_steps": steps}})
    t = time.perf_counter()
    result = fit(cfg, data, name, verbose=False, extra=extra)
    minutes = (time.perf_counter() - t) / 60
    rates = [r["images_per_s"] for r in read_metrics(result.run_dir)][1:]  # the first window has start-up
    return result, (statistics.median(rates) if rates else float("nan")), minutes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="bench_fast_")))
    ap.add_argument("--features", default="random", choices=["random", "vgg16", "vgg19"])
    ap.add_argument("--train-steps", type=int, default=1500, help="steps of the fast-small net in the picture")
    ap.add_argument("--side", type=int, default=128, help="training crop side (px)")
    ap.add_argument("--throughput-steps", type=int, default=60)
    ap.add_argument("--gatys-steps", type=int, default=300, help="L-BFGS steps of the Gatys picture")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    from raystyle.cluster import connect
    from raystyle.core.macs import count_macs, count_params
    from raystyle.core.nets import build_generator
    from raystyle.data.datasets import sample_photo_dir, write_sample_dataset
    from raystyle.data.images import load_rgb
    from raystyle.export import export_style
    from raystyle.infer.generator import Stylizer
    from raystyle.methods.nst import NSTOptions, run_nst
    from raystyle.registry import get_style

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    painting = out / "painting.png"
    strokes_painting().save(painting)
    data = out / "data"
    if not (data / "trainA").is_dir():
        write_sample_dataset(data, size=160)
    content = np.asarray(load_rgb(sample_photo_dir() / "astronaut.png"))
    style = np.asarray(load_rgb(painting))
    figures: dict = {"machine": f"{threads} CPU threads, ONNX Runtime CPU provider", "features": args.features}

    # -- Gatys: seconds per step ---------------------------------------------------------------
    figures["gatys_s_per_step"] = {}
    for side in (256, 512):
        for opt in ("lbfgs", "adam"):
            s = _gatys_seconds_per_step(content, style, side, opt, args.features, 5 if side == 512 else 10)
            figures["gatys_s_per_step"][f"{opt}@{side}"] = round(s, 3)
            print(f"gatys {opt} {side} px: {s:.3f} s/step", flush=True)
    t = time.perf_counter()
    gatys, report = run_nst(content, style, NSTOptions(size=256, steps=args.gatys_steps,
                                                       features=args.features, device="cpu"))
    figures["gatys_picture"] = {"steps": args.gatys_steps, "seconds": round(time.perf_counter() - t, 1),
                                "final": report.get("final")}
    print(f"gatys picture: {args.gatys_steps} L-BFGS steps at 256 px in {figures['gatys_picture']['seconds']} s")

    # -- fast nets: training throughput and the picture's net -------------------------------------
    connect(None)
    storage = out / "runs"
    tput = {}
    for workers, cpus in ((1, 2), (2, 1)):
        _, rate, _ = _train(painting, data, storage, f"tput_{workers}x{cpus}", "fast-small", args.features,
                            args.side, args.throughput_steps, workers, cpus)
        tput[f"{workers}x{cpus}"] = round(rate, 2)
        print(f"fast-small training, {workers} worker(s) x {cpus} CPU, {args.side} px: {rate:.2f} images/s", flush=True)
    figures["train_images_per_s"] = tput
    result, rate, minutes = _train(painting, data, storage, "picture", "fast-small", args.features,
                                   args.side, args.train_steps, 1, 2)
    figures["picture_net"] = {"steps": args.train_steps, "minutes": round(minutes, 1), "side": args.side}
    print(f"picture net: {args.train_steps} steps in {minutes:.1f} min", flush=True)
    models = out / "models"
    export_style(result.run_dir, "fast-small", models_dir=models, precisions=("fp32", "int8"))

    # the paper-size net: a few steps are enough for timing (int8 gate lowered; PSNR printed)
    paper, _, _ = _train(painting, data, storage, "paper", "fast", args.features, args.side, 20, 1, 2)
    export_style(paper.run_dir, "fast", models_dir=models, precisions=("fp32", "int8"),
                 overrides=["export.int8_min_psnr_db=0"])

    rows = {}
    for name in ("fast", "fast-small"):
        st = get_style(name, models)
        gen = build_generator(__import__("raystyle.config", fromlist=["Config"]).Config.from_dict(
            {"model": {k: v for k, v in st.meta["architecture"].items() if k != "generator"}}).model)
        row = {"params": count_params(gen), "gmacs_256": round(count_macs(gen, 256) / 1e9, 2),
               "int8_psnr_vs_fp32": st.meta["precisions"]["int8"]["psnr_vs_fp32_db"]}
        for side in (256, 512, 1024):
            for prec, file in (("fp32", "model.onnx"), ("int8", st.meta["precisions"]["int8"]["file"])):
                row[f"{prec}_{side}_ms"] = round(_ms_per_image(st.path / file, side, args.repeats), 1)
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    figures["nets"] = rows

    # -- the picture: content | style | Gatys | fast net ------------------------------------------
    side = 256
    photo = Image.fromarray(content).resize((side, side), Image.LANCZOS)
    fast = Stylizer("fast-small", models_dir=models, provider="cpu").stylize(np.asarray(photo))
    tiles = [photo, Image.fromarray(style).resize((side, side), Image.LANCZOS),
             Image.fromarray(gatys).resize((side, side), Image.LANCZOS), Image.fromarray(fast)]
    grid = Image.new("RGB", (4 * side + 3 * 4, side), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, (i * (side + 4), 0))
    grid.save(out / "fast_grid.png")

    # -- quality figures: pretrained EfficientNet-Lite0 features (raystyle.quality) ---------------
    painting_img = Image.fromarray(style)
    stylizer = Stylizer("fast-small", models_dir=models, provider="cpu")
    held_out = [load_rgb(f) for f in sorted((data / "testA").glob("*.png"))]
    figures["quality"] = {
        "features": "EfficientNet-Lite0 (ImageNet weights), raystyle.quality; lower is closer",
        "grid_photo": quality_rows([photo], painting_img, {"Gatys": [tiles[2]], "fast-small": [fast]}),
        "held_out": {"photos": len(held_out), **quality_rows(
            held_out, painting_img, {"fast-small": [stylizer.stylize(np.asarray(im)) for im in held_out]})},
    }

    (out / "bench_fast.json").write_text(json.dumps(figures, indent=2))
    print()
    print(f"machine: {figures['machine']}; features: {args.features}")
    g = figures["gatys_s_per_step"]
    print(f"Gatys s/step: L-BFGS 256 px {g['lbfgs@256']}, 512 px {g['lbfgs@512']}; Adam 256 px "
          f"{g['adam@256']}, 512 px {g['adam@512']}")
    print("net | params | GMACs@256 | fp32 256 | int8 256 | fp32 512 | int8 512 | fp32 1024 | int8 1024 (ms) | int8 PSNR vs fp32")
    for name, r in rows.items():
        print(f"{name} | {r['params'] / 1e6:.3f} M | {r['gmacs_256']} | {r['fp32_256_ms']} | {r['int8_256_ms']} | "
              f"{r['fp32_512_ms']} | {r['int8_512_ms']} | {r['fp32_1024_ms']} | {r['int8_1024_ms']} | "
              f"{r['int8_psnr_vs_fp32']} dB")
    print(f"fast-small training images/s at {args.side} px: 1 worker x 2 CPU {tput['1x2']}, "
          f"2 workers x 1 CPU {tput['2x1']} (ratio {tput['2x1'] / tput['1x2']:.2f})")
    print()
    q = figures["quality"]
    print_quality(f"quality on the grid's photo ({side} px), EfficientNet-Lite0 features:", q["grid_photo"])
    print_quality(f"quality on the {q['held_out']['photos']} held-out sample photos (testA):",
                  {k: v for k, v in q["held_out"].items() if k != "photos"})
    print(f"picture: {out / 'fast_grid.png'}; figures: {out / 'bench_fast.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
