"""Distilled students vs their teacher, side by side in one run (issue 12's figures).

    python bench/distill.py --teacher RUN_OR_CHECKPOINT --data DIR [--students student-16,student-8]
                            [--steps 600] [--workers 1] [--cpus-per-worker 2] [--out DIR]

For the teacher and each student preset it prints:
  - parameters and GMACs at 256 px (raystyle.core.macs; the ONNX graph's own count is checked at export);
  - distillation: steps, minutes (Ray start-up included) and the student's PSNR/SSIM against the
    teacher on the held-out test images (the run's validation log: the final figure and the best);
  - ms/image through ONNX Runtime (CPU provider, this machine's threads) at 256, 512 and 1024 px,
    fp32 and int8, and the ratio teacher / student;
  - the end-to-end `raystyle stylize` of a 1024 x 1024 JPEG, process start included, and its ratio.

The teacher's int8 export is measured with its quality gate lowered to 0 dB (its PSNR vs fp32 is
printed): the paper's generator often fails the 28 dB gate, and the timing is wanted anyway.
Every figure is measured in this one run, on this machine. The teacher in the README's table
was trained with:

    raystyle data sample DATA --size 160
    raystyle train --data DATA --style teacher --config paper --set data.load_size=143 \\
        --set data.crop_size=128 --workers 1 --cpus-per-worker 2 --max-steps 400 --storage RUNS
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _ms_per_image(path: Path, side: int, repeats: int) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, side, side)).astype(np.float32)
    sess.run(None, {"image": x})  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {"image": x})
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _stylize_seconds(style: str, models: Path, image: Path, out: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "raystyle", "stylize", str(image), "--style", style,
                        "--models-dir", str(models), "-o", str(out)], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="teacher run or checkpoint")
    ap.add_argument("--data", required=True, type=Path, help="dataset (trainA/trainB, testA/testB held out)")
    ap.add_argument("--students", default="student-16,student-8", help="student presets, comma-separated")
    ap.add_argument("--steps", type=int, default=600, help="distillation steps per student")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cpus-per-worker", type=int, default=2)
    ap.add_argument("--sides", default="256,512,1024")
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="raystyle_bench_distill_")))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="distillation config overrides")
    args = ap.parse_args()

    from PIL import Image

    from raystyle import runlog
    from raystyle.config import Config
    from raystyle.core.macs import count_macs, count_params
    from raystyle.core.nets import build_generator
    from raystyle.export import export_style
    from raystyle.methods.distill import load_teacher, plan
    from raystyle.registry import get_style
    from raystyle.train.loop import fit

    models, runs = args.out / "models", args.out / "runs"
    sides = [int(s) for s in args.sides.split(",")]
    teacher = load_teacher(args.teacher, "ab")
    tcfg = Config.from_dict(teacher["config"])
    rows: dict[str, dict] = {}
    gen = build_generator(tcfg.model)
    rows["teacher"] = {"params": count_params(gen), "gmacs": count_macs(gen, 256) / 1e9,
                       "arch": f"ngf {tcfg.model.ngf}, {tcfg.model.n_blocks} blocks, {tcfg.model.upsample}",
                       "step": teacher["step"]}
    print(f"teacher {teacher['checkpoint']} (step {teacher['step']}): {rows['teacher']['arch']}, "
          f"{rows['teacher']['params']:,} params, {rows['teacher']['gmacs']:.2f} GMACs @256", flush=True)
    t = time.perf_counter()
    export_style(teacher["checkpoint"], "teacher", models_dir=models, precisions=("fp32", "int8"),
                 overrides=["export.int8_min_psnr_db=0"])
    rows["teacher"]["export_s"] = time.perf_counter() - t
    rows["teacher"]["int8_psnr"] = get_style("teacher", models).meta["precisions"]["int8"]["psnr_vs_fp32_db"]

    for preset in [p for p in args.students.split(",") if p]:
        cfg, extra = plan(teacher["checkpoint"], preset, None, list(args.overrides),
                          {"cluster": {"workers": args.workers, "cpus_per_worker": args.cpus_per_worker,
                                       "storage": str(runs)},
                           "train": {"max_steps": args.steps}})
        student = build_generator(cfg.model)
        row = rows[preset] = {"params": count_params(student), "gmacs": count_macs(student, 256) / 1e9,
                              "arch": f"ngf {cfg.model.ngf}, {cfg.model.n_blocks} blocks, {cfg.model.upsample}"}
        print(f"{preset}: {row['arch']}, {row['params']:,} params, {row['gmacs']:.2f} GMACs @256; "
              f"distilling {args.steps} steps ...", flush=True)
        t = time.perf_counter()
        result = fit(cfg, args.data, preset, extra=extra, verbose=False)
        row["distill_min"] = (time.perf_counter() - t) / 60
        records = [r for r in runlog.read_metrics(result.run_dir) if "val_teacher_psnr" in r]
        row["final"] = records[-1]
        row["best"] = max(records, key=lambda r: r["val_teacher_psnr"])
        print(f"  {row['distill_min']:.1f} min: vs teacher {row['final']['val_teacher_psnr']:.2f} dB at the end "
              f"(best {row['best']['val_teacher_psnr']:.2f} dB at step {row['best']['step']})", flush=True)
        export_style(result.run_dir, preset, models_dir=models, precisions=("fp32", "int8"), best="auto")
        row["int8_psnr"] = get_style(preset, models).meta["precisions"]["int8"]["psnr_vs_fp32_db"]

    # -- inference -------------------------------------------------------------------------
    threads = os.cpu_count()
    for name, row in rows.items():
        folder = get_style(name, models).path
        for side in sides:
            for prec, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
                reps = 3 if side >= 1024 and name == "teacher" else 7
                row[f"ms_{prec}_{side}"] = _ms_per_image(folder / file, side, reps)
        print(f"{name}: ms/image " + ", ".join(f"{side}px fp32 {row[f'ms_fp32_{side}']:.1f} int8 "
                                               f"{row[f'ms_int8_{side}']:.1f}" for side in sides), flush=True)
    photo = args.out / "photo_1024.jpg"
    src = sorted((args.data / "testA").iterdir())[0]
    Image.open(src).convert("RGB").resize((1024, 1024), Image.BICUBIC).save(photo, quality=92)
    for name, row in rows.items():
        row["e2e_s"] = _stylize_seconds(name, models, photo, args.out / f"stylized_{name}", 3)
        print(f"{name}: `raystyle stylize` of a 1024 px JPEG: {row['e2e_s']:.2f} s", flush=True)

    # -- the table -------------------------------------------------------------------------
    te = rows["teacher"]
    print(f"\nmachine: {threads} CPU threads; ONNX Runtime CPU provider; medians")
    head = ["model", "arch", "params", "GMACs@256", "PSNR vs teacher (end / best)", "SSIM (end)"]
    head += [f"{p} {s}px ms" for s in sides for p in ("fp32", "int8")] + ["1024px stylize s", "x faster e2e"]
    print(" | ".join(head))
    for name, row in rows.items():
        cells = [name, row["arch"], f"{row['params'] / 1e6:.3f} M", f"{row['gmacs']:.2f}"]
        if name == "teacher":
            cells += ["-", "-"]
        else:
            cells += [f"{row['final']['val_teacher_psnr']:.2f} / {row['best']['val_teacher_psnr']:.2f} dB",
                      f"{row['final']['val_teacher_ssim']:.3f}"]
        for side in sides:
            for prec in ("fp32", "int8"):
                ms = row[f"ms_{prec}_{side}"]
                ratio = te[f"ms_{prec}_{side}"] / ms
                cells.append(f"{ms:.1f}" + ("" if name == "teacher" else f" ({ratio:.1f}x)"))
        cells += [f"{row['e2e_s']:.2f}", f"{te['e2e_s'] / row['e2e_s']:.1f}x"]
        print(" | ".join(cells))
    for name, row in rows.items():
        extra = f", distilled {row['distill_min']:.1f} min" if "distill_min" in row else ""
        print(f"{name}: int8 PSNR vs fp32 {row['int8_psnr']} dB{extra}; GMACs ratio {te['gmacs'] / row['gmacs']:.1f}x")
    (args.out / "bench_distill.json").write_text(json.dumps(rows, indent=2, default=str))
    print(f"figures: {args.out / 'bench_distill.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
