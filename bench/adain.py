"""Arbitrary style (AdaIN): inference cost of the exported graphs and training throughput, in one run.

    python bench/adain.py [--out DIR] [--features random] [--train-steps 600] [--side 96]

Prints, on this machine (ONNX Runtime CPU provider):
  - ms/image through the ArbitraryStylizer at 256, 512 and 1024 px, fp32 and int8, with the
    style image's statistics cached (a style seen before) and without (cache off: one more
    encoder pass over the style image per call, at the style's size: the training's load size,
    120 px at the default --side);
  - decoder training on Ray Train: images/s with 1 worker x 2 CPUs and 2 workers x 1 CPU
    (`adain-small`, --side px crops, batch 4 per worker);
and writes DIR/adain_grid.png: content | painting A | A | 2/3 A + 1/3 B | 1/3 A + 2/3 B | B | painting B
(the adain-small decoder trained for --train-steps steps, exported, run through the Stylizer),
and, with the pretrained EfficientNet-Lite0 features of raystyle.quality, per painting, the
style distance to it and the content distance to the photo of AdaIN (alpha 1) beside the photo
itself and the colour-transfer baseline (the photo histogram-matched to the painting), on the
grid's photo and the held-out sample photos (testA), printed and in DIR/bench_adain.json.

Paintings: procedural stand-ins (bench/fast.py strokes_painting with two palettes) plus the
painterly filter of the sample photos: no painting ships with any package here. --features
random (the default here: no VGG weights can be downloaded on this machine) uses the
fixed-seed random VGG-19-shaped encoder; VGG-19's costs the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import fast as fast_bench  # bench/fast.py: the procedural paintings
import numpy as np
from PIL import Image

WARM = (196, 40, 32), (236, 120, 40), (250, 210, 90), (120, 24, 40), (40, 20, 16), (250, 240, 220), (90, 60, 40), (200, 80, 120)


def painting(seed: int, palette=None) -> Image.Image:
    saved = fast_bench.PALETTE
    try:
        if palette is not None:
            fast_bench.PALETTE = list(palette)
        return fast_bench.strokes_painting(384, seed)
    finally:
        fast_bench.PALETTE = saved


def _dataset(root: Path) -> Path:
    """The sample dataset (trainA photos, trainB painterly photos) plus 12 procedural paintings in trainB."""
    from raystyle.data.datasets import write_sample_dataset

    if not (root / "trainA").is_dir():
        write_sample_dataset(root, size=160)
        rng = np.random.default_rng(3)
        for i in range(12):
            palette = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(8)] if i % 3 else None
            painting(100 + i, palette).save(root / "trainB" / f"strokes_{i}.png")
    return root


def _train(data: Path, storage: Path, name: str, features: str, side: int, steps: int, workers: int, cpus: int,
           extra_sets: list[str] | None = None):
    from raystyle.methods.adain import plan
    from raystyle.runlog import read_metrics
    from raystyle.train.loop import fit

    sets = [f"adain.features={features}", f"data.load_size={side + side // 4}", f"data.crop_size={side}",
            "train.log_every=10", f"train.checkpoint_every={max(steps, 10)}", f"train.sample_every={max(steps, 10)}",
            "data.loader_workers=1", *(extra_sets or [])]
    cfg, extra = plan("adain-small", sets, {"cluster": {"workers": workers, "cpus_per_worker": cpus,
                                                         "storage": str(storage)}, "train": {"max_steps": steps}})
    t = time.perf_counter()
    result = fit(cfg, data, name, verbose=False, extra=extra)
    minutes = (time.perf_counter() - t) / 60
    rates = [r["images_per_s"] for r in read_metrics(result.run_dir)][1:]  # the first window has start-up
    return result, (statistics.median(rates) if rates else float("nan")), minutes


def _ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="bench_adain_")))
    ap.add_argument("--features", default="random", choices=["random", "vgg16", "vgg19"])
    ap.add_argument("--train-steps", type=int, default=1000,
                    help="steps of the adain-small decoder in the picture (at most the preset's 100 epochs)")
    ap.add_argument("--side", type=int, default=96, help="training crop side (px)")
    ap.add_argument("--throughput-steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="config overrides of the picture's decoder run (e.g. adain.style_weight=0.5)")
    args = ap.parse_args()

    import torch

    from raystyle.cluster import connect
    from raystyle.data.datasets import sample_photo_dir
    from raystyle.data.images import load_rgb
    from raystyle.export import export_style
    from raystyle.infer.arbitrary import ArbitraryStylizer
    from raystyle.registry import get_style

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = _dataset(out / "data")
    a, b = out / "painting_a.png", out / "painting_b.png"
    painting(7).save(a)
    painting(11, WARM).save(b)
    figures: dict = {"machine": f"{torch.get_num_threads()} CPU threads, ONNX Runtime CPU provider",
                     "features": args.features}

    connect(None)
    storage = out / "runs"
    tput = {}
    for workers, cpus in ((1, 2), (2, 1)):
        _, rate, _ = _train(data, storage, f"tput_{workers}x{cpus}", args.features, args.side,
                            args.throughput_steps, workers, cpus)
        tput[f"{workers}x{cpus}"] = round(rate, 2)
        print(f"adain-small training, {workers} worker(s) x {cpus} CPU, {args.side} px: {rate:.2f} images/s", flush=True)
    figures["train_images_per_s"] = tput
    result, _, minutes = _train(data, storage, "picture", args.features, args.side, args.train_steps, 1, 2, args.sets)
    # the run stops at --train-steps or after its preset's 100 epochs, whichever comes first
    figures["picture_net"] = {"steps": result.step, "minutes": round(minutes, 1), "side": args.side}
    print(f"picture decoder: {result.step} steps in {minutes:.1f} min", flush=True)
    models = out / "models"
    # the int8 gate is lowered so both precisions can be timed; the PSNR it measured is printed
    export_style(result.run_dir, "adain-small", models_dir=models, precisions=("fp32", "int8"),
                 overrides=["export.int8_min_psnr_db=0"])
    st = get_style("adain-small", models)
    e8 = st.meta["precisions"]["int8"]
    figures["int8"] = {"graphs": e8["int8_graphs"], "psnr_vs_fp32_db": e8["psnr_vs_fp32_db"],
                       "both_int8_psnr_vs_fp32_db": e8["both_int8_psnr_vs_fp32_db"]}
    print(f"int8: {'+'.join(e8['int8_graphs'])}, PSNR vs fp32 {e8['psnr_vs_fp32_db']} dB "
          f"(both graphs int8: {e8['both_int8_psnr_vs_fp32_db']} dB)", flush=True)

    rows = {}
    photo_full = load_rgb(sample_photo_dir() / "astronaut.png")
    for precision in ("fp32", "int8"):
        cached = ArbitraryStylizer(st, precision=precision, provider="cpu", tile=1024)
        uncached = ArbitraryStylizer(st, precision=precision, provider="cpu", tile=1024, cache_size=0)
        for side in (256, 512, 1024):
            photo = np.asarray(photo_full.resize((side, side), Image.LANCZOS))
            for label, s in (("cached", cached), ("uncached", uncached)):
                ms = _ms(lambda s=s, photo=photo: s.stylize(photo, style_images=[a]), args.repeats)
                rows[f"{precision}_{side}_{label}_ms"] = round(ms, 1)
            print(precision, side, rows[f"{precision}_{side}_cached_ms"], rows[f"{precision}_{side}_uncached_ms"],
                  flush=True)
    figures["ms_per_image"] = rows
    figures["cost"] = st.meta["cost"]

    # -- the picture ------------------------------------------------------------------------------
    side = 256
    stylizer = ArbitraryStylizer(st, provider="cpu")
    photo = photo_full.resize((side, side), Image.LANCZOS)
    tiles = [photo, Image.open(a).resize((side, side), Image.LANCZOS)]
    for w in (1.0, 2 / 3, 1 / 3, 0.0):
        tiles.append(Image.fromarray(stylizer.stylize(np.asarray(photo), style_images=[a, b], weights=[w, 1 - w])))
    tiles.append(Image.open(b).resize((side, side), Image.LANCZOS))
    grid = Image.new("RGB", (len(tiles) * side + (len(tiles) - 1) * 4, side), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, (i * (side + 4), 0))
    grid.save(out / "adain_grid.png")

    # -- quality figures: pretrained EfficientNet-Lite0 features (raystyle.quality) ---------------
    held_out = [load_rgb(f) for f in sorted((data / "testA").glob("*.png"))]
    figures["quality"] = {"features": "EfficientNet-Lite0 (ImageNet weights), raystyle.quality; lower is closer",
                          "held_out_photos": len(held_out)}
    for label, path in (("painting_a", a), ("painting_b", b)):
        ref = Image.open(path).convert("RGB")
        figures["quality"][label] = {
            "grid_photo": fast_bench.quality_rows([photo], ref, {"AdaIN (alpha 1)": [
                stylizer.stylize(np.asarray(photo), style_images=[path], alpha=1.0)]}),
            "held_out": fast_bench.quality_rows(held_out, ref, {"AdaIN (alpha 1)": [
                stylizer.stylize(np.asarray(im), style_images=[path], alpha=1.0) for im in held_out]}),
        }

    (out / "bench_adain.json").write_text(json.dumps(figures, indent=2))
    print()
    print(f"machine: {figures['machine']}; features: {args.features}; "
          f"cost {st.meta['cost']['gmacs']} GMACs per 256 px photo (encoder {st.meta['cost']['encoder_gmacs']})")
    print("precision | 256 cached | 256 uncached | 512 cached | 512 uncached | 1024 cached | 1024 uncached (ms)")
    for p in ("fp32", "int8"):
        print(f"{p} | " + " | ".join(str(rows[f"{p}_{s}_{c}_ms"]) for s in (256, 512, 1024)
                                      for c in ("cached", "uncached")))
    print(f"adain-small training images/s at {args.side} px: 1 worker x 2 CPU {tput['1x2']}, "
          f"2 workers x 1 CPU {tput['2x1']} (ratio {tput['2x1'] / tput['1x2']:.2f})")
    q = figures["quality"]
    for label in ("painting_a", "painting_b"):
        print()
        fast_bench.print_quality(f"{label}, the grid's photo ({side} px), EfficientNet-Lite0 features:",
                                 q[label]["grid_photo"])
        fast_bench.print_quality(f"{label}, the {q['held_out_photos']} held-out sample photos (testA):",
                                 q[label]["held_out"])
    print(f"picture: {out / 'adain_grid.png'}; figures: {out / 'bench_adain.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
