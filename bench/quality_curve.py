"""Quality over wall-clock time: presets trained on the bundled sample data, side by side.

Each preset is trained for real (Ray Train, the preset's workers, this machine's cores) with
validation every ``--every`` steps; the curve is what training logs on the *selection* split
(raystyle.methods.quality): the ground-truth PSNR gain over the photo itself (the sample data's test
split is paired), the domain score (mean P(B)), content SSIM and KID-EL0. Time is wall clock
from the ``fit`` call (Ray's worker start-up included). Then the figures to report:
``raystyle evaluate`` on the *reporting* split (images the ranking never saw) of the best
checkpoint by the selection split and of the last one, beside the photo, the colour-transfer
baseline and the untrained nets. Prints a table per preset, the time validation adds per step,
and writes a PNG plot of the (selection split) gain over time.

    python bench/quality_curve.py                                  # tiny and cpu, 10 min each
    python bench/quality_curve.py --presets cpu --minutes 10 --plot docs/quality_curve.png
    python bench/quality_curve.py --presets paper --minutes 30 --set cluster.use_gpu=true  # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raystyle import runlog  # noqa: E402
from raystyle.cluster import connect
from raystyle.config import load_config  # noqa: E402
from raystyle.data.datasets import write_sample_dataset  # noqa: E402
from raystyle.train.loop import fit, total_steps


def run(preset: str, data: Path, storage: Path, minutes: float, every: int, overrides: list[str]):
    base = load_config(preset, overrides)
    # probe: 40 steps, no validation, to size the run to the time budget
    probe = base.replace(train={"max_steps": 40, "validate": False, "checkpoint_every": 10**6,
                                "sample_every": 10**6, "log_every": 10},
                         cluster={"storage": str(storage)})
    fit(probe, data, f"{preset}-probe", verbose=False)
    recs = runlog.read_metrics(storage / f"{preset}-probe")
    rate = 1.0 / (sum(r["step_time_s"] for r in recs[1:]) / max(1, len(recs) - 1))
    # the probe's steady rate includes no validation: shave 5% for it and for start-up; a
    # preset whose whole schedule is shorter runs its schedule (its learning rate is 0 after)
    n = len(list((data / "trainA").iterdir()))
    schedule = total_steps(base, n, base.cluster.workers)
    max_steps = min(schedule, int(minutes * 60 * rate * 0.95))
    cfg = base.replace(train={"max_steps": max_steps, "validate_every": every,
                              "checkpoint_every": max(every, max_steps // 4), "log_every": every},
                       cluster={"storage": str(storage)})
    print(f"\n== {preset}: {max_steps} steps ({rate:.1f} steps/s probed; schedule {schedule} steps)",
          flush=True)
    start = time.time()
    fit(cfg, data, preset, verbose=False)
    wall = time.time() - start
    records = [r for r in runlog.read_metrics(storage / preset) if "val_time_s" in r]
    rows = [{"minutes": round((r["time"] - start) / 60, 2), "step": r["step"],
             "gain_db": r["val_gt_gain_db"], "gt_psnr": r["val_gt_psnr"],
             "domain": r.get("val_domain_score"), "ssim": r["val_content_ssim"],
             "kid": r.get("val_kid_el0"), "val_s": r["val_time_s"], "step_s": r["step_time_s"]}
            for r in records]
    from raystyle.cli.common import print_evaluation
    from raystyle.train.evaluate import evaluate

    print(f"-- {preset}: reporting split (the best checkpoint by the selection split, and the last one)")
    ev = evaluate(storage / preset, data, limit=64)
    print_evaluation(ev)
    return {"preset": preset, "wall_s": round(wall, 1), "steps": max_steps, "every": every, "rows": rows,
            "report": ev.to_dict()}


def table(result) -> str:
    lines = ["selection split (what validation logs and ranks checkpoints on):",
             f"{'min':>6} {'step':>6} {'gain dB':>8} {'GT PSNR':>8} {'domain':>7} {'SSIM':>6} {'KID x1e3':>9}"]
    for r in result["rows"]:
        dom = f"{r['domain']:.2f}" if r["domain"] is not None else "-"
        kid = f"{1000 * r['kid']:.1f}" if r.get("kid") is not None else "-"
        lines.append(f"{r['minutes']:6.2f} {r['step']:6d} {r['gain_db']:+8.2f} {r['gt_psnr']:8.2f} "
                     f"{dom:>7} {r['ssim']:6.3f} {kid:>9}")
    rows = result["rows"]
    val = sum(r["val_s"] for r in rows) / len(rows)
    step = sum(r["step_s"] for r in rows) / len(rows)
    lines.append(f"validation: {val:.3f} s per run every {result['every']} steps = "
                 f"{val / result['every'] * 1000:.1f} ms per step ({100 * val / result['every'] / step:.1f}% "
                 f"of a {step * 1000:.0f} ms step); total {result['wall_s'] / 60:.1f} min")
    return "\n".join(lines)


def plot(results, path: Path) -> None:
    """Gain over time, one line per preset (PIL: no plotting library needed)."""
    from PIL import Image, ImageDraw

    w, h, m = 720, 360, 56
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    tmax = max(r["minutes"] for res in results for r in res["rows"]) or 1
    gains = [r["gain_db"] for res in results for r in res["rows"]]
    lo, hi = min(0.0, min(gains)) - 0.5, max(3.5, max(gains)) + 0.5

    def xy(t, g):
        return m + (w - 2 * m) * t / tmax, h - m - (h - 2 * m) * (g - lo) / (hi - lo)

    d.rectangle([m, m, w - m, h - m], outline="black")
    for g in range(int(lo), int(hi) + 1):
        y = xy(0, g)[1]
        d.line([m, y, w - m, y], fill=(225, 225, 225) if g != 3 else (255, 170, 170))
        d.text((8, y - 6), f"{g:+d} dB", fill="black")
    for k in range(int(tmax) + 1):
        x = xy(k, lo)[0]
        d.text((x - 4, h - m + 6), str(k), fill="black")
    d.text((w // 2 - 70, h - 22), "minutes on 2 CPU cores", fill="black")
    d.text((m, 18), "ground-truth PSNR gain over the photo (selection split); red: +3 dB", fill="black")
    colours = [(31, 119, 180), (44, 160, 44), (148, 103, 189), (255, 127, 14)]  # red: the goal
    for res, colour in zip(results, colours, strict=False):
        pts = [xy(r["minutes"], r["gain_db"]) for r in res["rows"]]
        d.line(pts, fill=colour, width=3)
        d.text((pts[-1][0] - 60, pts[-1][1] - 16), res["preset"], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,cpu")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget per preset")
    ap.add_argument("--every", type=int, default=100, help="validate every N steps")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--plot", type=Path, help="write the PNG plot here")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--per-photo", type=int, default=None,
                    help="train crops per sample photo and domain (default: the sample data's)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="raystyle_quality_"))
    data = work / "sample"
    write_sample_dataset(data, **({"per_photo": args.per_photo} if args.per_photo else {}))
    connect(None)
    results = []
    for preset in args.presets.split(","):
        res = run(preset, data, work / "runs", args.minutes, args.every, args.overrides)
        print(table(res), flush=True)
        results.append(res)
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
