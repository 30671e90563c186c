"""Checkpoint -> validated ONNX style in the registry.

``export_style`` picks the checkpoint (a run's latest, or its best by a metric), asks the
checkpoint's training method which style kind it produces (``Method.style_kind``), and hands
it to that kind's exporter, ``raystyle/export/<kind>.py`` with ``export(checkpoint, style,
...)``: generator.py (one generator direction) and arbitrary.py (an AdaIN encoder + decoder).
Every exporter passes its gates (gates.py) before anything is registered.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

from raystyle import checkpoint as ckpt
from raystyle import registry
from raystyle.export.gates import ExportError
from raystyle.runlog import read_metrics, read_validation


def export_style(source: str | Path, style: str, *, best: str | None = None,
                 precisions: tuple[str, ...] = ("fp32",), **options) -> registry.Style:
    """Export a checkpoint (or a run's latest/best one, see ``pick_checkpoint``) as style ``style``.

    Every artefact passes its gate (thresholds: the checkpoint's ``export`` config section
    with ``overrides`` such as ``["export.int8_min_psnr_db=32"]``) before anything is
    registered; a failed gate is an ExportError and the registry is left as it was.
    ``options``: the kind's exporter's own (direction, models_dir, torchscript, calib_images,
    overrides, allow_unvalidated_fp16, verbose).
    """
    from raystyle.methods import method_class

    registry.check_name(style)
    unknown = set(precisions) - set(registry.PRECISIONS)
    if unknown or not precisions:
        raise ExportError(f"precisions must be among {', '.join(registry.PRECISIONS)}, got {sorted(unknown)}")
    checkpoint = pick_checkpoint(source, best)
    kind = method_class(ckpt.load_config(checkpoint).method).style_kind
    exporter = importlib.import_module(f"raystyle.export.{kind}")
    return exporter.export(checkpoint, style, precisions=precisions, **options)


def pick_checkpoint(source: str | Path, best: str | None = None) -> Path:
    """A checkpoint dir as is; a run dir -> its latest, or its best one by metric ``best``.

    ``best`` is a name from the run's metrics log (validation figures such as val_gt_psnr:
    higher is better; training losses: lower is better), or ``auto``: the metric the run
    ranked its checkpoints by (validation.json).
    """
    from raystyle.methods.quality import order

    path = Path(source).expanduser()
    if best is None or (path / ckpt.MANIFEST).exists():
        return ckpt.resolve(path)
    if best == "auto":
        best = read_validation(path).get("best_metric")
        if not best:
            raise ExportError(f"{path} ranks its checkpoints by no metric (no validation.json "
                              f"with a best_metric): name one with --best METRIC")
    records = {r["step"]: r for r in read_metrics(path)}
    scored = []
    for c in ckpt.list_checkpoints(path):
        rec = records.get(ckpt.read_manifest(c)["step"])
        if rec is not None and isinstance(rec.get(best), int | float) and math.isfinite(rec[best]):
            scored.append((rec[best], c))
    if not scored:
        known = sorted({k for r in records.values() for k, v in r.items() if isinstance(v, float)})
        raise ExportError(f"no checkpoint of {path} has metric {best!r} (metrics: {', '.join(known) or 'none'})")
    pick = max if order(best) == "max" else min
    return pick(scored, key=lambda t: t[0])[1]
