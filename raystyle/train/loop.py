"""[ray] Distributed training: a thin ``train_loop_per_worker`` and ``fit``, for any method.

The step itself lives in the method's pure-torch module (cyclegan.py, distill.py; the
interface is in methods.py, and this module never names a method); here it is wired to Ray Train V2:
TorchTrainer + ScalingConfig for the workers, DDP via ``prepare_model``, checkpoints via
``ray.train.report`` (one directory, merged from every rank), resume via
``ray.train.get_checkpoint()`` -- which returns the latest checkpoint both after a worker
failure (FailureConfig) and when the same command runs again with the same storage and name.

Storage is a local folder or a URI (s3://bucket/runs, gs://...): the driver resolves it once
(storage.py) and hands the same pyarrow filesystem to Ray Train (``storage_filesystem``) and
to rank 0, which writes the metrics log and sample grids through it (runlog.py).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import psutil
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from raystyle import checkpoint as ckpt
from raystyle import runlog
from raystyle.cluster import check_resources, connect, ray_log_level, ray_verbose
from raystyle.config import Config, ConfigError, default_storage
from raystyle.data.datasets import EpochBatches, UnpairedDataset, steps_per_epoch
from raystyle.methods import method_class, plugin_modules, quality
from raystyle.util import storage
from raystyle.util.storage import Location

CRASH_MARKER = ".crash_hook_fired"


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path | str  # a local Path, or the run's URI (s3://bucket/runs/NAME)
    checkpoint: Path | str | None
    step: int


def total_steps(cfg: Config, n_samples: int, world_size: int) -> int:
    spe = steps_per_epoch(n_samples, world_size, cfg.train.batch_size)
    steps = (cfg.train.epochs + cfg.train.epochs_decay) * spe
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps


def _fingerprint(net: torch.nn.Module) -> list[float]:
    """A few numbers that differ when two copies of a net differ (DDP sync check)."""
    flat = torch.cat([p.detach().flatten().double().cpu() for p in net.parameters()])
    return [float(flat.sum()), float(flat.abs().sum()), *flat[:8].tolist()]


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


def train_loop_per_worker(loop: dict[str, Any]) -> None:
    for module in loop["plugins"]:  # methods registered from outside raystyle (and their sections)
        importlib.import_module(module)
    cfg = Config.from_dict(loop["config"])
    if not loop.get("ray_verbose"):
        _quiet_ray_train()  # our progress lines say enough; --verbose shows Ray Train's too
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.cluster.cpus_per_worker)
    device = ray.train.torch.get_device()
    run: Location | None = loop.get("run")  # resolved on the driver (filesystem included)

    model = method_class(cfg.method).from_config(cfg, device, rank, loop.get("extra") or {})
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            _, nets, state = ckpt.load_shared(d, map_location=device)
            same_world = state.get("world_size") == world
            model.load(nets, state, ckpt.load_rank(d, rank) if same_world else None)
        if not same_world:
            model.epoch_step = 0  # shards changed: replay the epoch from its start
        if rank == 0:
            print(f"[raystyle] resumed from step {model.step} (epoch {model.epoch})", flush=True)
    log = runlog.MetricsLog(run, model.step) if rank == 0 and run is not None else None
    try:
        _train(model, cfg, loop, rank, world, device, run, log)
    except BaseException:
        if log is not None:  # upload what was logged, without hiding the error
            with contextlib.suppress(Exception):
                log.close()
        raise
    if log is not None:
        log.close()


def _train(model: Any, cfg: Config, loop: dict[str, Any], rank: int, world: int,
           device: torch.device, run: Location | None, log: runlog.MetricsLog | None) -> None:
    model.wrap(lambda m: ray.train.torch.prepare_model(m, move_to_device=False))

    dataset = UnpairedDataset(tuple(loop["files_a"]), tuple(loop["files_b"]), cfg.data, cfg.train.seed)
    spe = steps_per_epoch(len(dataset), world, cfg.train.batch_size)
    total = total_steps(cfg, len(dataset), world)
    batches = EpochBatches(len(dataset), world, rank, cfg.train.batch_size, cfg.train.seed,
                           model.epoch, model.epoch_step)
    # A private generator for the loader's worker seed: drawn from the global one, it would
    # shift the restored RNG state (and every dropout mask after it) on each resume.
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=cfg.data.loader_workers,
                        pin_memory=device.type == "cuda",
                        persistent_workers=cfg.data.loader_workers > 0,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    tc = cfg.train
    val = loop.get("val")
    validator = None
    if rank == 0 and val is not None:  # only rank 0 validates; the others wait at the next step
        clf = quality.Classifier.from_state(val["classifier"]) if val.get("classifier") else None
        heldout = quality.HeldOut.from_files(val["files_a"], val["files_b"], cfg.data,
                                             tc.val_images, val["paired"])
        validator = quality.Validator(heldout, clf)
    window_start, window_steps = time.perf_counter(), 0
    for real_a, real_b in loader:
        if model.step >= total:
            break
        losses = model.train_step(real_a, real_b)
        model.epoch_step += 1
        if model.epoch_step == spe:
            model.end_epoch()  # linear-decay schedulers step once per epoch
        step, window_steps = model.step, window_steps + 1
        if loop.get("crash_at_step") == step and rank == world - 1 and run is not None:
            marker = run / CRASH_MARKER
            if not storage.exists(marker):  # test hook: die for real, once
                storage.write_bytes(marker, b"")
                os._exit(1)
        last = step >= total
        metrics: dict[str, Any] = {}
        checkpointing = step % tc.checkpoint_every == 0 or last
        validating = val is not None and (checkpointing or (tc.validate_every and step % tc.validate_every == 0))
        if step % tc.log_every == 0 or checkpointing or validating:
            metrics = _log(model, losses, world, window_start, window_steps, total, device)
            if validator is not None and validating:
                # eval mode, no grad, no random draws: training continues exactly as without
                metrics.update(model.validate(validator))
            window_start, window_steps = time.perf_counter(), 0
            if log is not None:
                log.append(metrics)
            if rank == 0:
                print(_progress_line(metrics, total, model.progress_text), flush=True)
        if rank == 0 and run is not None and (step % tc.sample_every == 0 or last):
            rows = model.sample_rows()
            if rows:
                runlog.save_sample_grid(run, step, rows)
        if checkpointing:
            if log is not None:
                log.sync()  # the log reaches storage before the checkpoint it leads up to
            _report_checkpoint(model, cfg, rank, world, metrics, loop["data_dir"])
        if last:
            break


def _log(model: Any, losses: dict[str, torch.Tensor], world: int, start: float,
         steps: int, total: int, device: torch.device) -> dict[str, Any]:
    names = sorted(losses)
    values = torch.stack([losses[k].float() for k in names])
    if world > 1 and dist.is_initialized():
        dist.all_reduce(values)  # mean over ranks, not rank 0's view alone
        values /= world
    elapsed = max(time.perf_counter() - start, 1e-9)
    bs = model.train_cfg.batch_size
    record = {k: round(float(v), 5) for k, v in zip(names, values.cpu(), strict=True)}
    record.update(
        step=model.step, epoch=model.epoch, total_steps=total, lr=model.lr(),
        images_per_s=round(steps * bs * world / elapsed, 3),
        step_time_s=round(elapsed / max(steps, 1), 5),
        memory_mb=round(_memory_mb(device), 1), time=time.time(), world_size=world,
    )
    return record


def _progress_line(m: dict[str, Any], total: int, losses_text: Any) -> str:
    eta = (total - m["step"]) * m["step_time_s"]
    line = (
        f"[raystyle] step {m['step']}/{total} ({100 * m['step'] / total:.0f}%) epoch {m['epoch']} | "
        f"{losses_text(m)} | lr {m['lr']:.2e} | "
        f"{m['images_per_s']:.1f} img/s | eta {eta / 60:.1f} min"
    )
    return line + (f"\n[raystyle]   validation: {_val_text(m)}" if "val_time_s" in m else "")


# the held-out figures a progress line shows, in order: (keys needed, text)
_VAL_PARTS = (
    (("val_teacher_psnr", "val_teacher_ssim"), "vs teacher {val_teacher_psnr:.2f} dB, SSIM {val_teacher_ssim:.3f}"),
    (("val_gt_psnr", "val_gt_gain_db"), "ground truth {val_gt_psnr:.2f} dB ({val_gt_gain_db:+.2f} vs photo)"),
    (("val_domain_score",), "domain P(B) {val_domain_score:.2f}"),
    (("val_kid_el0", "val_kid_el0_se"), "KID-EL0 {kid:.1f}±{kid_se:.1f} e-3"),
    (("val_content_ssim",), "content SSIM {val_content_ssim:.3f}"),
    (("val_cycle_psnr",), "cycle {val_cycle_psnr:.2f} dB"),
    (("val_colour_distance",), "colour dist {val_colour_distance:.1f}"),
)


def _val_text(m: dict[str, Any]) -> str:
    values = {**m, "kid": 1000 * m.get("val_kid_el0", 0.0), "kid_se": 1000 * m.get("val_kid_el0_se", 0.0)}
    parts = [text.format(**values) for keys, text in _VAL_PARTS if all(k in m for k in keys)]
    return ", ".join(parts) + f" ({m['val_time_s']:.2f} s)"


def _report_checkpoint(model: Any, cfg: Config, rank: int, world: int,
                       metrics: dict[str, Any], data_dir: str) -> None:
    # Every rank writes its own part into a local dir; Ray merges them into one
    # storage dir and registers it only once all ranks have reported.
    with tempfile.TemporaryDirectory(prefix="raystyle_ckpt_") as tmp:
        if rank == 0:
            state = {**model.train_state(), "world_size": world}
            ckpt.save_shared(tmp, cfg, model.nets_state(), state, {"data_dir": data_dir, "method": cfg.method})
        fingerprints = {name: _fingerprint(getattr(model, name)) for name in model.net_names}
        ckpt.save_rank(tmp, rank, {**model.rank_state(), "fingerprints": fingerprints})
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=ckpt.checkpoint_name(model.step),
        )


# ---------------------------------------------------------------------------------------
# Driver side


def run_location(cfg: Config, name: str) -> Location:
    """STORAGE/NAME: an absolute local folder, or a URI kept as a URI (never a local 's3:')."""
    text = cfg.cluster.storage or default_storage()
    root = text if storage.is_uri(text) else Path(text).expanduser().resolve()
    return storage.resolve(root) / name


def check_compatible(run: Location, cfg: Config) -> None:
    latest = ckpt.latest_checkpoint(run)
    if latest is None:
        return
    ckpt.check_safe(latest)  # the resume would load it: refuse code-running pickles here
    old = ckpt.load_config(latest)
    if old.method != cfg.method:
        raise ConfigError(f"run {run} exists as a {old.method} run; pick a new --style name for this {cfg.method} run")
    method_class(cfg.method).check_resume(old, cfg, run)
    for section in ("model", "loss", "data", "section"):
        before, now = getattr(old, section), getattr(cfg, section)
        if hasattr(before, "identity") and hasattr(now, "identity"):  # files compare by hash
            before, now = before.identity(), now.identity()
        if before != now:
            name = cfg.method if section == "section" else section
            raise ConfigError(
                f"run {run} exists with a different {name} config; resume it with the "
                f"same config or pick a new --style name"
            )


def plan_validation(cfg: Config, data_dir: str | Path, train: tuple[Sequence[str], Sequence[str]],
                    run: Location, verbose: bool = True
                    ) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, Any] | None, str | None]:
    """(train A, train B, the workers' validation plan or None, the best metric) for a run.

    Held-out images are testA/testB, or a share of train held back (then not trained on). A
    resumed run keeps what it started with: the same images held back (so it trains on the
    same set, validation on or off), the same best metric. Everything that could fail on the
    workers (no images to hold back, a broken pairing, unreadable files) is checked here, and
    validation is turned off with a message rather than failing the run. The domain classifier
    is trained here, on the driver, or read from its cache; its weights travel to rank 0.
    """
    tc = cfg.train
    method = method_class(cfg.method)
    say = (lambda text: print(f"[raystyle] {text}", flush=True)) if verbose else (lambda text: None)
    before = runlog.read_validation(run)
    resumed = ckpt.latest_checkpoint(run) is not None
    held_back = before.get("held_back")  # [[A files], [B files]] of a run that held some back
    if held_back:
        drop = set(held_back[0]) | set(held_back[1])
        train = (tuple(f for f in train[0] if f not in drop), tuple(f for f in train[1] if f not in drop))
    if not tc.validate or not method.validates:
        if tc.validate:
            say(f"validation: a {cfg.method} run has no held-out figures; checkpoints are kept by age")
        return tuple(train[0]), tuple(train[1]), None, None
    try:
        if held_back:
            sp = quality.Split(tuple(train[0]), tuple(train[1]), tuple(held_back[0]),
                               tuple(held_back[1]), False, "held-back train")
        else:
            sp = quality.split_dataset(data_dir, cfg.data.crop_size, tc.val_holdout, train)
            if resumed and sp.source != "test":  # holding back now would change its images
                raise quality.QualityError("the run started without holding train images back")
        select_a, select_b = sp.part("selection")  # the reporting split stays unseen
        heldout = quality.HeldOut.from_files(select_a, select_b, cfg.data, tc.val_images, sp.paired)
    except (quality.QualityError, ValueError) as exc:
        say(f"validation off: {exc}")
        return tuple(train[0]), tuple(train[1]), None, None
    clf, clf_info = None, None
    if method.uses_classifier:
        try:
            clf = quality.get_classifier(sp.train_a, sp.train_b, sp.held_a, sp.held_b, cfg.data, progress=say)
            clf_info = {"accuracy": round(clf.accuracy, 4), "held_out": clf.held_out, "usable": clf.usable}
            say(clf.describe() + ("" if clf.usable else f": below {100 * quality.MIN_ACCURACY:.0f}%, "
                                  "so no domain score is reported"))
        except quality.QualityError as exc:
            clf, clf_info = None, {"error": str(exc)}
    available = method.validation_metrics(sp.paired, clf)
    losses = method.loss_keys(cfg)
    if resumed and "best_metric" in before:  # Ray ranks the run's checkpoints by one metric
        best = before["best_metric"]
        if tc.best_metric not in ("auto", best or "none"):
            raise ConfigError(f"run {run} ranks its checkpoints by {best or 'age'}; resume it with "
                              f"train.best_metric auto or {best or 'none'}, or pick a new --style name")
    elif resumed:  # its earlier checkpoints carry no validation figures to rank them by
        best = None
    elif tc.best_metric == "auto":
        best = method.auto_metric(sp.paired, clf)
    elif tc.best_metric == "none":
        best = None
    elif tc.best_metric in available + losses:  # a loss ranks by its value at the checkpoint step
        best = tc.best_metric
    else:
        raise ConfigError(f"train.best_metric {tc.best_metric!r} is not measured on this dataset; "
                          f"choose auto, none, a loss or one of: {', '.join(available)}")
    if best is not None and best not in available + losses:
        say(f"validation off: {best}, which ranks this run's checkpoints, is no longer measured")
        return tuple(sp.train_a), tuple(sp.train_b), None, None
    say(f"validation on {len(heldout.a)} held-out images per domain (the selection split of {sp.source}"
        f"{', paired: ground truth' if sp.paired else ''}); checkpoints ranked by "
        f"{best or 'age (no best_metric)'}")
    info = {"best_metric": best, "order": quality.order(best) if best else None, "split": sp.source,
            "paired": sp.paired, "held_out": [len(sp.held_a), len(sp.held_b)],
            "selection": [len(select_a), len(select_b)],
            "metrics": available, "classifier": clf_info}
    if sp.source == "held-back train":
        info["held_back"] = [list(sp.held_a), list(sp.held_b)]
    plan = {"files_a": list(select_a), "files_b": list(select_b), "paired": sp.paired,
            "classifier": clf.state() if clf is not None and clf.usable else None, "info": info}
    return sp.train_a, sp.train_b, plan, best


def fit(cfg: Config, data_dir: str | Path, name: str, *, crash_at_step: int | None = None,
        verbose: bool = True, extra: dict[str, Any] | None = None) -> TrainResult:
    """Train (or resume) run ``name`` under ``cfg.cluster.storage``; returns the final checkpoint.

    The method is ``cfg.method``; ``extra`` is what it needs beyond the config and the data
    (a distillation's teacher, see distill.load_teacher), handed to every worker.
    """
    method = method_class(cfg.method)
    scan_a, scan_b = method.check_data(data_dir, cfg.data.crop_size)
    for domain, scan in (("A", scan_a), ("B", scan_b)):
        if verbose and scan.skipped:
            print(f"[raystyle] domain {domain}: skipped {len(scan.skipped)} non-image files")
        if verbose and scan.small:
            print(f"[raystyle] domain {domain}: {scan.small} images smaller than the crop are upscaled")
    run = run_location(cfg, name)
    storage.check_reachable(run)
    check_compatible(run, cfg)
    cl = cfg.cluster
    connect(cl.address)  # a cluster that cannot place the run fails before validation planning
    check_resources(cl.workers, cl.cpus_per_worker, cl.use_gpu)  # (which may train a classifier)
    files_a, files_b, val, best = plan_validation(cfg, data_dir, (scan_a.files, scan_b.files), run, verbose)
    if run.local is not None:
        run.local.mkdir(parents=True, exist_ok=True)
    if val is not None:
        runlog.write_validation(run, val["info"])
    n = max(len(files_a), len(files_b))
    total = total_steps(cfg, n, cl.workers)
    if verbose:
        print(
            f"[raystyle] {method.verb} {name!r}: "
            f"{method.data_text(len(files_a), len(files_b))}, "
            f"{cl.workers} worker(s){' on GPU' if cl.use_gpu else ''}, "
            f"{total} steps -> {run}",
            flush=True,
        )
    latest = ckpt.latest_checkpoint(run)
    done = ckpt.read_manifest(latest)["step"] if latest is not None else 0
    if done >= total:  # a finished run: its checkpoint, without starting the workers
        if verbose:
            print(f"[raystyle] {name!r} is already at step {done} of {total}: nothing to train "
                  "(raise --max-steps to go on)", flush=True)
        return TrainResult(run.native, latest, done)
    trainer = ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.to_dict(), "plugins": plugin_modules(), "run": run, "crash_at_step": crash_at_step,
            "data_dir": str(Path(data_dir).expanduser().resolve()),
            "files_a": list(files_a), "files_b": list(files_b), "val": val, "extra": extra,
            "ray_verbose": ray_verbose(),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cl.workers, use_gpu=cl.use_gpu,
            resources_per_worker={"CPU": cl.cpus_per_worker, **({"GPU": 1} if cl.use_gpu else {})},
        ),
        run_config=ray.train.RunConfig(
            # The filesystem resolved here (endpoint, scheme, credentials from the driver's
            # environment) travels to Ray's controller and workers with the run config.
            name=name, storage_path=run.parent.path, storage_filesystem=run.fs,
            failure_config=ray.train.FailureConfig(max_failures=cl.max_failures),
            # Ray Train's INFO lines (worker group, every reported result) stay in Ray's log
            # files unless --verbose; its warnings and errors always reach the console.
            **_logging_config(),
            # Ray keeps the keep_checkpoints best by the validation metric and, always, the
            # newest (resume needs it); without a metric, the newest ones.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints, checkpoint_score_attribute=best,
                checkpoint_score_order=quality.order(best) if best else "max"),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        return TrainResult(run.native, None, 0)
    final = run / PurePosixPath(result.checkpoint.path).name
    return TrainResult(run.native, final.native, ckpt.read_manifest(final)["step"])



def _quiet_ray_train() -> None:
    """Ray Train's INFO lines off on this worker (each reported result is a full repr of the
    checkpoint and metrics). Some of its loggers are named by file path, not ``ray.train``."""
    for name in ["ray.train", *list(logging.root.manager.loggerDict)]:
        if name.startswith("ray.train") or "/ray/train/" in name.replace("\\", "/"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _logging_config() -> dict[str, Any]:
    if not hasattr(ray.train, "LoggingConfig"):  # Ray Train releases before LoggingConfig
        return {}
    return {"logging_config": ray.train.LoggingConfig(log_level=ray_log_level())}


def export_on_cluster(checkpoint: str | Path, style: str, *, address: str | None = None,
                      **kwargs: Any):
    """Run ``export_style`` as a Ray task, so a cluster pipeline is train -> export unattended.

    The checkpoint and the models directory must be on storage the task's node can reach.
    Both are resolved here, on the driver, to absolute paths: the default registry
    ($RAYSTYLE_MODELS or $RAYSTYLE_HOME/models) and relative paths mean the driver's, not
    those of whichever node runs the task.
    """
    from raystyle.registry import models_dir

    kwargs["models_dir"] = str(models_dir(kwargs.get("models_dir")).resolve())
    source = checkpoint if storage.is_uri(str(checkpoint)) else Path(checkpoint).expanduser().resolve()
    connect(address)
    task = ray.remote(num_cpus=1, max_retries=1)(_export_task)
    return ray.get(task.remote(plugin_modules(), str(source), style, **kwargs))


def _export_task(plugins: list[str], source: str, style: str, **kwargs: Any):
    """``export_style`` on a worker, with the driver's methods registered from outside raystyle."""
    from raystyle.export import export_style

    for module in plugins:
        importlib.import_module(module)
    return export_style(source, style, **kwargs)
