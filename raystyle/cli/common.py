"""What several commands share: default paths, the training and cluster flags, and the lines
a run, an evaluation or a style prints. Heavy modules (torch, Ray) load inside the functions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from raystyle.config import home

HOME = home()
# Shipped inside the package (serve_configs/ in a clone points here), so a wheel has it too.
SERVE_CONFIG = Path(__file__).resolve().parent.parent / "serve" / "configs" / "local.yaml"
DEMO_STYLE = "demo"


def add_preserve_color_arg(p, what: str = "the input") -> None:
    """``--preserve-color`` and ``--color-mode MODE`` (raystyle.data.colour); read them back with
    ``preserve_color_of(args)``. A flag, not a flag with an optional value: ``--preserve-color
    photo.jpg`` must not read the photo as a mode."""
    from raystyle.data.colour import DEFAULT_MODE, MODES

    p.add_argument("--preserve-color", action="store_true",
                   help=f"keep {what}'s colours (Gatys et al. 2017; how: --color-mode)")
    p.add_argument("--color-mode", choices=MODES, default=None, metavar="MODE",
                   help=f"how --preserve-color keeps them (implies it; default {DEFAULT_MODE}): luminance: "
                   "transfer on luminance, the style's luminance matched to the content's, then "
                   "the content's chroma (a style without style images: the output's luminance "
                   "matched to the content's mean and std); histogram: the style's colours "
                   "matched to the content's (without style images: the output's); swap: the "
                   "output's luminance on the content's chroma, nothing matched (the old behaviour)")


def preserve_color_of(args: argparse.Namespace) -> str | None:
    """The colour mode ``--preserve-color`` / ``--color-mode`` ask for, or None."""
    from raystyle.data.colour import DEFAULT_MODE

    if args.color_mode is not None:
        return args.color_mode
    return DEFAULT_MODE if args.preserve_color else None


def say(text: str) -> None:
    """A progress line of a long command: ``[raystyle] ...``, flushed."""
    print(f"[raystyle] {text}", flush=True)


def add_train_args(p: argparse.ArgumentParser, data_required: bool) -> None:
    p.add_argument("--data", required=data_required, metavar="DIR",
                   help="dataset folder with trainA/ and trainB/ (see `raystyle data`); "
                   "--method fast: any folder of photos (or a dataset: its trainA/)")
    p.add_argument("--style", required=data_required, metavar="NAME",
                   help="run name: the run lives in STORAGE/NAME; the same name resumes it")
    p.add_argument("--config", metavar="YAML",
                   help="YAML file or preset name (paper, cpu, tiny; fast, fast-small); default: "
                   "the paper's recipe (--method fast: the `fast` preset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    add_cluster_args(p, "where runs are written: a folder or a URI such as s3://bucket/runs "
                        "(cluster.storage; default $RAYSTYLE_HOME/runs)")


def add_cluster_args(p: argparse.ArgumentParser, storage_help: str) -> None:
    """The Ray Train flags that `train` and `distill` share."""
    p.add_argument("--workers", type=int, metavar="N", help="training workers (cluster.workers)")
    p.add_argument("--cpus-per-worker", type=int, metavar="N", help="CPUs per worker (cluster.cpus_per_worker)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (cluster.use_gpu)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimisation steps (train.max_steps)")
    p.add_argument("--storage", metavar="DIR_OR_URI", help=storage_help)
    p.add_argument("--address", metavar="ADDR", help="Ray address (default: RAY_ADDRESS, else start a local Ray)")
    add_verbose_arg(p)


VERBOSE_HELP = ("also print Ray's own INFO lines (worker groups, every reported result, Serve access "
                "lines); without it they stay in Ray's log files, whose folder is printed")


def add_verbose_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)


def flag_overrides(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The --set items with the flags' own after them, and the string flags (storage, address)."""
    overrides = list(args.overrides)
    for flag, key in (("workers", "cluster.workers"), ("cpus_per_worker", "cluster.cpus_per_worker"),
                      ("max_steps", "train.max_steps")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if getattr(args, "gpu", False):
        overrides.append("cluster.use_gpu=true")
    # Strings are set directly: through YAML, "2024" would be a number and "#" a comment.
    return overrides, {k: getattr(args, k) for k in ("storage", "address") if getattr(args, k, None)}


def print_run(result) -> None:
    """The two lines a finished training (or distillation) run ends with."""
    print(f"run directory:    {result.run_dir}")
    print(f"final checkpoint: {result.checkpoint} (step {result.step})")


def run_training(cfg, data: Path, style: str, extra=None):
    """Train (or resume) STORAGE/``style`` with Ray Train; prints where the run is."""
    from raystyle.train.loop import fit

    result = fit(cfg, data, style, extra=extra)
    print_run(result)
    return result


def export_run(result, style_name: str, models_dir) -> None:
    """Export a finished run with a Ray task: its best checkpoint by held-out validation when
    the run ranked them, else the last."""
    from raystyle.runlog import read_validation
    from raystyle.train.loop import export_on_cluster

    best = "auto" if read_validation(result.run_dir).get("best_metric") else None
    style = export_on_cluster(result.run_dir if best else result.checkpoint, style_name,
                              models_dir=models_dir, precisions=("fp32", "int8"), best=best)
    print(f"exported style:   {style.name} -> {style.path}")


EVAL_ROWS = (  # (key, label, format)
    ("val_gt_psnr", "ground-truth PSNR, dB (higher: closer to B)", "{:.2f}"),
    ("val_kid_el0", "KID-EL0 x1000 vs held-out B (lower)", "kid"),
    ("val_fid_el0", "FID-EL0 vs held-out B (lower)", "{:.1f}"),
    ("val_domain_score", "domain score, mean P(B)", "{:.2f}"),
    ("val_content_ssim", "content SSIM vs photo (1: same structure)", "{:.3f}"),
    ("val_cycle_psnr", "cycle-reconstruction PSNR, dB", "{:.2f}"),
    ("val_colour_distance", "colour distance to B (lower: closer)", "{:.2f}"),
)


def _cell(figures: dict, key: str, fmt: str) -> str:
    if key not in figures:
        return "-"
    if fmt == "kid":
        return f"{1000 * figures[key]:.1f}±{1000 * figures.get('val_kid_el0_se', 0.0):.1f}"
    return fmt.format(figures[key])


def print_evaluation(ev, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(ev.to_dict()))
        return
    paired = ", paired with ground truth" if ev.paired else ""
    print(f"held-out figures ({ev.images} images of the {ev.split} split of {ev.source}{paired}; "
          f"EL0: EfficientNet-Lite0 features, not Inception's FID):")
    columns = [("photo", ev.identity), ("colour map", ev.baseline), ("untrained", ev.untrained),
               (f"step {ev.step}", ev.trained)]
    if ev.last is not None:
        columns.append((f"last {ev.last_step}", ev.last))
    print(f"  {'':40}" + "".join(f" {name:>11}" for name, _ in columns))
    for key, label, fmt in EVAL_ROWS:
        if key not in ev.trained:
            continue
        print(f"  {label:40}" + "".join(f" {_cell(d, key, fmt):>11}" for _, d in columns))
    if ev.paired:
        line = (f"ground-truth PSNR gain over the photo itself: {ev.trained['val_gt_gain_db']:+.2f} dB "
                f"(colour map: {ev.baseline['val_gt_gain_db']:+.2f} dB; untrained nets: "
                f"{ev.untrained['val_gt_gain_db']:+.2f} dB")
        if ev.last is not None:
            line += f"; last checkpoint: {ev.last['val_gt_gain_db']:+.2f} dB"
        print(line + ")")
    if ev.classifier:
        print(ev.classifier)
    for note in ev.notes:
        print(note)


def print_style(style) -> None:
    """A registry style: what it is, what it costs, where it came from, each precision's figures."""
    m = style.meta
    t = m.get("training", {})
    version = f", version {m['version']}" if m.get("version") else ""
    arb = m.get("arbitrary")
    if arb:
        print(f"  {style.name}: arbitrary style (AdaIN; --style-image PAINTING), {arb['features']} encoder to "
              f"{arb['code_layer']}, decoder width {m['architecture']['decoder_width']:g}, style images at "
              f"{arb['style_size']} px, step {t.get('step')}, from {t.get('run_dir')}{version}")
    else:
        print(f"  {style.name}: {m['source_domain']}->{m['target_domain']}, ngf {m['architecture']['ngf']}, "
              f"{m['architecture']['n_blocks']} blocks, step {t.get('step')}, from {t.get('run_dir')}{version}")
    cost = m.get("cost")
    if cost:
        encoder = f" (+ {cost['encoder_params'] / 1e6:.3f} M in the encoder)" if "encoder_params" in cost else ""
        print(f"    cost: {cost['gmacs']:.2f} GMACs per {cost['side']} px image, "
              f"{cost['params'] / 1e6:.3f} M parameters{encoder}")
    dist = m.get("distillation")
    if dist:
        t, vs = dist["teacher"], dist.get("vs_teacher")
        kid = f", KID-EL0 x1000 {1000 * vs['kid_el0']:.1f} to domain B" if vs and vs.get("kid_el0") is not None else ""
        figure = (f"{vs['psnr_db']:.2f} dB PSNR, SSIM {vs['ssim']:.3f} vs the teacher on {vs['held_out_images']} "
                  f"held-out images{kid}" if vs else "no held-out figure (validation was off)")
        print(f"    distilled from {t['checkpoint']} (step {t['step']}): {figure}")
    painting = m.get("style_image")
    if painting:
        print(f"    fast style net of {painting['file']} (sha256 {painting['sha256'][:12]}), "
              f"{painting['features']} features")
    for prec, e in m["precisions"].items():
        figures = []
        if "max_abs_error_vs_torch" in e:
            figures.append(f"max |ORT-torch| {max(e['max_abs_error_vs_torch'].values()):.1e}")
        if e.get("psnr_vs_fp32_db") is not None:
            figures.append(f"PSNR vs fp32 {e['psnr_vs_fp32_db']} dB")
        if e.get("tiled_psnr_db") is not None:
            figures.append(f"tiles vs whole {e['tiled_psnr_db']} dB")
        if e.get("calibration"):
            figures.append(f"calibrated on {e['calibration']['count']} images")
        if e.get("int8_graphs"):
            figures.append(f"int8: {' + '.join(e['int8_graphs'])}")
        if e.get("validated") is False:
            figures.append("NOT validated")
        if e.get("note"):
            figures.append(e["note"])
        files = f"{e['encoder']} + {e['decoder']}" if "encoder" in e else e["file"]
        print(f"    {prec:<5} {files:<18} {'; '.join(figures)}")


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM end a waiting command cleanly (KeyboardInterrupt), even where
    SIGINT was inherited as ignored (a job started in the background by a script)."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
