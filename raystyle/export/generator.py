"""Checkpoint -> validated ONNX style in the registry (fp32, fp16, int8), pure torch + ORT.

One generator direction (g_ab or g_ba) becomes a new version of ``MODELS/NAME``:
  model.onnx            fp32, dynamic batch/height/width (multiples of 4), opset 18
  model.fp16.onnx       float16 weights and math, float32 input/output
  model.int8.onnx       static QDQ int8 convolutions, calibrated on training images of the source domain
  stats.onnx, tile.onnx, sums.onnx
                        the exact-tiling graphs (raystyle.core.tiling): whole-image InstanceNorm
                        statistics, a generator that normalises with given statistics, and
                        the per-tile sums that the Stylizer streams into exact statistics
  model.ts              TorchScript (optional, for users outside ONNX)
  model.json            metadata, the tiling halo, the int8 calibration images and every
                        validation figure measured here with the thresholds it passed
Export is a gate, not a record. Thresholds come from the checkpoint config's ``export``
section (raystyle.config.ExportConfig; ``--set export.KEY=VALUE`` overrides it):
  - fp32 model.onnx and tile(x, stats(x)) (the ORT graphs together) against the torch
    generator on random and held-out images: max abs error <= max_abs_error;
  - exact tiling on held-out images cut into 2x2 cores: one streaming pass of sums.onnx
    given the whole image's statistics gives them back (<= stats_max_rel_error), and the
    cores through tile.onnx form the whole image (PSNR >= tile_min_psnr_db);
  - int8 and fp16 model and tile graphs against fp32 on held-out images (never the
    calibration images): PSNR >= int8_min_psnr_db / fp16_min_psnr_db; an fp16 model that
    this machine's CPU provider cannot run is refused unless ``allow_unvalidated_fp16``
    (then recorded ``validated: false``);
  - NaN or inf in any output fails.
A failed gate is an ExportError naming the artefact, the figure and the threshold, and
nothing is registered: the version is written to a hidden folder and swapped in by
``registry.install`` only when every gate passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import yaml
from torch import nn

from raystyle import __version__, registry
from raystyle import checkpoint as ckpt
from raystyle.config import Config, ExportConfig
from raystyle.core.macs import count_macs, count_onnx_macs, count_params
from raystyle.core.nets import MULTIPLE, build_generator
from raystyle.core.tiling import (
    StatsModel,
    SumsModel,
    TileModel,
    halo_for,
    instance_norms,
    norm_layout,
    receptive_radius,
)
from raystyle.data.datasets import sample_photo_dir, scan_domain
from raystyle.infer.generator import Stylizer, _Plan, _to_input, _to_uint8, stats_change
from raystyle.methods.cyclegan import generator_state
from raystyle.runlog import read_metrics, read_validation

OPSET = 18
INPUT_SPEC = {
    "name": "image", "layout": "NCHW", "channels": "RGB", "dtype": "float32", "range": [-1.0, 1.0],
    "multiple_of": MULTIPLE, "dynamic": ["batch", "height", "width"],
}


class ExportError(ValueError):
    """The export cannot be done as asked (bad direction, precision, metric, failed check)."""


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


def resolve_direction(config: Config, direction: str | None) -> str:
    """``direction`` as given; None: a distilled student's own direction, else ab."""
    if direction is None:
        return config.distill.direction if config.distill is not None else "ab"
    return direction


def load_generator(checkpoint: Path, direction: str | None = None) -> tuple[nn.Module, Any, dict]:
    """(generator ``g_<direction>`` in eval mode, config, manifest); direction: see resolve_direction."""
    config, nets = ckpt.load_nets(checkpoint)  # export reads only the nets (and the manifest)
    direction = resolve_direction(config, direction)
    if direction not in ("ab", "ba"):
        raise ExportError(f"--direction must be ab or ba, got {direction!r}")
    if f"g_{direction}" not in nets:
        kind = f"a student distilled in direction {config.distill.direction}" if config.distill else "its nets"
        raise ExportError(f"{checkpoint} has no g_{direction} generator ({kind}); drop --direction or use the other one")
    gen = build_generator(config.model)
    gen.load_state_dict(generator_state(nets, direction))
    return gen.eval(), config, ckpt.read_manifest(checkpoint)


COST_SIDE = 256  # the image side at which model.json records MACs (the paper's training size)


def cost_figures(gen: nn.Module) -> dict[str, Any]:
    """Parameters and multiply-accumulates of one (1, 3, 256, 256) image (raystyle.core.macs)."""
    macs = count_macs(gen, COST_SIDE)
    return {"params": count_params(gen), "macs": macs, "gmacs": round(macs / 1e9, 3), "side": COST_SIDE}


def distillation_record(config: Any, checkpoint: Path, step: int) -> dict[str, Any]:
    """A student's teacher (checkpoint, run, step) and its agreement with the teacher on
    held-out images at this checkpoint's step (PSNR/SSIM from the run's metrics log)."""
    d = config.distill
    teacher = str(d.teacher)
    record: dict[str, Any] = {"teacher": {"checkpoint": teacher, "run": teacher.rstrip("/").rsplit("/", 1)[0],
                                          "step": d.teacher_step, "direction": d.direction}}
    found = [r for r in read_metrics(checkpoint.parent) if r.get("step") == step and "val_teacher_psnr" in r]
    if found:
        info = read_validation(checkpoint.parent)
        held = (info.get("held_out") or [config.train.val_images] * 2)[0 if d.direction == "ab" else 1]
        record["vs_teacher"] = {"psnr_db": found[-1]["val_teacher_psnr"], "ssim": found[-1]["val_teacher_ssim"],
                                "step": step, "held_out_images": min(config.train.val_images, held),
                                "split": info.get("split"), "side": config.data.crop_size}
    else:
        record["vs_teacher"] = None  # the run validated nothing at this step (validation off)
    return record


def _dims(multiple: int = MULTIPLE):
    batch = torch.export.Dim("batch", min=1, max=1024)
    if multiple == 1:  # e.g. AdaIN's decoder input: any side from 2 (its reflection pads)
        return batch, torch.export.Dim("h", min=2, max=8192), torch.export.Dim("w", min=2, max=8192)
    h4 = torch.export.Dim("h4", min=1, max=8192)
    w4 = torch.export.Dim("w4", min=1, max=8192)
    return batch, multiple * h4, multiple * w4


def export_onnx(module: nn.Module, path: Path, example: tuple, input_names: list[str],
                output_name: str, opset: int = OPSET, spatial: tuple[int, ...] = (0,),
                multiple: int = MULTIPLE) -> None:
    """torch.export-based ONNX export with dynamic batch, height and width (multiples of ``multiple``).

    The inputs at positions ``spatial`` are (B, C, H, W) sharing H and W; the others (B, ...).
    """
    batch, h, w = _dims(multiple)
    shapes = tuple({0: batch, 2: h, 3: w} if i in spatial else {0: batch} for i in range(len(example)))
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty
        program = torch.onnx.export(module, example, input_names=input_names,
                                    output_names=[output_name], dynamic_shapes=shapes,
                                    opset_version=opset, dynamo=True, external_data=False)
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)


def session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _image_files(folder: Path | None, limit: int, exclude: tuple[str, ...] = ()) -> list[str]:
    """Up to ``limit`` image paths of ``folder``, else of the photos that ship with scikit-image."""
    if folder is None or not folder.is_dir() or not scan_domain(folder, 0).files:
        folder = sample_photo_dir()
    return [f for f in scan_domain(folder, 0).files if f not in exclude][:limit]


def _load(files: list[str], side: int) -> list[torch.Tensor]:
    """(1, 3, H, W) in [-1, 1], longer side <= ``side``, H and W multiples of 4 (as evaluate.load_images)."""
    from torchvision.transforms.v2 import functional as TF

    from raystyle.data.images import load_rgb

    out = []
    for path in files:
        x = TF.pil_to_tensor(load_rgb(path))
        h, w = x.shape[-2:]
        scale = min(1.0, side / max(h, w))
        h, w = (max(MULTIPLE, int(n * scale) // MULTIPLE * MULTIPLE) for n in (h, w))
        out.append(TF.resize(x, [h, w], antialias=True).float().div(127.5).sub(1).unsqueeze(0))
    return out


def _center_square(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


def _source_folders(manifest: dict, direction: str) -> tuple[Path | None, Path | None]:
    """(calibration folder = train split of the source domain, held-out = test split); a fast
    style net trained on a plain photo folder calibrates on that folder."""
    data = manifest.get("data_dir")
    if not data:
        return None, None
    src = "A" if direction == "ab" else "B"
    train = Path(data) / f"train{src}"
    if manifest.get("method") == "fast" and not train.is_dir():
        return Path(data), None
    return train, Path(data) / f"test{src}"


def style_image_record(config: Any, checkpoint: Path, work: Path) -> dict[str, Any]:
    """A fast style net's painting: its file's sha256, size, features, and a thumbnail
    (``style.jpg`` beside model.onnx) from the copy the checkpoint carries."""
    from PIL import Image

    from raystyle.methods.fast import layers_of, thumbnail

    _, nets = ckpt.load_nets(checkpoint)
    image = nets["style_image"]  # (3, H, W) uint8, as trained on
    Image.fromarray(thumbnail(image)).save(work / "style.jpg", quality=90)
    fc = config.fast
    content, style = layers_of(fc)
    return {"file": fc.style_image, "sha256": fc.style_sha256, "thumbnail": "style.jpg",
            "trained_size": [int(image.shape[2]), int(image.shape[1])],
            "features": fc.features, "features_sha256": fc.features_sha256 or None,
            "content_layers": list(content), "style_layers": list(style),
            "weights": {"content": fc.content_weight, "style": fc.style_weight, "tv": fc.tv_weight}}


class _Calibration:
    """onnxruntime.quantization CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it: Iterator = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def quantize_int8(fp32: Path, out: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # the quantizer logs per-tensor warnings to root
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(out), _Calibration(feeds), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            # Convolutions only: Pad/InstanceNorm/ReLU stay float. Quantising those too adds a
            # Q/DQ pair around every op; measured on the paper's generator at 256 px on a
            # 2-core AVX-512 VNNI CPU: 1.47x fp32 with all ops, 2.27x with convolutions only.
            op_types_to_quantize=["Conv", "ConvTranspose"],
            extra_options={"CalibPercentile": 99.999},
        )
    root_logger.setLevel(level)


def _constants_as_tensors(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant nodes with ``value_float(s)`` attributes rewritten to a ``value`` tensor.

    ONNX Runtime's fp16 converter converts only tensor attributes: a float list constant
    (as older torch/onnxscript emit for instance norm) stays float32 while the graph is
    typed float16, and the model does not load ("Type (tensor(float16)) of output arg ...
    of node Expand does not match expected type (tensor(float))").
    """
    from onnx import helper, numpy_helper

    for node in model.graph.node:
        if node.op_type != "Constant":
            continue
        for attr in list(node.attribute):
            if attr.name in ("value_float", "value_floats"):
                values = [attr.f] if attr.name == "value_float" else list(attr.floats)
                array = np.asarray(values if attr.name == "value_floats" else values[0], np.float32)
                node.attribute.remove(attr)
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(array)))
    return model


def convert_fp16(fp32: Path, out: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(_constants_as_tensors(onnx.load(str(fp32))), keep_io_types=True)
    onnx.save(model, str(out))


@dataclasses.dataclass
class _HeldOut:
    """Images never used for calibration, and what the fp32 graphs make of them."""

    images: list[torch.Tensor]  # (1, 3, H, W) in [-1, 1]
    names: list[str]  # for messages: "held-out image NAME"
    reference: list[np.ndarray] = dataclasses.field(default_factory=list)  # model.onnx outputs
    stats: list[np.ndarray] = dataclasses.field(default_factory=list)  # stats.onnx outputs


# -- the gates --------------------------------------------------------------------------------


def export_settings(config: Config, overrides: list[str] | None = None) -> ExportConfig:
    """The checkpoint's ``export`` section (defaults for older checkpoints) with ``export.KEY=VALUE`` overrides."""
    values: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        section, _, name = key.strip().partition(".")
        if not sep or section != "export" or not name:
            keys = ", ".join(f.name for f in dataclasses.fields(ExportConfig))
            raise ExportError(f"--set {item!r}: export takes export.KEY=VALUE with KEY among {keys}")
        values[name] = yaml.safe_load(raw) if raw.strip() else None
    return config.replace(export=values).export if values else config.export


def _finite(artefact: str, array: np.ndarray, where: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ExportError(f"{artefact} outputs NaN/inf on {where}; nothing was registered")
    return array


def _at_most(artefact: str, figure: str, value: float, key: str, limit: float) -> float:
    if not value <= limit:  # NaN fails too
        raise ExportError(f"{artefact}: {figure} {value:.3g} > export.{key} {limit:g}; nothing was registered")
    return value


def _at_least(artefact: str, figure: str, value: float, key: str, limit: float) -> float:
    if not value >= limit:
        raise ExportError(f"{artefact}: {figure} {value:.2f} dB < export.{key} {limit:g} dB; nothing was registered")
    return round(value, 2)


def _psnr_db(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else min(99.0, 10 * math.log10(peak**2 / mse))


def _u8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return np.clip((x[0].permute(1, 2, 0).numpy() + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def _max_abs_error(artefact: str, run, module: nn.Module, inputs: list[tuple], names: list[str]) -> float:
    """max |ORT - torch| over ``inputs``; ``run(*arrays)`` is the ONNX side."""
    err = 0.0
    with torch.no_grad():
        for args, where in zip(inputs, names, strict=True):
            got = _finite(artefact, run(*(a.numpy() for a in args)), where)
            err = max(err, float(np.abs(got - module(*args).numpy()).max()))
    return err


def _outputs(artefact: str, sess: ort.InferenceSession, images: list[torch.Tensor], names: list[str],
             stats: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """``sess`` on each image (a tile graph gets the image's fp32 statistics too), all finite."""
    out = []
    for i, (x, where) in enumerate(zip(images, names, strict=True)):
        feed = {"image": x.numpy()} if stats is None else {"image": x.numpy(), "stats": stats[i]}
        out.append(_finite(artefact, sess.run(None, feed)[0], where))
    return out


def _min_psnr(outs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    return min(_psnr_db(a, b, 2.0) for a, b in zip(outs, reference, strict=True))  # range [-1, 1]


def _check_tiling(style: registry.Style, precision: str, images: list[np.ndarray], names: list[str],
                  gates: ExportConfig) -> dict[str, float]:
    """The Stylizer's exact tiling on held-out images cut into >= 2x2 cores, vs the whole image.

    With InstanceNorm: one streaming pass of sums.onnx over the tiles, given the whole image's
    statistics (stats.onnx), must give those statistics back (a fixed point: mask, strides,
    halo and accumulation all right), and the tiles' cores through tile.onnx must form the
    whole image's output.
    """
    st = Stylizer(style, precision=precision, provider="cpu")
    artefact = style.file(precision, "tile" if st._tiling is not None else "model").name
    worst_rel, worst_db = 0.0, 99.0
    for a, where in zip(images, names, strict=True):
        h, w = a.shape[:2]
        core = max(MULTIPLE, max(h, w) // 2 // MULTIPLE * MULTIPLE)
        plan = _Plan(a.shape, core, st.halo)
        whole = _finite(style.file(precision).name, st.session.run(None, {st._input: _to_input(a[None])})[0], where)
        if st._tiling is not None:
            stats_sess = st._tiling[1]
            exact = _finite("stats.onnx", stats_sess.run(None, {"image": _to_input(a[None])})[0], where)
            rel = stats_change(exact, st._sums_pass(a, plan, exact.astype(np.float64)), st._layout)
            worst_rel = max(worst_rel, _at_most("sums.onnx", f"streamed statistics vs stats.onnx on {where}",
                                                rel, "stats_max_rel_error", gates.stats_max_rel_error))

            def run(x, opts, exact=exact, where=where):
                return _finite(artefact, st._tiling[0].run(None, {"image": x, "stats": exact}, opts)[0], where)
        else:
            def run(x, opts, where=where):
                return _finite(artefact, st.session.run(None, {st._input: x}, opts)[0], where)
        tiled = st._assemble(a, plan, run)
        db = _psnr_db(tiled, _to_uint8(whole, h, w)[0], 255.0)
        worst_db = min(worst_db, _at_least(artefact, f"tiled ({core} px cores) vs whole image PSNR on {where}",
                                           db, "tile_min_psnr_db", gates.tile_min_psnr_db))
    return {"stats_max_rel_error": worst_rel, "tiled_psnr_db": round(worst_db, 2)}


# -- the export ----------------------------------------------------------------------------------


def export_style(source: str | Path, style: str, *, direction: str | None = None,
                 models_dir: str | Path | None = None, precisions: tuple[str, ...] = ("fp32",),
                 best: str | None = None, torchscript: bool = False, calib_images: int = 16,
                 overrides: list[str] | None = None, allow_unvalidated_fp16: bool = False,
                 verbose: bool = False) -> registry.Style:
    """Export one generator of a checkpoint (or a run's latest/best one) as style ``style``.

    Every artefact passes its gate (thresholds: the checkpoint's ``export`` config section
    with ``overrides`` such as ``["export.int8_min_psnr_db=32"]``) before anything is
    registered; a failed gate is an ExportError and the registry is left as it was.
    ``direction`` None: ab, or a distilled student's own direction.
    """
    registry.check_name(style)
    unknown = set(precisions) - set(registry.PRECISIONS)
    if unknown or not precisions:
        raise ExportError(f"precisions must be among {', '.join(registry.PRECISIONS)}, got {sorted(unknown)}")
    checkpoint = pick_checkpoint(source, best)
    if ckpt.load_config(checkpoint).adain is not None:  # an arbitrary style: encoder + decoder
        return _export_adain(checkpoint, style, direction, models_dir, precisions, torchscript,
                             calib_images, overrides, allow_unvalidated_fp16, verbose)
    gen, config, manifest = load_generator(checkpoint, direction)
    direction = resolve_direction(config, direction)
    gates = export_settings(config, overrides)
    calib_dir, test_dir = _source_folders(manifest, direction)
    crop = config.data.crop_size
    held_out = _image_files(test_dir, 4)  # never used for calibration
    held = _HeldOut(_load(held_out, 2 * crop), [f"held-out image {Path(f).name}" for f in held_out])
    torch.manual_seed(0)
    random = [torch.rand(2, 3, crop, crop) * 2 - 1, torch.rand(1, 3, crop + 12, crop - 8) * 2 - 1]
    say = print if verbose else (lambda *a, **k: None)

    root = registry.models_dir(models_dir)
    version, work = registry.new_version(style, root)
    try:
        meta: dict[str, Any] = {
            "style": style, "version": version, "direction": direction,
            "source_domain": direction[0].upper(), "target_domain": direction[1].upper(),
            "architecture": {"generator": "resnet", **config.model.__dict__},
            "training": {"checkpoint": str(checkpoint), "run_dir": str(checkpoint.parent),
                         "step": manifest["step"], "epoch": manifest["epoch"],
                         "data_dir": manifest.get("data_dir")},
            "method": config.method, "cost": cost_figures(gen),
            "opset": OPSET, "input": INPUT_SPEC, "output": {**INPUT_SPEC, "name": "stylized"},
            "precisions": {}, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "raystyle_version": __version__,
        }
        t0 = time.perf_counter()
        fp32 = work / "model.onnx"
        export_onnx(gen, fp32, (random[0],), ["image"], "stylized")
        sess32 = session(fp32)
        onnx_macs = count_onnx_macs(fp32, COST_SIDE)
        if onnx_macs != meta["cost"]["macs"]:  # the figure recorded is the graph that is served
            raise ExportError(f"model.onnx: {onnx_macs} MACs at {COST_SIDE} px in the graph, "
                              f"{meta['cost']['macs']} counted on the torch generator")
        meta["cost"]["macs_checked_on"] = "model.onnx"
        if config.distill is not None:
            meta["distillation"] = distillation_record(config, checkpoint, manifest["step"])
        if config.fast is not None:
            meta["style_image"] = style_image_record(config, checkpoint, work)

        def run32(x):
            return sess32.run(None, {"image": x})[0]

        err_random = _max_abs_error("model.onnx", run32, gen, [(x,) for x in random], ["random input"] * 2)
        err_real = _max_abs_error("model.onnx", run32, gen, [(x,) for x in held.images], held.names)
        _at_most("model.onnx", "max |ORT - torch|", max(err_random, err_real), "max_abs_error", gates.max_abs_error)
        entry: dict[str, Any] = {"file": fp32.name, "max_abs_error_vs_torch": {"random": err_random, "real": err_real}}
        held.reference = _outputs("model.onnx", sess32, held.images, held.names)

        norms = instance_norms(gen)
        radius = receptive_radius(gen)
        meta["tiling"] = {"halo": halo_for(gen), "receptive_radius": radius,
                          "norms": norm_layout(gen) if norms else []}
        if norms:
            entry.update(_tiling_graphs(gen, work, random, held, gates))
        meta["precisions"]["fp32"] = entry
        images_u8 = [_u8(x) for x in held.images[:2]]  # two are enough to catch a wrong halo or mask
        entry.update(_check_tiling(registry.Style(style, work, meta, work), "fp32", images_u8, held.names[:2], gates))
        entry["validated"] = True
        say(f"[raystyle] fp32 ONNX: max |ORT - torch| = {max(err_random, err_real):.2e}; tiles vs whole "
            f"{entry['tiled_psnr_db']} dB (halo {meta['tiling']['halo']} px) ({time.perf_counter() - t0:.1f} s)")

        if "int8" in precisions:
            calib_files = _image_files(calib_dir, calib_images, exclude=tuple(held_out))
            entry8 = meta["precisions"]["int8"] = _int8(gen, work, held, calib_files, min(crop, 128), norms, gates)
            say(f"[raystyle] int8 ONNX (QDQ, {entry8['calibration']['count']} calibration images): PSNR vs "
                f"fp32 {entry8['psnr_vs_fp32_db']} dB (gate {gates.int8_min_psnr_db:g})")
        if "fp16" in precisions:
            entry16 = meta["precisions"]["fp16"] = _fp16(work, held, norms, gates, allow_unvalidated_fp16)
            say(f"[raystyle] fp16 ONNX: PSNR vs fp32 {entry16.get('psnr_vs_fp32_db')} dB "
                f"(gate {gates.fp16_min_psnr_db:g})")
        if torchscript:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # jit is deprecated upstream; still loads everywhere
                traced = torch.jit.trace(gen, random[0], check_trace=False)
            traced.save(str(work / "model.ts"))
            meta["torchscript"] = "model.ts"
        meta["validation"] = {"thresholds": dataclasses.asdict(gates), "held_out_images": held_out,
                              "provider": "CPUExecutionProvider", "onnxruntime": ort.__version__}
        (work / registry.METADATA).write_text(json.dumps(meta, indent=2))
        return registry.install(work, style, version, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _export_adain(checkpoint: Path, style: str, direction: str | None, models_dir: str | Path | None,
                  precisions: tuple[str, ...], torchscript: bool, calib_images: int, overrides: list[str] | None,
                  allow_unvalidated_fp16: bool, verbose: bool) -> registry.Style:
    from raystyle.export.arbitrary import export_arbitrary

    if direction not in (None, "ab") or torchscript:
        raise ExportError("an AdaIN checkpoint exports as an arbitrary style: --direction and "
                          "--torchscript are for generators")
    config = ckpt.load_config(checkpoint)
    return export_arbitrary(checkpoint, config, ckpt.read_manifest(checkpoint), style, models_dir=models_dir,
                            precisions=precisions, gates=export_settings(config, overrides),
                            calib_images=calib_images, allow_unvalidated_fp16=allow_unvalidated_fp16,
                            verbose=verbose)


def _tiling_graphs(gen: nn.Module, work: Path, random: list[torch.Tensor], held: _HeldOut,
                   gates: ExportConfig) -> dict[str, Any]:
    """stats.onnx, tile.onnx and sums.onnx; the ORT pair checked against the generator itself."""
    example = random[0]
    stats_model, tile_model = StatsModel(gen).eval(), TileModel(gen).eval()
    export_onnx(stats_model, work / "stats.onnx", (example,), ["image"], "stats")
    with torch.no_grad():
        stats = stats_model(example)
    mask = torch.ones(example.shape[0], 1, *example.shape[2:])
    export_onnx(tile_model, work / "tile.onnx", (example, stats), ["image", "stats"], "stylized")
    export_onnx(SumsModel(gen).eval(), work / "sums.onnx", (example, stats, mask),
                ["image", "stats", "mask"], "sums", spatial=(0, 2))
    # tile(x, stats(x)), both ORT graphs, against the generator (not against its own torch source)
    stats_sess, tile_sess = session(work / "stats.onnx"), session(work / "tile.onnx")
    held.stats = [_finite("stats.onnx", stats_sess.run(None, {"image": x.numpy()})[0], where)
                  for x, where in zip(held.images, held.names, strict=True)]

    def pair(x):
        st = _finite("stats.onnx", stats_sess.run(None, {"image": x})[0], "an input")
        return tile_sess.run(None, {"image": x, "stats": st})[0]

    err = _max_abs_error("tile.onnx", pair, gen, [(x,) for x in [*held.images, random[1]]],
                         [*held.names, "random input"])
    _at_most("tile.onnx", "max |tile(x, stats(x)) - generator(x)|", err, "max_abs_error", gates.max_abs_error)
    return {"tile": "tile.onnx", "stats": "stats.onnx", "sums": "sums.onnx", "tile_max_abs_error_vs_torch": err}


def _int8(gen: nn.Module, work: Path, held: _HeldOut, calib_files: list[str], side: int, norms: list,
          gates: ExportConfig) -> dict[str, Any]:
    """int8 model (and tile graph) calibrated on ``calib_files``, checked against fp32 on held-out images."""
    # Square crops of at most 128 px: the percentile calibrator needs equal shapes and keeps
    # every activation of every image in memory (256 px x 16 images of the paper's generator
    # would be ~6 GB); activation ranges barely depend on size.
    calib = [_center_square(x, side) for x in _load(calib_files, 2 * side)]
    if not calib:
        raise ExportError("no calibration images for int8 (all candidates are held out)")
    quantize_int8(work / "model.onnx", work / "model.int8.onnx", [{"image": x.numpy()} for x in calib])
    entry: dict[str, Any] = {"file": "model.int8.onnx",
                             "calibration": {"count": len(calib), "side": side, "images": calib_files}}
    outs = _outputs("model.int8.onnx", session(work / "model.int8.onnx"), held.images, held.names)
    entry["psnr_vs_fp32_db"] = _at_least("model.int8.onnx", "PSNR vs fp32", _min_psnr(outs, held.reference),
                                         "int8_min_psnr_db", gates.int8_min_psnr_db)
    if norms:
        stats_model = StatsModel(gen).eval()
        with torch.no_grad():
            feeds = [{"image": x.numpy(), "stats": stats_model(x).numpy()} for x in calib]
        quantize_int8(work / "tile.onnx", work / "tile.int8.onnx", feeds)
        outs = _outputs("tile.int8.onnx", session(work / "tile.int8.onnx"), held.images, held.names, held.stats)
        entry["tile_psnr_vs_fp32_db"] = _at_least("tile.int8.onnx", "PSNR vs fp32", _min_psnr(outs, held.reference),
                                                  "int8_min_psnr_db", gates.int8_min_psnr_db)
        entry.update(tile="tile.int8.onnx", stats="stats.onnx", sums="sums.onnx")
    entry["validated"] = True
    return entry


def _fp16(work: Path, held: _HeldOut, norms: list, gates: ExportConfig, allow_unvalidated: bool) -> dict[str, Any]:
    """fp16 model (and tile graph), validated where this machine's CPU provider can run them."""
    convert_fp16(work / "model.onnx", work / "model.fp16.onnx")
    entry: dict[str, Any] = {"file": "model.fp16.onnx"}
    if norms:
        convert_fp16(work / "tile.onnx", work / "tile.fp16.onnx")
        entry.update(tile="tile.fp16.onnx", stats="stats.onnx", sums="sums.onnx")
    try:
        model16 = session(work / "model.fp16.onnx")
        tile16 = session(work / "tile.fp16.onnx") if norms else None
        out16 = [model16.run(None, {"image": x.numpy()})[0] for x in held.images]
    except Exception as exc:  # an fp16 kernel this ORT build lacks on the CPU
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}" if str(exc) else type(exc).__name__
        if not allow_unvalidated:
            raise ExportError(f"model.fp16.onnx cannot run on this machine's CPU provider ({reason}), so it "
                              "cannot be validated; export it where it runs, or pass --allow-unvalidated-fp16 "
                              "to register it unvalidated") from None
        entry.update(validated=False, psnr_vs_fp32_db=None,
                     note=f"NOT validated: the CPU provider cannot run it ({type(exc).__name__}); meant for CUDA/TensorRT")
        return entry
    for y, where in zip(out16, held.names, strict=True):
        _finite("model.fp16.onnx", y, where)
    entry["psnr_vs_fp32_db"] = _at_least("model.fp16.onnx", "PSNR vs fp32", _min_psnr(out16, held.reference),
                                         "fp16_min_psnr_db", gates.fp16_min_psnr_db)
    if tile16 is not None:
        t16 = _min_psnr(_outputs("tile.fp16.onnx", tile16, held.images, held.names, held.stats), held.reference)
        entry["tile_psnr_vs_fp32_db"] = _at_least("tile.fp16.onnx", "PSNR vs fp32", t16,
                                                  "fp16_min_psnr_db", gates.fp16_min_psnr_db)
    entry["validated"] = True
    return entry
