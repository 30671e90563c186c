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

import dataclasses
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
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
from raystyle.export.gates import (
    COST_SIDE,
    OPSET,
    ExportError,
    at_least,
    at_most,
    center_square,
    convert_fp16,
    export_onnx,
    export_settings,
    finite,
    image_files,
    load_images,
    psnr_db,
    quantize_int8,
    session,
    u8,
)
from raystyle.infer.generator import Stylizer
from raystyle.infer.tiles import TilePlan, stats_change, to_input, to_uint8
from raystyle.methods import method_class
from raystyle.methods.cyclegan import generator_state

INPUT_SPEC = {
    "name": "image", "layout": "NCHW", "channels": "RGB", "dtype": "float32", "range": [-1.0, 1.0],
    "multiple_of": MULTIPLE, "dynamic": ["batch", "height", "width"],
}


def resolve_direction(config: Config, direction: str | None) -> str:
    """``direction`` as given; None: the training method's (a distilled student's own, else ab)."""
    if direction is None:
        return method_class(config.method).export_direction(config)
    return direction


def load_generator(checkpoint: Path, direction: str | None = None) -> tuple[nn.Module, Any, dict]:
    """(generator ``g_<direction>`` in eval mode, config, manifest); direction: see resolve_direction."""
    config, nets = ckpt.load_nets(checkpoint)  # export reads only the nets (and the manifest)
    direction = resolve_direction(config, direction)
    if direction not in ("ab", "ba"):
        raise ExportError(f"--direction must be ab or ba, got {direction!r}")
    if f"g_{direction}" not in nets:
        own = resolve_direction(config, None)
        raise ExportError(f"{checkpoint} has no g_{direction} generator (its {config.method} run trained "
                          f"g_{own}); drop --direction or use the other one")
    gen = build_generator(config.model)
    gen.load_state_dict(generator_state(nets, direction))
    return gen.eval(), config, ckpt.read_manifest(checkpoint)


def cost_figures(gen: nn.Module) -> dict[str, Any]:
    """Parameters and multiply-accumulates of one (1, 3, 256, 256) image (raystyle.core.macs)."""
    macs = count_macs(gen, COST_SIDE)
    return {"params": count_params(gen), "macs": macs, "gmacs": round(macs / 1e9, 3), "side": COST_SIDE}


def _source_folders(manifest: dict, direction: str, method: Any) -> tuple[Path | None, Path | None]:
    """(calibration folder = train split of the source domain, held-out = test split); a method
    trained on a plain photo folder (``one_folder``) calibrates on that folder."""
    data = manifest.get("data_dir")
    if not data:
        return None, None
    src = "A" if direction == "ab" else "B"
    train = Path(data) / f"train{src}"
    if method.one_folder and not train.is_dir():
        return Path(data), None
    return train, Path(data) / f"test{src}"


@dataclasses.dataclass
class _HeldOut:
    """Images never used for calibration, and what the fp32 graphs make of them."""

    images: list[torch.Tensor]  # (1, 3, H, W) in [-1, 1]
    names: list[str]  # for messages: "held-out image NAME"
    reference: list[np.ndarray] = dataclasses.field(default_factory=list)  # model.onnx outputs
    stats: list[np.ndarray] = dataclasses.field(default_factory=list)  # stats.onnx outputs


# -- the gates --------------------------------------------------------------------------------


def _max_abs_error(artefact: str, run, module: nn.Module, inputs: list[tuple], names: list[str]) -> float:
    """max |ORT - torch| over ``inputs``; ``run(*arrays)`` is the ONNX side."""
    err = 0.0
    with torch.no_grad():
        for args, where in zip(inputs, names, strict=True):
            got = finite(artefact, run(*(a.numpy() for a in args)), where)
            err = max(err, float(np.abs(got - module(*args).numpy()).max()))
    return err


def _outputs(artefact: str, sess: ort.InferenceSession, images: list[torch.Tensor], names: list[str],
             stats: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """``sess`` on each image (a tile graph gets the image's fp32 statistics too), all finite."""
    out = []
    for i, (x, where) in enumerate(zip(images, names, strict=True)):
        feed = {"image": x.numpy()} if stats is None else {"image": x.numpy(), "stats": stats[i]}
        out.append(finite(artefact, sess.run(None, feed)[0], where))
    return out


def _min_psnr(outs: list[np.ndarray], reference: list[np.ndarray]) -> float:
    return min(psnr_db(a, b, 2.0) for a, b in zip(outs, reference, strict=True))  # range [-1, 1]


def _check_tiling(style: registry.Style, precision: str, images: list[np.ndarray], names: list[str],
                  gates: ExportConfig) -> dict[str, float]:
    """The Stylizer's exact tiling on held-out images cut into >= 2x2 cores, vs the whole image.

    With InstanceNorm: one streaming pass of sums.onnx over the tiles, given the whole image's
    statistics (stats.onnx), must give those statistics back (a fixed point: mask, strides,
    halo and accumulation all right), and the tiles' cores through tile.onnx must form the
    whole image's output.
    """
    st = Stylizer(style, precision=precision, provider="cpu")
    artefact = style.file(precision, "tile" if st.tiling_sessions is not None else "model").name
    worst_rel, worst_db = 0.0, 99.0
    for a, where in zip(images, names, strict=True):
        h, w = a.shape[:2]
        core = max(MULTIPLE, max(h, w) // 2 // MULTIPLE * MULTIPLE)
        plan = TilePlan(a.shape, core, st.halo)
        whole = finite(style.file(precision).name, st.session.run(None, {st.input_name: to_input(a[None])})[0], where)
        if st.tiling_sessions is not None:
            stats_sess = st.tiling_sessions[1]
            exact = finite("stats.onnx", stats_sess.run(None, {"image": to_input(a[None])})[0], where)
            rel = stats_change(exact, st.sums_pass(a, plan, exact.astype(np.float64)), st.layout)
            worst_rel = max(worst_rel, at_most("sums.onnx", f"streamed statistics vs stats.onnx on {where}",
                                                rel, "stats_max_rel_error", gates.stats_max_rel_error))

            def run(x, opts, exact=exact, where=where):
                return finite(artefact, st.tiling_sessions[0].run(None, {"image": x, "stats": exact}, opts)[0], where)
        else:
            def run(x, opts, where=where):
                return finite(artefact, st.session.run(None, {st.input_name: x}, opts)[0], where)
        tiled = plan.assemble(a, run)
        db = psnr_db(tiled, to_uint8(whole, h, w)[0], 255.0)
        worst_db = min(worst_db, at_least(artefact, f"tiled ({core} px cores) vs whole image PSNR on {where}",
                                           db, "tile_min_psnr_db", gates.tile_min_psnr_db))
    return {"stats_max_rel_error": worst_rel, "tiled_psnr_db": round(worst_db, 2)}


# -- the export ----------------------------------------------------------------------------------


def export(checkpoint: Path, style: str, *, direction: str | None = None,
           models_dir: str | Path | None = None, precisions: tuple[str, ...] = ("fp32",),
           torchscript: bool = False, calib_images: int = 16, overrides: list[str] | None = None,
           allow_unvalidated_fp16: bool = False, verbose: bool = False) -> registry.Style:
    """Export one generator of a checkpoint as style ``style`` (raystyle.export.export_style).

    Every artefact passes its gate (thresholds: the checkpoint's ``export`` config section
    with ``overrides`` such as ``["export.int8_min_psnr_db=32"]``) before anything is
    registered; a failed gate is an ExportError and the registry is left as it was.
    ``direction`` None: ab, or a distilled student's own direction.
    """
    gen, config, manifest = load_generator(checkpoint, direction)
    direction = resolve_direction(config, direction)
    gates = export_settings(config, overrides)
    method = method_class(config.method)
    calib_dir, test_dir = _source_folders(manifest, direction, method)
    crop = config.data.crop_size
    held_out = image_files(test_dir, 4)  # never used for calibration
    held = _HeldOut(load_images(held_out, 2 * crop), [f"held-out image {Path(f).name}" for f in held_out])
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
        meta.update(method.export_record(config, checkpoint, manifest, work))  # its own entries

        def run32(x):
            return sess32.run(None, {"image": x})[0]

        err_random = _max_abs_error("model.onnx", run32, gen, [(x,) for x in random], ["random input"] * 2)
        err_real = _max_abs_error("model.onnx", run32, gen, [(x,) for x in held.images], held.names)
        at_most("model.onnx", "max |ORT - torch|", max(err_random, err_real), "max_abs_error", gates.max_abs_error)
        entry: dict[str, Any] = {"file": fp32.name, "max_abs_error_vs_torch": {"random": err_random, "real": err_real}}
        held.reference = _outputs("model.onnx", sess32, held.images, held.names)

        norms = instance_norms(gen)
        radius = receptive_radius(gen)
        meta["tiling"] = {"halo": halo_for(gen), "receptive_radius": radius,
                          "norms": norm_layout(gen) if norms else []}
        if norms:
            entry.update(_tiling_graphs(gen, work, random, held, gates))
        meta["precisions"]["fp32"] = entry
        images_u8 = [u8(x) for x in held.images[:2]]  # two are enough to catch a wrong halo or mask
        entry.update(_check_tiling(registry.Style(style, work, meta, work), "fp32", images_u8, held.names[:2], gates))
        entry["validated"] = True
        say(f"[raystyle] fp32 ONNX: max |ORT - torch| = {max(err_random, err_real):.2e}; tiles vs whole "
            f"{entry['tiled_psnr_db']} dB (halo {meta['tiling']['halo']} px) ({time.perf_counter() - t0:.1f} s)")

        if "int8" in precisions:
            calib_files = image_files(calib_dir, calib_images, exclude=tuple(held_out))
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
    held.stats = [finite("stats.onnx", stats_sess.run(None, {"image": x.numpy()})[0], where)
                  for x, where in zip(held.images, held.names, strict=True)]

    def pair(x):
        st = finite("stats.onnx", stats_sess.run(None, {"image": x})[0], "an input")
        return tile_sess.run(None, {"image": x, "stats": st})[0]

    err = _max_abs_error("tile.onnx", pair, gen, [(x,) for x in [*held.images, random[1]]],
                         [*held.names, "random input"])
    at_most("tile.onnx", "max |tile(x, stats(x)) - generator(x)|", err, "max_abs_error", gates.max_abs_error)
    return {"tile": "tile.onnx", "stats": "stats.onnx", "sums": "sums.onnx", "tile_max_abs_error_vs_torch": err}


def _int8(gen: nn.Module, work: Path, held: _HeldOut, calib_files: list[str], side: int, norms: list,
          gates: ExportConfig) -> dict[str, Any]:
    """int8 model (and tile graph) calibrated on ``calib_files``, checked against fp32 on held-out images."""
    # Square crops of at most 128 px: the percentile calibrator needs equal shapes and keeps
    # every activation of every image in memory (256 px x 16 images of the paper's generator
    # would be ~6 GB); activation ranges barely depend on size.
    calib = [center_square(x, side) for x in load_images(calib_files, 2 * side)]
    if not calib:
        raise ExportError("no calibration images for int8 (all candidates are held out)")
    quantize_int8(work / "model.onnx", work / "model.int8.onnx", [{"image": x.numpy()} for x in calib])
    entry: dict[str, Any] = {"file": "model.int8.onnx",
                             "calibration": {"count": len(calib), "side": side, "images": calib_files}}
    outs = _outputs("model.int8.onnx", session(work / "model.int8.onnx"), held.images, held.names)
    entry["psnr_vs_fp32_db"] = at_least("model.int8.onnx", "PSNR vs fp32", _min_psnr(outs, held.reference),
                                         "int8_min_psnr_db", gates.int8_min_psnr_db)
    if norms:
        stats_model = StatsModel(gen).eval()
        with torch.no_grad():
            feeds = [{"image": x.numpy(), "stats": stats_model(x).numpy()} for x in calib]
        quantize_int8(work / "tile.onnx", work / "tile.int8.onnx", feeds)
        outs = _outputs("tile.int8.onnx", session(work / "tile.int8.onnx"), held.images, held.names, held.stats)
        entry["tile_psnr_vs_fp32_db"] = at_least("tile.int8.onnx", "PSNR vs fp32", _min_psnr(outs, held.reference),
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
        finite("model.fp16.onnx", y, where)
    entry["psnr_vs_fp32_db"] = at_least("model.fp16.onnx", "PSNR vs fp32", _min_psnr(out16, held.reference),
                                         "fp16_min_psnr_db", gates.fp16_min_psnr_db)
    if tile16 is not None:
        t16 = _min_psnr(_outputs("tile.fp16.onnx", tile16, held.images, held.names, held.stats), held.reference)
        entry["tile_psnr_vs_fp32_db"] = at_least("tile.fp16.onnx", "PSNR vs fp32", t16,
                                                  "fp16_min_psnr_db", gates.fp16_min_psnr_db)
    entry["validated"] = True
    return entry
