"""Inference speed: torch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, side by side.

    python bench/infer.py                         # paper-size generator (ResNet-9, ngf 64)
    python bench/infer.py --checkpoint RUN_OR_CKPT  # a trained checkpoint (PSNR is meaningful)

Prints ms/image at each size (median of --repeats runs, interleaved), the ratios, int8's
PSNR against fp32, end-to-end `raystyle stylize` on a 1024 px JPEG (decode + infer +
encode), and the peak memory of stylizing a 6000x4000 photo by tiles (in a child process).
Without --checkpoint the weights are random: speed is the same, PSNR is indicative only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raystyle import checkpoint as ckpt  # noqa: E402
from raystyle.config import Config  # noqa: E402
from raystyle.cyclegan import CycleGAN  # noqa: E402
from raystyle.data import sample_photo_dir  # noqa: E402
from raystyle.export import export_style, load_generator  # noqa: E402
from raystyle.images import decode, encode  # noqa: E402
from raystyle.stylize import Stylizer, _to_input, make_session  # noqa: E402


def photo(side: int) -> np.ndarray:
    img = decode(sample_photo_dir() / "astronaut.png")
    return np.asarray(img.resize((side, side), Image.BICUBIC))


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def random_paper_checkpoint(folder: Path) -> Path:
    cfg = Config()  # the paper's architecture
    model = CycleGAN(cfg.model, cfg.loss, cfg.train)
    out = folder / "checkpoint_00000000"
    ckpt.save_shared(out, cfg, model.nets_state(), {**model.train_state(), "world_size": 1})
    return out


# Peak RSS from VmHWM: getrusage's ru_maxrss is inherited from the parent across fork/exec
# on Linux, so in a child it would report the benchmark process's own peak.
PEAK_SCRIPT = """
import sys, time
import numpy as np
from PIL import Image
from raystyle.stylize import Stylizer
s = Stylizer(sys.argv[1], models_dir=sys.argv[2], precision=sys.argv[4], tile=int(sys.argv[5]))
start = time.perf_counter()
out = s.stylize(sys.argv[3])
secs = time.perf_counter() - start
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(out.shape[1], out.shape[0], secs, int(hwm.split()[1]) / 1024)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="trained checkpoint or run dir (default: random paper-size nets)")
    p.add_argument("--sizes", default="256,512,1024")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tile", type=int, default=1024, help="tile size for the 6000x4000 run")
    p.add_argument("--skip-big", action="store_true", help="skip the 6000x4000 peak-memory run")
    args = p.parse_args()

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="raystyle_infer_"))
    source = args.checkpoint or random_paper_checkpoint(tmp)
    models = tmp / "models"
    style = export_style(source, "bench", models_dir=models, precisions=("fp32", "int8"))
    gen, config, _ = load_generator(ckpt.resolve(source) if args.checkpoint else source, "ab")
    arch = f"ngf {config.model.ngf}, {config.model.n_blocks} blocks"
    print(f"# generator: {arch} ({'trained' if args.checkpoint else 'random weights'}); "
          f"{threads} threads; torch {torch.__version__}; int8 PSNR vs fp32 at export: "
          f"{style.meta['precisions']['int8']['psnr_vs_fp32_db']} dB")
    fp32 = make_session(style.file("fp32"), "cpu")
    int8 = make_session(style.file("int8"), "cpu")
    print(f"{'size':>6} {'torch eager':>12} {'ORT fp32':>10} {'ORT int8':>10} {'fp32/torch':>11} "
          f"{'int8/fp32':>10} {'int8 PSNR':>10}")
    for side in (int(s) for s in args.sizes.split(",")):
        x = _to_input(photo(side)[None])
        xt = torch.from_numpy(x)

        def run_torch(xt=xt):
            with torch.no_grad():
                return gen(xt).numpy()

        ms_torch = timed(run_torch, args.repeats)
        ms_fp32 = timed(lambda x=x: fp32.run(None, {"image": x}), args.repeats)
        ms_int8 = timed(lambda x=x: int8.run(None, {"image": x}), args.repeats)
        a, b = fp32.run(None, {"image": x})[0], int8.run(None, {"image": x})[0]
        db = 10 * np.log10(1.0 / max(float((((a - b) / 2) ** 2).mean()), 1e-12))
        print(f"{side:>6} {ms_torch:>10.1f}ms {ms_fp32:>8.1f}ms {ms_int8:>8.1f}ms "
              f"{ms_torch / ms_fp32:>10.2f}x {ms_fp32 / ms_int8:>9.2f}x {db:>8.2f}dB", flush=True)

    # End to end on a 1024 px JPEG: decode + infer + encode, in process and through the CLI.
    jpeg = tmp / "photo1024.jpg"
    Image.fromarray(photo(1024)).save(jpeg, quality=92)
    for precision in ("fp32", "int8"):
        s = Stylizer("bench", models_dir=models, precision=precision)

        def e2e(s=s):
            return encode(s.stylize(jpeg), "jpeg")

        ms = timed(e2e, max(2, args.repeats // 2))
        cmd = [sys.executable, "-m", "raystyle", "stylize", str(jpeg), "--style", "bench",
               "--models-dir", str(models), "--precision", precision, "-o", str(tmp / f"out_{precision}.jpg")]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - start
        print(f"end to end 1024 px JPEG ({precision}): {ms:.0f} ms in process; "
              f"`raystyle stylize` command {wall:.2f} s including Python start-up")

    if not args.skip_big:
        big = tmp / "photo6000x4000.jpg"
        Image.fromarray(photo(1024)).resize((6000, 4000), Image.BICUBIC).save(big, quality=90)
        for precision in ("fp32", "int8"):
            out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, "bench", str(models), str(big),
                                  precision, str(args.tile)], check=True, capture_output=True, text=True)
            w, h, secs, peak = out.stdout.split()
            print(f"6000x4000 by {args.tile}px tiles ({precision}): {float(secs):.1f} s, "
                  f"peak RSS {float(peak):.0f} MiB")


if __name__ == "__main__":
    main()
