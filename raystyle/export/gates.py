"""What every style kind's export shares: ONNX export, ORT sessions, int8/fp16 conversion, the gates' checks.

A gate is a figure measured on the exported graph against a threshold of the checkpoint's
``export`` config section; a failed gate is an ExportError naming the artefact, the figure
and the threshold (raystyle.export.generator, raystyle.export.arbitrary).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import tempfile
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

from raystyle.config import Config, ExportConfig
from raystyle.core.nets import MULTIPLE
from raystyle.data.datasets import sample_photo_dir, scan_domain
from raystyle.errors import RaystyleError

OPSET = 18


class ExportError(RaystyleError):
    """The export cannot be done as asked (bad direction, precision, metric, failed check)."""


COST_SIDE = 256  # the image side at which model.json records MACs (the paper's training size)




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


def image_files(folder: Path | None, limit: int, exclude: tuple[str, ...] = ()) -> list[str]:
    """Up to ``limit`` image paths of ``folder``, else of the photos that ship with scikit-image."""
    if folder is None or not folder.is_dir() or not scan_domain(folder, 0).files:
        folder = sample_photo_dir()
    return [f for f in scan_domain(folder, 0).files if f not in exclude][:limit]


def load_images(files: list[str], side: int) -> list[torch.Tensor]:
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


def center_square(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[..., top : top + side, left : left + side]
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


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


def finite(artefact: str, array: np.ndarray, where: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ExportError(f"{artefact} outputs NaN/inf on {where}; nothing was registered")
    return array


def at_most(artefact: str, figure: str, value: float, key: str, limit: float) -> float:
    if not value <= limit:  # NaN fails too
        raise ExportError(f"{artefact}: {figure} {value:.3g} > export.{key} {limit:g}; nothing was registered")
    return value


def at_least(artefact: str, figure: str, value: float, key: str, limit: float) -> float:
    if not value >= limit:
        raise ExportError(f"{artefact}: {figure} {value:.2f} dB < export.{key} {limit:g} dB; nothing was registered")
    return round(value, 2)


def psnr_db(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else min(99.0, 10 * math.log10(peak**2 / mse))


def u8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    return np.clip((x[0].permute(1, 2, 0).numpy() + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
