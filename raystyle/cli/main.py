"""`raystyle <command>`: the one command line. ``main(argv) -> exit code``.

Expected failures (bad input, bad config, a cluster that cannot run the job) print one
line, ``raystyle: error: ...``, and exit 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from raystyle.batch.images import add_parser as add_batch_parser
from raystyle.batch.images import cmd_batch
from raystyle.config import home
from raystyle.methods.nst import add_parser as add_nst_parser
from raystyle.methods.nst import cmd_nst
from raystyle.util.ports import port_free

HOME = home()
# Shipped inside the package (serve_configs/ in a clone points here), so a wheel has it too.
SERVE_CONFIG = Path(__file__).resolve().parent.parent / "serve" / "configs" / "local.yaml"
DEMO_STYLE = "demo"


def _add_train_args(p: argparse.ArgumentParser, data_required: bool) -> None:
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
    _add_cluster_args(p, "where runs are written: a folder or a URI such as s3://bucket/runs "
                         "(cluster.storage; default $RAYSTYLE_HOME/runs)")


def _add_cluster_args(p: argparse.ArgumentParser, storage_help: str) -> None:
    """The Ray Train flags that `train` and `distill` share."""
    p.add_argument("--workers", type=int, metavar="N", help="training workers (cluster.workers)")
    p.add_argument("--cpus-per-worker", type=int, metavar="N", help="CPUs per worker (cluster.cpus_per_worker)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (cluster.use_gpu)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimisation steps (train.max_steps)")
    p.add_argument("--storage", metavar="DIR_OR_URI", help=storage_help)
    p.add_argument("--address", metavar="ADDR", help="Ray address (default: RAY_ADDRESS, else start a local Ray)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raystyle",
        description="Train CycleGAN style generators on a Ray cluster.",
        epilog="Run `raystyle COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train (or resume) a CycleGAN or a fast per-style net with Ray Train",
                       description="Train a CycleGAN on unpaired folders, or (--method fast) a fast "
                       "feed-forward network for one painting on a folder of photos (Johnson et al. "
                       "2016), with Ray Train (DDP). Running the same command again resumes from the "
                       "last checkpoint.")
    _add_train_args(p, data_required=True)
    p.add_argument("--method", choices=["cyclegan", "fast", "adain"], default="cyclegan",
                   help="cyclegan (default): two unpaired domains; fast: photos + one --style-image; "
                   "adain: one decoder for any painting (DATA/trainA photos, DATA/trainB paintings)")
    p.add_argument("--style-image", metavar="PAINTING", help="--method fast: the style image")
    p.add_argument("--features", choices=["vgg16", "vgg19", "random"],
                   help="--method fast/adain: the feature network (fast.features: vgg16, adain.features: "
                   "vgg19 in the presets). random needs no download; see the README for how it compares")
    p.add_argument("--vgg-weights", metavar="PATH",
                   help="--method fast/adain: a VGG weights file (default: $RAYSTYLE_VGG_WEIGHTS, else "
                   "torchvision's cache under $TORCH_HOME, downloaded when missing)")
    p.add_argument("--export", metavar="STYLE",
                   help="after training, export g_ab as STYLE (fp32 + int8) with a Ray task")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="styles registry for --export (env RAYSTYLE_MODELS)")

    p = sub.add_parser("distill", help="distil a trained style into a small, fast student (Ray Train)",
                       description="Distil a trained generator (the teacher) into a smaller student "
                       "generator on Ray Train: L1 to the teacher's output, feature matching through "
                       "1x1 adapters, and a GAN term with the teacher's discriminator as a warm start. "
                       "The student run lives in STORAGE/NAME like a training run; the same command "
                       "again resumes it. `raystyle export STORAGE/NAME --style NAME` exports it.")
    p.add_argument("teacher", metavar="TEACHER_RUN_OR_CHECKPOINT",
                   help="a training run (its latest checkpoint) or one checkpoint folder")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="dataset with trainA/ and trainB/ (the teacher's source domain to translate, its "
                        "target domain for the discriminator); testA/testB or a held-back share validate")
    p.add_argument("--style", required=True, metavar="NAME",
                   help="run name: the student run lives in STORAGE/NAME; the same name resumes it")
    p.add_argument("--student", metavar="PRESET",
                   help="student preset or YAML with model keys (student-16, student-8; default student-16)")
    p.add_argument("--config", metavar="YAML",
                   help="YAML whose sections go over the teacher's (data, train, distill ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value, e.g. --set distill.lambda_gan=0 or --set model.ngf=12 (repeatable)")
    _add_cluster_args(p, "where runs are written (cluster.storage; default: the teacher's, else $RAYSTYLE_HOME/runs)")
    p.add_argument("--export", action="store_true",
                   help="then export the student as style NAME (its best checkpoint by agreement with the teacher)")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="styles registry for --export (env RAYSTYLE_MODELS)")

    p = sub.add_parser("demo", help="the whole flow on the bundled sample data, from nothing",
                       description="Start a local Ray, write the sample dataset, train a "
                       f"preset into {HOME}/runs/{DEMO_STYLE}, export it as style '{DEMO_STYLE}' "
                       f"into {HOME}/models, serve it with Ray Serve, stylize the held-out sample "
                       f"photos through the HTTP API into {HOME}/outputs/stylized, start the "
                       "monitor, print the URLs and keep serving until Ctrl-C. A second run "
                       "reuses what exists.")
    p.add_argument("--preset", default="tiny", choices=["tiny", "cpu"],
                   help="training preset: tiny (the default: ~2 minutes of training, quick to see "
                        "the flow) or cpu (~10 minutes, the recipe that learns the filter); a run "
                        "per preset")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop training after N steps")
    p.add_argument("--workers", type=int, metavar="N", help="training workers (default 2)")
    p.add_argument("--home", type=Path, default=HOME, metavar="DIR", help=f"demo folder (default {HOME}; env RAYSTYLE_HOME)")
    p.add_argument("--serve-port", type=int, default=8000, metavar="PORT", help="Serve HTTP port on 127.0.0.1 (default 8000)")
    p.add_argument("--monitor-port", type=int, default=8501, metavar="PORT", help="monitor port on 127.0.0.1 (default 8501)")
    p.add_argument("--dashboard-port", type=int, metavar="PORT",
                   help="Ray dashboard port of the local Ray the demo starts (Ray's default 8265)")
    p.add_argument("--no-monitor", action="store_true", help="do not start the monitor page")
    p.add_argument("--no-wait", action="store_true",
                   help="stop Serve, the monitor and Ray once the photos are stylized, instead of "
                        "keeping them up until Ctrl-C")

    p = sub.add_parser("evaluate", help="held-out quality figures of a checkpoint (no downloads)",
                       description="Held-out figures of G_ab for the photo itself, freshly "
                       "initialised nets and the checkpoint: ground-truth PSNR where the test split "
                       "is paired (the sample data), the domain score of a classifier trained on "
                       "trainA vs trainB (cached per dataset; reported only at >= 85% held-out "
                       "accuracy), content SSIM, cycle PSNR, colour distance to B.")
    p.add_argument("checkpoint", type=Path, metavar="RUN_OR_CHECKPOINT", help="checkpoint dir, or a run dir (its latest checkpoint)")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset folder: trainA/ trainB/ (the domain classifier) and testA/ testB/ "
                        "(without them: the share of train that training held back)")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--limit", type=int, default=16, metavar="N", help="images per domain (default 16)")
    p.add_argument("--grid", type=Path, metavar="PNG",
                   help="write a PNG here: rows of photos, G_ab(photos) and (paired data) ground truth")
    p.add_argument("--no-classifier", action="store_true", help="skip the domain classifier and its score")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")

    p = sub.add_parser("export", help="checkpoint -> validated ONNX style in the registry",
                       description="Export one generator of a checkpoint (or of a run's latest "
                       "or best checkpoint) to ONNX, validate it against torch, and register it "
                       "as MODELS/STYLE/ with model.json.")
    p.add_argument("source", type=Path, metavar="RUN_OR_CHECKPOINT", help="checkpoint dir, or a run dir")
    p.add_argument("--style", required=True, metavar="NAME", help="style name in the registry")
    p.add_argument("--direction", choices=["ab", "ba"],
                   help="ab: photos (A) -> style (B), the default; ba: the reverse (a distilled student: its own)")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="styles registry (default ~/raystyle/models; env RAYSTYLE_MODELS)")
    p.add_argument("--precision", default="fp32,int8", metavar="LIST",
                   help="comma list of fp32, fp16, int8 (default fp32,int8; fp32 is always written)")
    p.add_argument("--best", metavar="METRIC",
                   help="given a run dir, pick its best checkpoint by this metric of the metrics "
                        "log: auto (the one the run ranked checkpoints by), a validation figure "
                        "such as val_gt_psnr (higher is better) or a loss such as cycle_a (lower)")
    p.add_argument("--torchscript", action="store_true", help="also write model.ts (TorchScript)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="export.KEY=VALUE",
                   help="override a validation threshold of the checkpoint's export config, e.g. "
                        "--set export.int8_min_psnr_db=35 (repeatable)")
    p.add_argument("--allow-unvalidated-fp16", action="store_true",
                   help="register fp16 even where this machine's CPU provider cannot run (validate) it; "
                        "model.json then says validated: false")
    p.add_argument("--ray", action="store_true", help="run the export as a Ray task on the cluster")
    p.add_argument("--address", metavar="ADDR", help="Ray address for --ray (default: RAY_ADDRESS, else local)")

    p = sub.add_parser("styles", help="list the styles in the registry")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="styles registry (default ~/raystyle/models; env RAYSTYLE_MODELS)")
    p.add_argument("--json", action="store_true", help="full metadata as JSON")

    p = sub.add_parser("stylize", help="stylize images, videos, folders or stdin with a style",
                       description="Stylize images and videos with ONNX Runtime. INPUT is an image, "
                       "a video (.mp4, .mov, .mkv, .webm, .avi, .m4v), a folder (searched "
                       "recursively) or - for stdin; -o - writes to stdout. A video keeps its frame "
                       "rate, duration and audio and is written as H.264 (.mp4 unless -o names .mov "
                       "or .mkv), with motion-guided temporal smoothing (--smooth).")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--style", required=True, metavar="NAME", help="style name in the registry")
    p.add_argument("-o", "--output", default="stylized",
                   help="output file (one input), folder (default ./stylized) or - for stdout")
    p.add_argument("--strength", type=float, default=1.0, metavar="S", help="0 = input unchanged, 1 = full style")
    p.add_argument("--preserve-color", action="store_true", help="keep the input's colours")
    p.add_argument("--style-image", dest="style_images", action="append", metavar="PAINTING",
                   help="an arbitrary (AdaIN) style's painting; repeat to blend several (see --weights)")
    p.add_argument("--weights", metavar="W1,W2,...",
                   help="blend weights of the --style-image paintings, in order (default: equal)")
    p.add_argument("--alpha", type=float, default=1.0, metavar="A",
                   help="arbitrary styles: 0 = the content's own features, 1 = fully stylised (default)")
    p.add_argument("--tile", type=int, metavar="N",
                   help="tile size for large images (default 1024; video frames 2048)")
    p.add_argument("--max-side", type=int, metavar="N", help="downscale inputs so the longer side is at most N")
    p.add_argument("--smooth", type=float, metavar="S",
                   help="videos: temporal smoothing along the motion, 0 (per-frame) to below 1 "
                   "(default 0.6)")
    p.add_argument("--fps", type=float, metavar="F",
                   help="videos: output frame rate (default: the input's own timestamps)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="videos: frames per ONNX Runtime call (default 1; more can pay on a GPU)")
    p.add_argument("--crf", type=int, default=18, metavar="Q",
                   help="videos: H.264 quality, 0 (lossless) to 51 (default 18)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"])
    p.add_argument("--format", choices=["png", "jpeg", "webp"],
                   help="output format (default: the input's if png/jpeg/webp, else png)")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="styles registry (default ~/raystyle/models; env RAYSTYLE_MODELS)")
    p.add_argument("--json", action="store_true", help="one JSON line per image instead of text")

    p = sub.add_parser("serve", help="serve every registry style over HTTP with Ray Serve",
                       description="Start the Ray Serve application (one autoscaled deployment per "
                       "style behind one HTTP API) and print its URL. Binds 127.0.0.1 unless "
                       "--host says otherwise; see the README before exposing it.")
    p.add_argument("--config", type=Path, metavar="YAML", default=SERVE_CONFIG,
                   help="serve config YAML (default serve_configs/local.yaml)")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="styles registry (overrides the config's models_dir)")
    p.add_argument("--host", metavar="HOST", help="bind address (default: the config's, 127.0.0.1)")
    p.add_argument("--port", type=int, metavar="PORT", help="port (default: the config's, 8000)")
    p.add_argument("--address", metavar="ADDR", help="Ray address (default: RAY_ADDRESS, else start a local Ray)")

    p = sub.add_parser("monitor", help="the Streamlit monitor: cluster, GPUs, training, Serve, try it",
                       description="Start the monitor page (dashboard/app.py) on 127.0.0.1. It "
                       "reads the Ray dashboard (sending the Ray auth token when token auth is "
                       "on), the training runs under --storage, and the raystyle API.")
    p.add_argument("--port", type=int, default=8501, metavar="PORT", help="port (default 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1; the page has no login: another address "
                        "is refused unless --behind-auth-proxy)")
    p.add_argument("--behind-auth-proxy", action="store_true",
                   help="allow a --host other than loopback: an authenticating proxy is in front")
    p.add_argument("--ray-dashboard", metavar="URL",
                   help="Ray dashboard, the only place the Ray token is sent (default: RAY_ADDRESS "
                        "if a URL, else the dashboard of the Ray this machine is attached to "
                        "(RAY_ADDRESS host:port or the latest `ray start`), else http://127.0.0.1:8265)")
    p.add_argument("--serve-url", metavar="URL", default="http://127.0.0.1:8000",
                   help="the raystyle API (default http://127.0.0.1:8000)")
    p.add_argument("--storage", default=str(HOME / "runs"), metavar="DIR_OR_URI",
                   help=f"where training runs are: a folder or a URI such as s3://bucket/runs "
                        f"(default {HOME / 'runs'})")
    p.add_argument("--refresh", type=int, default=5, metavar="S", help="seconds between refreshes, 0 = off (default 5)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                   help="largest photo 'Try it' accepts (default 20 MB)")

    add_batch_parser(sub)
    add_nst_parser(sub)

    p = sub.add_parser("data", help="the bundled sample dataset and the reference datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("sample", help="write the bundled sample dataset (photos -> painterly)",
                        description="Domain A: crops of the photos shipped in scikit-image's "
                        "wheel. Domain B: other crops of them through a painterly filter.")
    s.add_argument("out", type=Path, metavar="OUT", help="output folder (gets trainA/ trainB/ testA/ testB/)")
    s.add_argument("--size", type=int, default=128, metavar="N", help="image side in pixels (default 128)")
    d = dsub.add_parser("download", help="download a reference CycleGAN dataset",
                        description="Resumable download with size and zip-integrity checks.")
    d.add_argument("name", metavar="NAME", help="dataset name, e.g. monet2photo, vangogh2photo, horse2zebra")
    d.add_argument("out", type=Path, metavar="OUT", help="folder that receives OUT/NAME/trainA ...")
    d.add_argument("--base-url", metavar="URL", help="mirror URL (default: the reference server; env RAYSTYLE_DATASETS_URL)")
    d.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of the zip")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _flag_overrides(args: argparse.Namespace, features: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The --set items with the flags' own after them, and the string flags (storage, address);
    ``features``: the config section --features sets (fast, adain; None: not used)."""
    overrides = list(args.overrides)
    for flag, key in (("workers", "cluster.workers"), ("cpus_per_worker", "cluster.cpus_per_worker"),
                      ("max_steps", "train.max_steps"), ("features", f"{features}.features")):
        value = getattr(args, flag, None) if flag != "features" or features else None
        if value is not None:
            overrides.append(f"{key}={value}")
    if getattr(args, "gpu", False):
        overrides.append("cluster.use_gpu=true")
    # Strings are set directly: through YAML, "2024" would be a number and "#" a comment.
    return overrides, {k: getattr(args, k) for k in ("storage", "address") if getattr(args, k, None)}


def _train_config(args: argparse.Namespace):
    from raystyle.config import load_config

    overrides, strings = _flag_overrides(args)
    cfg = load_config(args.config, overrides)
    return cfg.replace(cluster=strings) if strings else cfg


def _fast_config(args: argparse.Namespace):
    """(config, workers' extra) of a fast style run: the `fast` preset (or --config), --set,
    then the flags; the style image and the feature weights are checked here."""
    from raystyle.methods.fast import plan

    if not args.style_image:
        raise ValueError("--method fast needs --style-image PAINTING")
    overrides, strings = _flag_overrides(args, "fast")
    settings: dict = {"cluster": strings} if strings else {}
    if args.vgg_weights:
        settings["fast"] = {"vgg_weights": str(Path(args.vgg_weights).expanduser().resolve())}
    return plan(args.style_image, args.config, overrides, settings)


def _adain_config(args: argparse.Namespace):
    """(config, workers' extra) of an arbitrary-style run: the `adain` preset (or --config),
    --set, then the flags; the feature weights are checked here."""
    from raystyle.methods.adain import plan

    if args.style_image:
        raise ValueError("--method adain takes its paintings from DATA/trainB, not --style-image")
    overrides, strings = _flag_overrides(args, "adain")
    settings: dict = {"cluster": strings} if strings else {}
    if args.vgg_weights:
        settings["adain"] = {"vgg_weights": str(Path(args.vgg_weights).expanduser().resolve())}
    return plan(args.config, overrides, settings)


def _run_training(cfg, data: Path, style: str, extra=None):
    from raystyle.train.loop import fit

    result = fit(cfg, data, style, extra=extra)
    print(f"run directory:    {result.run_dir}")
    print(f"final checkpoint: {result.checkpoint} (step {result.step})")
    return result


EVAL_ROWS = (  # (key, label, format)
    ("val_gt_psnr", "ground-truth PSNR, dB (higher: closer to B)", "{:.2f}"),
    ("val_domain_score", "domain score, % judged B", "{:.0%}"),
    ("val_content_ssim", "content SSIM vs photo (1: same structure)", "{:.3f}"),
    ("val_cycle_psnr", "cycle-reconstruction PSNR, dB", "{:.2f}"),
    ("val_colour_distance", "colour distance to B (lower: closer)", "{:.2f}"),
)


def _print_evaluation(ev, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(ev.to_dict()))
        return
    paired = ", paired with ground truth" if ev.paired else ""
    print(f"held-out figures ({ev.images} {ev.split} images{paired}):")
    print(f"  {'':44} {'photo':>9} {'untrained':>10} {f'step {ev.step}':>10}")
    for key, label, fmt in EVAL_ROWS:
        if key not in ev.trained:
            continue
        cells = [fmt.format(d[key]) if key in d else "-" for d in (ev.identity, ev.untrained, ev.trained)]
        print(f"  {label:44} {cells[0]:>9} {cells[1]:>10} {cells[2]:>10}")
    if ev.paired:
        print(f"ground-truth PSNR gain over the photo itself: {ev.trained['val_gt_gain_db']:+.2f} dB "
              f"(untrained nets: {ev.untrained['val_gt_gain_db']:+.2f} dB)")
    if ev.classifier:
        print(ev.classifier)
    for note in ev.notes:
        print(note)


def cmd_train(args: argparse.Namespace) -> int:
    from raystyle.registry import check_name
    from raystyle.util.storage import is_uri

    if args.export:
        check_name(args.export)  # fail before hours of training, not after
    cfg = _train_config(args)
    if args.export and cfg.cluster.storage and is_uri(cfg.cluster.storage):
        raise ValueError(f"--export needs a local --storage for now (export reads local checkpoints); "
                         f"train to {cfg.cluster.storage.split('?', 1)[0]} without --export, then copy "
                         f"the checkpoint folder and run `raystyle export DIR`")
    if cfg.distill is not None:
        raise ValueError("a config with a distill section is a distillation: run `raystyle distill TEACHER ...`")
    extra = None
    if args.method == "fast" or cfg.fast is not None:
        cfg, extra = _fast_config(args)  # the fast preset, not the paper's CycleGAN recipe
    elif args.method == "adain" or cfg.adain is not None:
        cfg, extra = _adain_config(args)
    elif args.style_image or args.features or args.vgg_weights:
        raise ValueError("--style-image, --features and --vgg-weights are for --method fast or adain")
    result = _run_training(cfg, args.data, args.style, extra)
    if args.export:
        _export_run(result, args.export, args.models_dir)
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from raystyle.methods.distill import plan
    from raystyle.registry import check_name
    from raystyle.train.loop import fit

    if args.export:
        check_name(args.style)  # fail before the distillation, not after
    cluster: dict = {k: v for k, v in (("workers", args.workers), ("cpus_per_worker", args.cpus_per_worker),
                                       ("storage", args.storage), ("address", args.address)) if v is not None}
    if args.gpu:
        cluster["use_gpu"] = True
    settings: dict = {"cluster": cluster} if cluster else {}
    if args.max_steps is not None:
        settings["train"] = {"max_steps": args.max_steps}
    cfg, extra = plan(args.teacher, args.student, args.config, args.overrides, settings,
                      say=lambda text: print(f"[raystyle] {text}", flush=True))
    d = cfg.distill
    print(f"[raystyle] teacher: {d.teacher} (step {d.teacher_step}, g_{d.direction}); student: ngf "
          f"{cfg.model.ngf}, {cfg.model.n_blocks} blocks, upsample {cfg.model.upsample}", flush=True)
    result = fit(cfg, args.data, args.style, extra=extra)
    print(f"run directory:    {result.run_dir}")
    print(f"final checkpoint: {result.checkpoint} (step {result.step})")
    if args.export:
        _export_run(result, args.style, args.models_dir)
    return 0


def _export_run(result, style_name: str, models_dir) -> None:
    """Export a finished run with a Ray task: its best checkpoint by held-out validation when
    the run ranked them, else the last."""
    from raystyle.runlog import read_validation
    from raystyle.train.loop import export_on_cluster

    best = "auto" if read_validation(result.run_dir).get("best_metric") else None
    style = export_on_cluster(result.run_dir if best else result.checkpoint, style_name,
                              models_dir=models_dir, precisions=("fp32", "int8"), best=best)
    print(f"exported style:   {style.name} -> {style.path}")


def _precisions(text: str) -> tuple[str, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return tuple(dict.fromkeys(["fp32", *parts]))


def cmd_export(args: argparse.Namespace) -> int:
    kwargs = dict(direction=args.direction, models_dir=args.models_dir,
                  precisions=_precisions(args.precision), best=args.best,
                  torchscript=args.torchscript, overrides=args.overrides,
                  allow_unvalidated_fp16=args.allow_unvalidated_fp16)
    if args.ray:
        from raystyle.train.loop import export_on_cluster

        style = export_on_cluster(args.source, args.style, address=args.address, **kwargs)
    else:
        from raystyle.export.generator import export_style

        style = export_style(args.source, args.style, verbose=True, **kwargs)
    print(f"style {style.name!r} -> {style.path}")
    _print_style(style)
    return 0


def _print_style(style) -> None:
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
        figure = (f"{vs['psnr_db']:.2f} dB PSNR, SSIM {vs['ssim']:.3f} vs the teacher on {vs['held_out_images']} "
                  f"held-out images" if vs else "no held-out figure (validation was off)")
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


def cmd_styles(args: argparse.Namespace) -> int:
    from raystyle.registry import list_styles, models_dir

    styles = list_styles(args.models_dir)
    if args.json:
        print(json.dumps({s.name: s.meta for s in styles}, indent=2))
        return 0
    if not styles:
        print(f"no styles in {models_dir(args.models_dir)} (create one with `raystyle export`)")
    for s in styles:
        _print_style(s)
    return 0


def _expand_inputs(inputs: list[str]) -> list[tuple[str, Path | None]]:
    """(input, relative output stem) for files, folders (recursive: images and videos) and '-'."""
    from raystyle.data.images import IMAGE_SUFFIXES
    from raystyle.infer.video import VIDEO_SUFFIXES

    out: list[tuple[str, Path | None]] = []
    for item in inputs:
        path = Path(item)
        if item == "-":
            out.append(("-", None))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            out += [(str(p), p.relative_to(path)) for p in files]
        else:
            out.append((item, Path(path.name)))
    return out


def _frames_fn(args: argparse.Namespace):
    """``run(images, **options) -> list of uint8 arrays`` for the style (generator or arbitrary)."""
    from raystyle.data.images import ImageError
    from raystyle.infer.generator import Stylizer
    from raystyle.registry import get_style

    style = get_style(args.style, args.models_dir)
    if style.kind == "arbitrary":
        from raystyle.infer.arbitrary import ArbitraryStylizer, parse_weights

        if not args.style_images:
            raise ValueError(f"style {args.style!r} is an arbitrary style: give --style-image PAINTING")
        stylizer = ArbitraryStylizer(args.style, models_dir=args.models_dir, precision=args.precision,
                                     provider=args.provider, tile=1024 if args.tile is None else args.tile)
        weights = parse_weights(args.weights)
        try:  # the paintings are read and encoded once, for every input (a bad one fails here)
            stats = stylizer.blend([Path(p) for p in args.style_images], weights)
        except (ImageError, OSError) as exc:
            raise ValueError(f"style image: {exc}") from None

        def run(images, **kw):
            return stylizer.stylize_batch(images, styles=[stats] * len(images), alpha=args.alpha, **kw)
        return run
    if args.style_images or args.weights or args.alpha != 1.0:
        raise ValueError(f"--style-image, --weights and --alpha are for arbitrary styles; "
                         f"{args.style!r} is a {style.kind} style")
    return Stylizer(args.style, models_dir=args.models_dir, precision=args.precision,
                    provider=args.provider, tile=1024 if args.tile is None else args.tile).stylize_batch


def cmd_stylize(args: argparse.Namespace) -> int:
    from raystyle.data.images import ENCODE_FORMATS, ImageError, encode, format_for_path
    from raystyle.infer.video import (
        OUTPUT_FORMATS,
        VIDEO_SUFFIXES,
        VIDEO_TILE,
        VideoError,
        is_video,
    )
    from raystyle.infer.video import output_name as video_output_name

    items = _expand_inputs(args.inputs)
    if not items:
        raise ValueError("no input images or videos found")
    videos = [src for src, _ in items if src != "-" and is_video(src)]
    if not videos and (args.smooth is not None or args.fps is not None):
        raise ValueError("--smooth and --fps are for videos; no input is a video")
    if args.smooth is not None:
        from raystyle.infer.video import check_smooth

        check_smooth(args.smooth)  # a bad value fails before the style is loaded
    if videos:
        from raystyle.infer.video import check_crf, check_fps

        check_crf(args.crf)
        check_fps(args.fps)  # once, not once per video
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    to_stdout = args.output == "-"
    out = Path(args.output)
    if to_stdout and (len(items) != 1 or videos):
        raise ValueError("-o - (stdout) takes exactly one input image")
    suffix = out.suffix.lower()
    single_file = len(items) == 1 and (suffix.lstrip(".") in ENCODE_FORMATS or suffix in OUTPUT_FORMATS)
    if videos and suffix in VIDEO_SUFFIXES and suffix not in OUTPUT_FORMATS:
        raise ValueError(f"-o {out}: a video is written as .mp4, .mov or .mkv (H.264)")
    if single_file and bool(videos) != (suffix in OUTPUT_FORMATS):
        raise ValueError(f"-o {out}: " + ("a video is written as .mp4, .mov or .mkv" if videos else
                                          "an image is written as .png, .jpg or .webp"))
    def image_dest(rel: Path | None) -> tuple[str, Path | None]:
        suffix = rel.suffix.lower().lstrip(".") if rel is not None else ""
        fmt = args.format or (suffix if suffix in ENCODE_FORMATS else "png")
        return fmt, None if to_stdout else out / (rel or Path("stdin")).with_suffix(f".{fmt}")

    if not single_file and not to_stdout:  # a.webm and a.mp4 both become a.mp4: refuse, lose nothing
        seen: dict[Path, str] = {}
        for src, rel in items:
            dest = out / video_output_name(rel.as_posix()) if src in videos else image_dest(rel)[1]
            if dest in seen:
                raise ValueError(f"{seen[dest]} and {src} would both be written to {dest}")
            seen[dest] = src
    run = _frames_fn(args)
    options = dict(strength=args.strength, preserve_color=args.preserve_color)
    failed = 0
    for src, rel in items:
        if src in videos:
            dest = out if single_file else out / video_output_name(rel.as_posix())
            try:
                result = _stylize_video(args, src, dest,
                                        lambda frames: run(frames, tile=VIDEO_TILE if args.tile is None else args.tile, **options))
            except VideoError as exc:
                failed += 1
                print(f"raystyle: error: {exc}", file=sys.stderr)
                continue
            if args.json:
                print(json.dumps({"input": src, "output": str(dest), "width": result.width,
                                  "height": result.height, "frames": result.frames, "fps": result.rate,
                                  "seconds": round(result.seconds, 2),
                                  "frames_per_s": round(result.frames_per_s, 2), "audio": result.audio,
                                  "style": args.style}))
            else:
                print(f"{src} -> {dest} ({result.width}x{result.height}, {result.frames} frames at "
                      f"{result.rate:.3g} fps{', audio copied' if result.audio else ''}; "
                      f"{result.frames_per_s:.1f} frames/s)")
            continue
        start = time.perf_counter()
        try:
            data = sys.stdin.buffer.read() if src == "-" else Path(src)
            result = run([data], max_side=args.max_side, **options)[0]
        except ImageError as exc:
            failed += 1
            print(f"raystyle: error: {exc}", file=sys.stderr)
            continue
        if single_file:
            fmt, dest = format_for_path(out), out
        else:
            fmt, dest = image_dest(rel)
        payload = encode(result, fmt)
        ms = (time.perf_counter() - start) * 1000
        if to_stdout or (src == "-" and args.output == "stylized"):
            sys.stdout.buffer.write(payload)
            sys.stdout.buffer.flush()
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(payload)
        h, w = result.shape[:2]
        if args.json:
            print(json.dumps({"input": src, "output": str(dest), "width": w, "height": h,
                              "ms": round(ms, 1), "style": args.style}))
        else:
            print(f"{src} -> {dest} ({w}x{h}, {ms:.0f} ms)")
    return 2 if failed else 0


def _stylize_video(args: argparse.Namespace, src: str, dest: Path, run):
    """One video through raystyle.infer.video with a progress bar (frames/s and ETA) on stderr."""
    from tqdm import tqdm

    from raystyle.infer.video import DEFAULT_SMOOTH, stylize_video

    bars = []

    def start(info, plan):  # probed: the bar knows its total
        bars.append(tqdm(total=plan.frames, unit="frame", desc=Path(src).name, file=sys.stderr,
                         dynamic_ncols=True, mininterval=0.5, disable=args.json))

    try:
        return stylize_video(src, dest, run, smooth=DEFAULT_SMOOTH if args.smooth is None else args.smooth,
                             max_side=args.max_side, fps=args.fps, batch=args.batch_size, crf=args.crf,
                             on_start=start, progress=lambda n: bars[0].update(n))
    finally:
        for bar in bars:
            bar.close()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from raystyle.train import evaluate

    say = None if args.json else (lambda text: print(f"[raystyle] {text}", flush=True))
    ev = evaluate(args.checkpoint, args.data, split=args.split, limit=args.limit, grid=args.grid,
                  classifier=not args.no_classifier, progress=say)
    _print_evaluation(ev, args.json)
    if args.grid:
        print(f"grid: {args.grid}")
    return 0




def cmd_demo(args: argparse.Namespace) -> int:
    from raystyle.cli.demo import run

    return run(args)


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM end a waiting command cleanly (KeyboardInterrupt), even where
    SIGINT was inherited as ignored (a job started in the background by a script)."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def cmd_monitor(args: argparse.Namespace) -> int:
    from raystyle.monitor import snapshot as mon

    if args.max_upload_mb <= 0:
        raise ValueError("--max-upload-mb must be positive")
    mon.check_host(args.host, args.behind_auth_proxy)
    if not port_free(args.port, args.host):
        raise ValueError(f"port {args.port} on {args.host} is in use; pass --port")
    dashboard = mon.dashboard_url(args.ray_dashboard, discover=True)
    proc = mon.launch(host=args.host, port=args.port, dashboard=dashboard,
                      serve_url=args.serve_url, storage=args.storage, refresh=args.refresh,
                      max_upload_mb=args.max_upload_mb, log=None, behind_auth_proxy=args.behind_auth_proxy)
    url = f"http://{args.host}:{args.port}"
    _stop_on_signals()
    try:
        mon.wait_ready(url, proc)
        print(f"raystyle monitor at {url}  (Ray dashboard {dashboard}, "
              f"API {args.serve_url}, runs in {args.storage}; Ctrl-C stops it)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        print("raystyle: monitor stopped")
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "sample":
        from raystyle.data.datasets import write_sample_dataset

        counts = write_sample_dataset(args.out, size=args.size)
        print(f"sample dataset written to {args.out}: {counts}")
        print("domain B is made from photos by a painterly filter (no paintings ship with raystyle)")
        return 0
    from raystyle.data.download import download_dataset

    path = download_dataset(args.name, args.out, base_url=args.base_url, sha256=args.sha256,
                            progress=not args.no_progress)
    print(f"dataset ready: {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:

    from raystyle.serve.app import run_from_config

    url = run_from_config(args.config, models_dir=args.models_dir, host=args.host, port=args.port,
                          address=args.address)
    _stop_on_signals()
    print(f"raystyle is serving at {url}  (API docs: {url}/docs; Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
        print("raystyle: serve stopped")
    return 0


COMMANDS = {"train": cmd_train, "distill": cmd_distill, "serve": cmd_serve, "demo": cmd_demo, "monitor": cmd_monitor, "evaluate": cmd_evaluate, "export": cmd_export,
            "styles": cmd_styles, "stylize": cmd_stylize, "batch": cmd_batch, "data": cmd_data,
            "nst": cmd_nst}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        hint = ("; run the same command again to resume from the last checkpoint"
                if args.command in ("train", "distill", "demo") else "")
        print(f"raystyle: interrupted{hint}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:  # expected bad-input errors
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"raystyle: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:
        from ray.train import TrainingFailedError

        if isinstance(exc, TrainingFailedError):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"raystyle: training failed: {first}", file=sys.stderr)
            return 1
        raise


def entrypoint() -> None:
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. `raystyle stylize ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    entrypoint()
