"""Batch stylization throughput: a plain single-process loop vs `raystyle batch` (Ray Data).

Both do the same work on the same cores and inputs: read a file, decode, Stylizer, encode,
write. The loop runs one Stylizer with every core as ONNX Runtime threads; the Ray job runs
``--workers`` actors x ``--threads`` threads (default: cores / threads actors, so actors x
threads = cores). Rounds are interleaved and each figure is the median (shared machines are
noisy). The Ray figure is the whole job as a user sees it (actor start-up included, Ray
itself already running); a 1-batch job measures that fixed cost, and "steady" is the
marginal rate: (images - one batch) / (job seconds - 1-batch job seconds).

    python bench/batch.py                          # random-init tiny generator, 64 x 256 px
    python bench/batch.py --preset paper           # paper-size ResNet-9 (slower, inference-bound)
    python bench/batch.py --style NAME --models-dir DIR --images 256
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raystyle import checkpoint as ckpt  # noqa: E402
from raystyle.batch.images import run_batch
from raystyle.config import load_config  # noqa: E402
from raystyle.data.datasets import SAMPLE_PHOTOS, sample_photo_dir  # noqa: E402
from raystyle.data.images import IMAGE_SUFFIXES, decode, encode  # noqa: E402
from raystyle.export import export_style
from raystyle.infer.generator import Stylizer
from raystyle.methods.cyclegan import CycleGAN  # noqa: E402


def random_style(folder: Path, preset: str) -> Path:
    """Export a random-init generator of ``preset`` as style 'bench'; returns the models dir."""
    cfg = load_config(preset)
    model = CycleGAN(cfg.model, cfg.loss, cfg.train)
    source = folder / "checkpoint_00000000"
    ckpt.save_shared(source, cfg, model.nets_state(), {**model.train_state(), "world_size": 1})
    export_style(source, "bench", models_dir=folder / "models", precisions=("fp32",))
    return folder / "models"


def make_inputs(folder: Path, n: int, side: int) -> None:
    """``n`` side x side JPEGs: crops of the scikit-image photos, in two subfolders."""
    photos = [decode(sample_photo_dir() / name) for name in SAMPLE_PHOTOS]
    for i in range(n):
        img = photos[i % len(photos)]
        w, h = img.size
        s = min(w, h) * (0.5 + 0.5 * ((i * 7) % 10) / 10)  # different crops, same output size
        left, top = (w - s) * ((i * 3) % 5) / 4, (h - s) * ((i * 5) % 4) / 3
        crop = img.crop((int(left), int(top), int(left + s), int(top + s))).resize((side, side), Image.BICUBIC)
        dest = folder / f"part{i % 2}" / f"img{i:04d}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        crop.save(dest, quality=92)


def plain_loop(src: Path, out: Path, style: str, models: Path, threads: int) -> float:
    """images/s of read + decode + stylize + encode + write in one process."""
    stylizer = Stylizer(style, models_dir=models, provider="cpu", threads=threads)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    start = time.perf_counter()
    for path in files:
        image = stylizer.stylize(decode(path.read_bytes(), name=str(path)))
        dest = out / path.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(encode(image, "jpeg"))
    return len(files) / (time.perf_counter() - start)


def ray_job(src: Path, out: Path, style: str, models: Path, workers: int, threads: int,
            batch_size: int) -> tuple[float, float]:
    """(images/s of the job, its seconds), actor start-up included."""
    result = run_batch(src, out, style, models_dir=models, workers=workers, cpus_per_worker=threads,
                       batch_size=batch_size, echo=None)
    assert result.stylized == result.todo and not result.errors, result.summary()
    return result.images_per_s, result.seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--style", help="registry style (default: a random-init generator of --preset)")
    p.add_argument("--models-dir", type=Path, help="registry of --style")
    p.add_argument("--preset", default="tiny", help="architecture of the random style (tiny, paper)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per Ray actor")
    p.add_argument("--workers", type=int, help="Ray actors (default: cores / --threads)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    import ray

    cores = os.cpu_count() or 1
    workers = args.workers or max(1, cores // args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="raystyle_batch_bench_"))
    style, models = args.style, args.models_dir
    if style is None:
        style, models = "bench", random_style(tmp, args.preset)
    src = tmp / "in"
    make_inputs(src, args.images, args.size)
    one_batch = tmp / "in_one_batch"
    make_inputs(one_batch, args.batch_size, args.size)
    ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    print(f"# {args.images} JPEGs of {args.size} px, style {style!r} "
          f"({'random ' + args.preset if args.style is None else 'registry'}); {cores} cores; "
          f"loop: 1 process x {cores} threads; Ray Data: {workers} actors x {args.threads} "
          f"threads, batches of {args.batch_size}")
    loop, job, seconds, startup = [], [], [], []
    for r in range(args.rounds):
        loop.append(plain_loop(src, tmp / f"loop{r}", style, models, cores))
        ips, secs = ray_job(src, tmp / f"ray{r}", style, models, workers, args.threads, args.batch_size)
        job.append(ips)
        seconds.append(secs)
        startup.append(ray_job(one_batch, tmp / f"one{r}", style, models, workers, args.threads,
                               args.batch_size)[1])
        print(f"round {r + 1}: loop {loop[-1]:.2f} images/s | Ray Data {job[-1]:.2f} images/s "
              f"| 1-batch job {startup[-1]:.1f} s", flush=True)
    lp, jb, st = statistics.median(loop), statistics.median(job), statistics.median(startup)
    steady = (args.images - args.batch_size) / max(statistics.median(seconds) - st, 1e-9)
    print(f"plain loop     {lp:8.2f} images/s")
    print(f"Ray Data job   {jb:8.2f} images/s   {jb / lp:.2f}x the loop (goal 0.85x; "
          f"actor start-up ~{st:.1f} s included)")
    print(f"Ray Data steady{steady:8.2f} images/s   {steady / lp:.2f}x the loop "
          "(start-up taken off)")
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
