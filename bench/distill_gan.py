"""Distillation's adversarial weight, chosen by a figure that can see realism.

PSNR to the teacher is highest at ``distill.lambda_gan`` 0 by construction (the other terms
are the teacher's pixels and features), so it cannot choose the adversarial weight. For each
``--lambda-gan`` value this distils the same student from the same teacher for the same steps,
then measures on the dataset's *reporting* split (raystyle.methods.quality.divide: images the
runs never ranked checkpoints on), for the run's best checkpoint (by PSNR to the teacher on the
selection split, what ``--best auto`` exports) and its last one:

- PSNR and SSIM to the teacher (agreement),
- KID-EL0 (+ its standard error) and FID-EL0 of the student's output against held-out B
  (realism, raystyle.quality: EfficientNet-Lite0 ImageNet features),
- the ground-truth PSNR where the test split is paired (the sample data),

beside the teacher's own KID and the colour-transfer baseline's.

    python bench/distill_gan.py --teacher RUN --data DIR [--student student-8] [--steps 600] \\
        [--lambda-gan 0,0.1,1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="teacher run or checkpoint")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--student", default="student-8")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lambda-gan", default="0,0.1,1", help="comma-separated values of distill.lambda_gan")
    ap.add_argument("--limit", type=int, default=64, help="reporting-split images at most")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cpus-per-worker", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="raystyle_bench_distill_gan_")))
    args = ap.parse_args()

    from raystyle import checkpoint as ckpt
    from raystyle import quality as pretrained
    from raystyle.config import Config
    from raystyle.core.nets import build_generator
    from raystyle.methods import quality
    from raystyle.methods.cyclegan import generator_state
    from raystyle.methods.distill import load_teacher, plan
    from raystyle.train.evaluate import best_and_last
    from raystyle.train.loop import fit

    teacher = load_teacher(args.teacher, "ab")
    tcfg = Config.from_dict(teacher["config"])
    split = quality.split_dataset(args.data, tcfg.data.crop_size, tcfg.train.val_holdout)
    rep_a, rep_b = split.part("report")
    held = quality.HeldOut.from_files(rep_a, rep_b, tcfg.data, args.limit, split.paired)
    val = quality.Validator(held)
    t_net = build_generator(tcfg.model).eval()
    t_net.load_state_dict(teacher["g"])
    with torch.no_grad():
        t_out = t_net(held.a)
    reference = torch.stack([quality.centre_tensor(f, tcfg.data) for f in split.train_b[:args.limit]])
    rows = {"photo": val.measure(held.a), "colour map": val.measure(pretrained.colour_transfer(held.a, reference)),
            "teacher": val.measure(t_out)}
    for row in rows.values():
        row["val_teacher_psnr"] = None
    print(f"reporting split: {len(held.a)} A / {len(held.b)} B images of {split.source}"
          f"{' (paired)' if split.paired else ''}; teacher {teacher['checkpoint']} step {teacher['step']}", flush=True)

    def student_figures(path) -> dict:
        config, nets = ckpt.load_nets(path)
        g = build_generator(config.model).eval()
        g.load_state_dict(generator_state(nets, "ab"))
        with torch.no_grad():
            out = g(held.a)
        figures = val.measure(out)
        figures["val_teacher_psnr"] = round(float(quality.psnr(out, t_out).mean()), 3)
        figures["step"] = ckpt.read_manifest(path)["step"]
        return figures

    for lam in (float(x) for x in args.lambda_gan.split(",")):
        cfg, extra = plan(teacher["checkpoint"], args.student, None, [f"distill.lambda_gan={lam:g}"],
                          {"cluster": {"workers": args.workers, "cpus_per_worker": args.cpus_per_worker,
                                       "storage": str(args.out / "runs")},
                           "train": {"max_steps": args.steps}})
        name = f"{args.student}-gan{lam:g}"
        start = time.perf_counter()
        result = fit(cfg, args.data, name, extra=extra, verbose=False)
        minutes = (time.perf_counter() - start) / 60
        best, last = best_and_last(result.run_dir)
        rows[f"λ_gan {lam:g} best"] = student_figures(best)
        rows[f"λ_gan {lam:g} last"] = student_figures(last or best)
        print(f"λ_gan {lam:g}: {args.steps} steps in {minutes:.1f} min", flush=True)

    print(f"\n{'':22} {'PSNR vs teacher':>15} {'KID-EL0 x1e3':>14} {'FID-EL0':>8} {'GT PSNR':>8} {'step':>6}")
    for name, r in rows.items():
        tp = f"{r['val_teacher_psnr']:.2f}" if r.get("val_teacher_psnr") is not None else "-"
        kid = f"{1000 * r['val_kid_el0']:.1f}±{1000 * r['val_kid_el0_se']:.1f}"
        gt = f"{r['val_gt_psnr']:.2f}" if "val_gt_psnr" in r else "-"
        print(f"{name:22} {tp:>15} {kid:>14} {r['val_fid_el0']:8.1f} {gt:>8} {r.get('step', '-'):>6}")
    (args.out / "distill_gan.json").write_text(json.dumps(rows, indent=2))
    print(f"figures: {args.out / 'distill_gan.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
