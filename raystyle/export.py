"""Checkpoint -> validated ONNX style in the registry (fp32, fp16, int8), pure torch + ORT.

One generator direction (g_ab or g_ba) becomes ``MODELS/NAME/``:
  model.onnx            fp32, dynamic batch/height/width (multiples of 4), opset 18
  model.fp16.onnx       float16 weights and math, float32 input/output (GPU providers)
  model.int8.onnx       static QDQ int8 convolutions, calibrated on training images of the source domain
  tile.onnx, stats.onnx the tiling pair: ``stats`` returns every InstanceNorm's mean/var of a
                        (downscaled) whole image, ``tile`` normalises a tile with them, so
                        tiles of a huge image agree with each other and with the whole image
  model.ts              TorchScript (optional, for users outside ONNX)
  model.json            metadata and the validation figures measured here
Each ONNX file passes the ONNX checker and is compared with torch on random and real
images; each reduced precision records its PSNR against fp32 on images that were not
used for calibration. The entry is written to a hidden folder and renamed into place,
so a reader never sees a half-written style.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from . import __version__, registry
from . import checkpoint as ckpt
from .data import sample_photo_dir, scan_domain
from .evaluate import load_images, psnr
from .nets import MULTIPLE, build_generator
from .runlog import read_metrics

OPSET = 18
INPUT_SPEC = {
    "name": "image", "layout": "NCHW", "channels": "RGB", "dtype": "float32", "range": [-1.0, 1.0],
    "multiple_of": MULTIPLE, "dynamic": ["batch", "height", "width"],
}


class ExportError(ValueError):
    """The export cannot be done as asked (bad direction, precision, metric, failed check)."""


# ----------------------------------------------------------------------------------------
# Tiling graphs: InstanceNorm with statistics computed once for the whole image.


class _Ctx:
    def __init__(self):
        self.collected: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.stats: torch.Tensor | None = None


class _CollectNorm(nn.Module):
    def __init__(self, ctx: _Ctx, eps: float, index: int):
        super().__init__()
        self.ctx, self.eps, self.index = ctx, eps, index

    def forward(self, x):
        mean = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        var = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True)
        self.ctx.collected[self.index] = (mean.flatten(1), var.flatten(1))  # (B, C) each
        return (x - mean) / torch.sqrt(var + self.eps)


class _ApplyNorm(nn.Module):
    def __init__(self, ctx: _Ctx, eps: float, offset: int, channels: int):
        super().__init__()
        self.ctx, self.eps, self.offset, self.c = ctx, eps, offset, channels

    def forward(self, x):
        s = self.ctx.stats  # (B, S): [mean_0, var_0, mean_1, var_1, ...]
        mean = s[:, self.offset : self.offset + self.c][:, :, None, None]
        var = s[:, self.offset + self.c : self.offset + 2 * self.c][:, :, None, None]
        return (x - mean) / torch.sqrt(var + self.eps)


def _instance_norms(net: nn.Module) -> list[tuple[nn.Module, str, nn.InstanceNorm2d]]:
    """Every InstanceNorm2d with its parent, in module-traversal order (the stats layout)."""
    found = []
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.InstanceNorm2d):
                found.append((parent, name, child))
    return found


class StatsModel(nn.Module):
    """image (B, 3, H, W) -> (B, S) means and variances of every InstanceNorm input."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.ctx = _Ctx()
        self.net = copy.deepcopy(generator)
        for i, (parent, name, norm) in enumerate(_instance_norms(self.net)):
            setattr(parent, name, _CollectNorm(self.ctx, norm.eps, i))

    def forward(self, x):
        self.ctx.collected = {}
        self.net(x)
        return torch.cat([t for i in sorted(self.ctx.collected) for t in self.ctx.collected[i]], dim=1)


class TileModel(nn.Module):
    """(tile (B, 3, h, w), stats (B, S)) -> stylized tile, normalised with the given stats."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.ctx = _Ctx()
        self.net = copy.deepcopy(generator)
        offset = 0
        probe = StatsModel(generator)  # one tiny pass tells each norm's channel count
        with torch.no_grad():
            probe(torch.zeros(1, 3, 4 * MULTIPLE, 4 * MULTIPLE))
        for i, (parent, name, norm) in enumerate(_instance_norms(self.net)):
            c = probe.ctx.collected[i][0].shape[1]
            setattr(parent, name, _ApplyNorm(self.ctx, norm.eps, offset, c))
            offset += 2 * c
        self.stats_size = offset

    def forward(self, x, stats):
        self.ctx.stats = stats
        return self.net(x)


# ----------------------------------------------------------------------------------------


def pick_checkpoint(source: str | Path, best: str | None = None) -> Path:
    """A checkpoint dir as is; a run dir -> its latest, or the one lowest in metric ``best``."""
    path = Path(source).expanduser()
    if best is None or (path / ckpt.MANIFEST).exists():
        return ckpt.resolve(path)
    records = {r["step"]: r for r in read_metrics(path)}
    scored = []
    for c in ckpt.list_checkpoints(path):
        rec = records.get(ckpt.read_manifest(c)["step"])
        if rec is not None and best in rec:
            scored.append((rec[best], c))
    if not scored:
        known = sorted({k for r in records.values() for k, v in r.items() if isinstance(v, float)})
        raise ExportError(f"no checkpoint of {path} has metric {best!r} (metrics: {', '.join(known) or 'none'})")
    return min(scored, key=lambda t: t[0])[1]


def load_generator(checkpoint: Path, direction: str) -> tuple[nn.Module, Any, dict]:
    if direction not in ("ab", "ba"):
        raise ExportError(f"--direction must be ab or ba, got {direction!r}")
    config, nets, _ = ckpt.load_shared(checkpoint)
    gen = build_generator(config.model)
    gen.load_state_dict(nets[f"g_{direction}"])
    return gen.eval(), config, ckpt.read_manifest(checkpoint)


def _dims():
    batch = torch.export.Dim("batch", min=1, max=1024)
    h4 = torch.export.Dim("h4", min=1, max=8192)
    w4 = torch.export.Dim("w4", min=1, max=8192)
    return batch, MULTIPLE * h4, MULTIPLE * w4


def export_onnx(module: nn.Module, path: Path, example: tuple, input_names: list[str],
                output_name: str, opset: int = OPSET) -> None:
    """torch.export-based ONNX export with dynamic batch, height and width."""
    batch, h, w = _dims()
    shapes: list[dict[int, Any]] = [{0: batch, 2: h, 3: w}] + [{0: batch} for _ in example[1:]]
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty
        program = torch.onnx.export(module, example, input_names=input_names,
                                    output_names=[output_name], dynamic_shapes=tuple(shapes),
                                    opset_version=opset, dynamo=True, external_data=False)
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)


def session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _real_images(folder: Path | None, limit: int, side: int) -> list[torch.Tensor]:
    if folder is not None and folder.is_dir() and scan_domain(folder, 0).files:
        return load_images(folder, limit, side)
    return load_images(sample_photo_dir(), limit, side)  # real photos that ship with scikit-image


def _center_square(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


def _source_folders(manifest: dict, direction: str) -> tuple[Path | None, Path | None]:
    """(calibration folder = train split of the source domain, held-out = test split)."""
    data = manifest.get("data_dir")
    if not data:
        return None, None
    src = "A" if direction == "ab" else "B"
    return Path(data) / f"train{src}", Path(data) / f"test{src}"


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


def convert_fp16(fp32: Path, out: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(out))


def _max_abs_error(sess: ort.InferenceSession, module: nn.Module, inputs: list[tuple]) -> float:
    err = 0.0
    with torch.no_grad():
        for args in inputs:
            feed = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=True)}
            got = sess.run(None, feed)[0]
            err = max(err, float(np.abs(got - module(*args).numpy()).max()))
    return err


def _outputs(sess: ort.InferenceSession, images: list[torch.Tensor]) -> list[np.ndarray]:
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: x.numpy()})[0] for x in images]


def export_style(source: str | Path, style: str, *, direction: str = "ab",
                 models_dir: str | Path | None = None, precisions: tuple[str, ...] = ("fp32",),
                 best: str | None = None, torchscript: bool = False, calib_images: int = 16,
                 max_abs_tolerance: float = 1e-3, verbose: bool = False) -> registry.Style:
    """Export one generator of a checkpoint (or a run's latest/best one) as style ``style``."""
    registry.check_name(style)
    unknown = set(precisions) - set(registry.PRECISIONS)
    if unknown or not precisions:
        raise ExportError(f"precisions must be among {', '.join(registry.PRECISIONS)}, got {sorted(unknown)}")
    checkpoint = pick_checkpoint(source, best)
    gen, config, manifest = load_generator(checkpoint, direction)
    calib_dir, test_dir = _source_folders(manifest, direction)
    crop = config.data.crop_size
    real = _real_images(test_dir, 4, 2 * crop)  # held out: never used for calibration
    torch.manual_seed(0)
    random = [torch.rand(2, 3, crop, crop) * 2 - 1, torch.rand(1, 3, crop + 12, crop - 8) * 2 - 1]
    say = print if verbose else (lambda *a, **k: None)

    root = registry.models_dir(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    work = root / f".{style}.{uuid.uuid4().hex[:8]}.tmp"
    work.mkdir()
    try:
        meta: dict[str, Any] = {
            "style": style, "direction": direction,
            "source_domain": direction[0].upper(), "target_domain": direction[1].upper(),
            "architecture": {"generator": "resnet", **config.model.__dict__},
            "training": {"checkpoint": str(checkpoint), "run_dir": str(checkpoint.parent),
                         "step": manifest["step"], "epoch": manifest["epoch"],
                         "data_dir": manifest.get("data_dir")},
            "opset": OPSET, "input": INPUT_SPEC, "output": {**INPUT_SPEC, "name": "stylized"},
            "precisions": {}, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "raystyle_version": __version__,
        }
        t0 = time.perf_counter()
        fp32 = work / "model.onnx"
        export_onnx(gen, fp32, (random[0],), ["image"], "stylized")
        sess32 = session(fp32)
        err_random = _max_abs_error(sess32, gen, [(x,) for x in random])
        err_real = _max_abs_error(sess32, gen, [(x,) for x in real])
        if max(err_random, err_real) > max_abs_tolerance:
            raise ExportError(f"ONNX output differs from torch by {max(err_random, err_real):.2e} "
                              f"(> {max_abs_tolerance:g})")
        entry: dict[str, Any] = {"file": fp32.name, "max_abs_error_vs_torch": {
            "random": err_random, "real": err_real}}
        tile_inputs = None
        if _instance_norms(gen):
            stats_model, tile_model = StatsModel(gen).eval(), TileModel(gen).eval()
            export_onnx(stats_model, work / "stats.onnx", (random[0],), ["image"], "stats")
            with torch.no_grad():
                stats = stats_model(random[0])
            export_onnx(tile_model, work / "tile.onnx", (random[0], stats), ["image", "stats"], "stylized")
            tile_inputs = [(x, stats_model(x).detach()) for x in real[:2]]
            tile_err = _max_abs_error(session(work / "tile.onnx"), tile_model, tile_inputs)
            entry.update(tile="tile.onnx", stats="stats.onnx", tile_max_abs_error_vs_torch=tile_err)
        meta["precisions"]["fp32"] = entry
        say(f"[raystyle] fp32 ONNX: max |ORT - torch| = {max(err_random, err_real):.2e} "
            f"({time.perf_counter() - t0:.1f} s)")
        reference = _outputs(sess32, real)

        if "int8" in precisions:
            # Square crops of at most 128 px: the percentile calibrator needs equal shapes and
            # keeps every activation of every image in memory (256 px x 16 images of the
            # paper's generator would be ~6 GB); activation ranges barely depend on size.
            side = min(crop, 128)
            calib = [_center_square(x, side) for x in _real_images(calib_dir, calib_images, 2 * crop)]
            quantize_int8(fp32, work / "model.int8.onnx", [{"image": x.numpy()} for x in calib])
            out8 = _outputs(session(work / "model.int8.onnx"), real)
            p8 = min(psnr(torch.from_numpy(a), torch.from_numpy(b)) for a, b in zip(out8, reference, strict=True))
            entry8: dict[str, Any] = {"file": "model.int8.onnx", "psnr_vs_fp32_db": round(p8, 2),
                                      "calibration_images": len(calib)}
            if tile_inputs is not None:
                feeds = [{"image": x.numpy(), "stats": StatsModel(gen)(x).detach().numpy()} for x in calib]
                quantize_int8(work / "tile.onnx", work / "tile.int8.onnx", feeds)
                entry8.update(tile="tile.int8.onnx", stats="stats.onnx")
            meta["precisions"]["int8"] = entry8
            say(f"[raystyle] int8 ONNX (QDQ, {len(calib)} calibration images): PSNR vs fp32 {p8:.2f} dB")
        if "fp16" in precisions:
            convert_fp16(fp32, work / "model.fp16.onnx")
            entry16: dict[str, Any] = {"file": "model.fp16.onnx"}
            if tile_inputs is not None:
                convert_fp16(work / "tile.onnx", work / "tile.fp16.onnx")
                entry16.update(tile="tile.fp16.onnx", stats="stats.onnx")
            try:
                out16 = _outputs(session(work / "model.fp16.onnx"), real)
                entry16["psnr_vs_fp32_db"] = round(min(
                    psnr(torch.from_numpy(a), torch.from_numpy(b)) for a, b in zip(out16, reference, strict=True)), 2)
            except Exception as exc:  # CPU kernels for some fp16 ops are missing: GPU-only variant
                entry16["psnr_vs_fp32_db"] = None
                entry16["note"] = f"not validated on CPU ({type(exc).__name__}); meant for CUDA/TensorRT"
            meta["precisions"]["fp16"] = entry16
            say(f"[raystyle] fp16 ONNX: PSNR vs fp32 {entry16['psnr_vs_fp32_db']} dB")
        if torchscript:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # jit is deprecated upstream; still loads everywhere
                traced = torch.jit.trace(gen, random[0], check_trace=False)
            traced.save(str(work / "model.ts"))
            meta["torchscript"] = "model.ts"
        (work / registry.METADATA).write_text(json.dumps(meta, indent=2))
        return _install(work, root / style)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _install(work: Path, target: Path) -> registry.Style:
    """Swap the finished folder into place (readers see the old or the new entry, whole)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        target.rename(old)
    work.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return registry.get_style(target.name, target.parent)
