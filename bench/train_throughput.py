"""Training throughput: a plain PyTorch loop vs Ray Train (1 and 2 workers), side by side.

All three run the same CycleGAN step (raystyle.methods.cyclegan) on the same data pipeline and
the same cores, one after another in this process, interleaved for ``--rounds`` rounds
(small shared machines are noisy: each figure is the median over rounds). Steady-state
images/s excludes the first ``--warmup`` steps; Ray's fixed start-up cost (worker group,
process group) is printed separately.

    python bench/train_throughput.py                   # tiny preset, 64 px, CPU
    python bench/train_throughput.py --gpu --size 256 --config paper --amp off,bf16,fp16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raystyle import runlog  # noqa: E402
from raystyle.config import Config, load_config  # noqa: E402
from raystyle.data.datasets import (  # noqa: E402
    EpochBatches,
    UnpairedDataset,
    check_dataset,
    write_sample_dataset,
)
from raystyle.methods.cyclegan import CycleGAN  # noqa: E402


def plain_loop(cfg: Config, data: Path, steps: int, warmup: int, device: str) -> float:
    """images/s of a single-process loop: no Ray, no DDP."""
    a, b = check_dataset(data, cfg.data.crop_size)
    ds = UnpairedDataset(a.files, b.files, cfg.data, cfg.train.seed)
    loader = DataLoader(ds, batch_sampler=EpochBatches(len(ds), 1, 0, cfg.train.batch_size, 0),
                        num_workers=cfg.data.loader_workers,
                        persistent_workers=cfg.data.loader_workers > 0)
    model = CycleGAN(cfg.model, cfg.loss, cfg.train, device)
    it = iter(loader)
    for _ in range(warmup):
        model.train_step(*next(it))
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        losses = model.train_step(*next(it))
    float(losses["g_total"])  # wait for the device
    return steps * cfg.train.batch_size / (time.perf_counter() - start)


def ray_train(cfg: Config, data: Path, workers: int, cpus: int, steps: int, warmup: int,
              storage: Path, use_gpu: bool) -> tuple[float, float]:
    """(steady images/s from the run's metrics log, wall-clock seconds of the whole fit)."""
    from raystyle.train.loop import fit

    log_every = max(1, steps // 10)
    total = warmup + steps
    cfg = cfg.replace(
        train={"max_steps": total, "log_every": log_every, "checkpoint_every": total,
               "sample_every": total * 10},
        cluster={"workers": workers, "cpus_per_worker": cpus, "use_gpu": use_gpu,
                 "storage": str(storage)},
    )
    name = f"bench_{workers}w_{time.time_ns()}"
    start = time.perf_counter()
    result = fit(cfg, data, name, verbose=False)
    wall = time.perf_counter() - start
    recs = [r for r in runlog.read_metrics(result.run_dir) if r["step"] > warmup]
    # Each record covers log_every steps; the last may be shorter and includes the checkpoint.
    steady = [r["images_per_s"] for r in recs[:-1]] or [recs[-1]["images_per_s"]]
    return statistics.median(steady), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny")
    p.add_argument("--size", type=int, default=64, help="crop size in pixels")
    p.add_argument("--batch", type=int, default=1, help="batch size per worker")
    p.add_argument("--steps", type=int, default=60, help="timed steps")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--amp", default="off", help="comma list for the plain loop: off,bf16,fp16")
    p.add_argument("--data", type=Path, help="dataset (default: the sample dataset, written to a temp dir)")
    p.add_argument("--skip-ray", action="store_true", help="only the plain loop (e.g. AMP sweeps)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (median reported)")
    args = p.parse_args()

    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="raystyle_bench_"))
    data = args.data or tmp / "data"
    if args.data is None:
        write_sample_dataset(data, size=max(args.size + args.size // 8, 32) // 4 * 4 + 4, per_photo=4)
    cfg = load_config(args.config, [f"data.crop_size={args.size}", f"data.load_size={args.size + args.size // 8}",
                                    f"train.batch_size={args.batch}"])
    device = "cuda" if args.gpu else "cpu"
    torch.set_num_threads(cores)
    print(f"# {args.config} preset, {args.size} px, batch {args.batch}, {args.steps} timed steps "
          f"after {args.warmup} warm-up, {cores} cores, device {device}, torch {torch.__version__}")
    results: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {}
    ray_setups = []
    if not args.skip_ray:
        from raystyle.cluster import connect

        connect()  # the local Ray exactly as `raystyle train` starts it
        per_worker = cores if not args.gpu else max(1, cores // 2)
        ray_setups = [(1, per_worker), (2, per_worker if args.gpu else max(1, per_worker // 2))]
        if args.gpu:
            ray_setups = [s for s in ray_setups if torch.cuda.device_count() >= s[0]]
    for r in range(args.rounds):
        for amp in args.amp.split(","):
            ips = plain_loop(cfg.replace(train={"amp": amp}), data, args.steps, args.warmup, device)
            results.setdefault(f"plain PyTorch loop (amp={amp})", []).append(ips)
            print(f"round {r + 1}: plain amp={amp}: {ips:.2f} img/s", flush=True)
        for workers, cpus in ray_setups:
            ips, wall = ray_train(cfg, data, workers, cpus, args.steps, args.warmup, tmp / "runs", args.gpu)
            label = f"Ray Train, {workers} worker(s) x {cpus} CPU"
            results.setdefault(label, []).append(ips)
            walls.setdefault(label, []).append(wall)
            print(f"round {r + 1}: {label}: {ips:.2f} img/s (fit {wall:.1f} s)", flush=True)
    print(f"\nmedian over {args.rounds} round(s):")
    medians = {k: statistics.median(v) for k, v in results.items()}
    for label, ips in medians.items():
        extra = f"  (whole fit {statistics.median(walls[label]):.1f} s incl. start-up)" if label in walls else ""
        print(f"  {label:<44} {ips:8.2f} img/s{extra}")
    base_label = next(iter(medians))
    print(f"\nratios against the {base_label}:")
    for label, ips in list(medians.items())[1:]:
        print(f"  {label:<44} {ips / medians[base_label]:6.3f}x   "
              f"(overhead {100 * (1 - ips / medians[base_label]):+.1f}%)")


if __name__ == "__main__":
    main()
