"""An AdaIN checkpoint -> a validated "arbitrary" style in the registry (raystyle.export.generator's gates).

The version folder holds
  encoder.onnx     image (B, 3, H, W), sides multiples of 8, [-1, 1] -> relu4_1 features (B, 512, H/8, W/8)
  decoder.onnx     features -> image
  encoder.int8.onnx, decoder.int8.onnx   static QDQ int8 convolutions, where they hold the quality gate
  encoder.fp16.onnx, decoder.fp16.onnx   fp16 weights and math
  model.json       kind "arbitrary", the features, the style size, the tiling halo, every figure
Gates (thresholds from the checkpoint's ``export`` section, as for generators):
  - fp32: encoder -> AdaIN -> decoder in ORT against the torch network on held-out content and
    style images and on random ones: max abs error <= max_abs_error;
  - exact tiles: the ArbitraryStylizer's tiles (2x2 cores) against its whole-image output on
    held-out photos (upscaled to 160 px or more): PSNR >= tile_min_psnr_db;
  - int8: both graphs int8 (calibrated on training photos and paintings, never the held-out
    ones) against fp32 on held-out pairs: PSNR >= int8_min_psnr_db; if that fails, the decoder
    alone in int8 (the encoder stays fp32); if that fails too, the export fails as any gate;
  - fp16: both graphs against fp32, PSNR >= fp16_min_psnr_db (validated where the CPU provider
    runs them, see export.py; no decoder-only fallback).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from raystyle import __version__, registry
from raystyle import checkpoint as ckpt
from raystyle.config import Config, ExportConfig
from raystyle.core.macs import count_macs, count_params
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
from raystyle.infer.arbitrary import KIND, ArbitraryStylizer, affine, feature_stats
from raystyle.methods.adain import (
    CHANNELS,
    CODE,
    EPS,
    LAYERS,
    MULTIPLE,
    Encoder,
    adain,
    load_net,
    mean_std,
    pad_to,
    receptive_radius,
)

TILE_CHECK_SIDE = 160  # held-out photos are checked at this size or more: 2 x 2 cores of 80 px
INPUT = {"name": "image", "layout": "NCHW", "channels": "RGB", "dtype": "float32", "range": [-1.0, 1.0],
         "multiple_of": MULTIPLE, "dynamic": ["batch", "height", "width"]}


def _folders(manifest: dict[str, Any]) -> dict[str, Path | None]:
    data = manifest.get("data_dir")
    return {k: (Path(data) / k if data else None) for k in ("trainA", "trainB", "testA", "testB")}


def _pairs(contents: list[torch.Tensor], styles: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each content image with a style image (cycled), both reflect-padded to multiples of 8."""
    return [(pad_to(c), pad_to(styles[i % len(styles)])) for i, c in enumerate(contents)]


class _Graphs:
    """encoder -> numpy AdaIN -> decoder with two ORT sessions (what the ArbitraryStylizer does)."""

    def __init__(self, encoder: Path, decoder: Path):
        self.names = (encoder.name, decoder.name)
        self.enc, self.dec = session(encoder), session(decoder)

    def stats(self, style: np.ndarray, where: str):
        return feature_stats(finite(self.names[0], self.enc.run(None, {"image": style})[0], where)[0], EPS)

    def __call__(self, content: np.ndarray, style: np.ndarray, where: str, alpha: float = 1.0) -> np.ndarray:
        f = finite(self.names[0], self.enc.run(None, {"image": content})[0], where)
        scale, shift = affine(feature_stats(f[0], EPS), self.stats(style, where), alpha)
        return finite(self.names[1], self.dec.run(None, {"features": f * scale + shift})[0], where)


def export_arbitrary(checkpoint: Path, config: Config, manifest: dict[str, Any], style: str, *,
                     models_dir: str | Path | None, precisions: tuple[str, ...], gates: ExportConfig,
                     calib_images: int = 16, allow_unvalidated_fp16: bool = False, verbose: bool = False
                     ) -> registry.Style:
    """Export an AdaIN checkpoint's encoder and decoder as arbitrary style ``style`` (see the module doc)."""
    _, nets = ckpt.load_nets(checkpoint)
    net = load_net(nets, config)
    encoder, decoder = Encoder(net.encoder).eval(), net.decoder.eval()
    ac = config.adain
    folders = _folders(manifest)
    side = 2 * config.data.crop_size
    held_c = image_files(folders["testA"], 4)
    held_s = image_files(folders["testB"], 2, exclude=tuple(held_c))
    if not held_s:
        raise ExportError("no held-out style images for the export's checks")
    held = _pairs(load_images(held_c, side), load_images(held_s, side))
    names = [f"held-out photo {Path(c).name} with style {Path(held_s[i % len(held_s)]).name}"
             for i, c in enumerate(held_c)]
    torch.manual_seed(0)
    crop = max(2 * MULTIPLE, config.data.crop_size // MULTIPLE * MULTIPLE)
    random = [(torch.rand(1, 3, crop, crop) * 2 - 1, torch.rand(1, 3, crop + 16, crop - 8) * 2 - 1)]
    say = print if verbose else (lambda *a, **k: None)

    root = registry.models_dir(models_dir)
    version, work = registry.new_version(style, root)
    try:
        halo = receptive_radius(ac.features)
        enc_macs = count_macs(encoder, COST_SIDE)
        macs = count_macs(nn.Sequential(encoder, decoder), COST_SIDE)
        meta: dict[str, Any] = {
            "style": style, "version": version, "kind": KIND.name, "method": config.method,
            "direction": "ab", "source_domain": "A", "target_domain": "any style image",
            "architecture": {"encoder": f"{ac.features} up to {CODE}", "decoder_width": ac.decoder_width,
                             "channels": CHANNELS},
            "arbitrary": {"features": ac.features, "features_sha256": ac.features_sha256 or None,
                          "code_layer": CODE, "style_layers": list(LAYERS), "channels": CHANNELS,
                          "style_size": ac.style_size or config.data.load_size, "eps": EPS, "multiple": MULTIPLE, "halo": halo,
                          "weights": {"content": ac.content_weight, "style": ac.style_weight}},
            "training": {"checkpoint": str(checkpoint), "run_dir": str(checkpoint.parent),
                         "step": manifest["step"], "epoch": manifest["epoch"], "data_dir": manifest.get("data_dir")},
            "cost": {"params": count_params(decoder), "encoder_params": count_params(encoder),
                     "macs": macs, "gmacs": round(macs / 1e9, 3), "encoder_gmacs": round(enc_macs / 1e9, 3),
                     "side": COST_SIDE, "note": "encoder + decoder for one photo; a style image's "
                     "statistics cost one more encoder pass unless cached"},
            "opset": OPSET, "input": INPUT, "output": {**INPUT, "name": "stylized"},
            "tiling": {"halo": halo, "multiple": MULTIPLE, "norms": []},
            "precisions": {}, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "raystyle_version": __version__,
        }
        t0 = time.perf_counter()
        example = random[0][0]
        export_onnx(encoder, work / "encoder.onnx", (example,), ["image"], "features", multiple=MULTIPLE)
        with torch.no_grad():
            code = encoder(example)
        export_onnx(decoder, work / "decoder.onnx", (code,), ["features"], "stylized", multiple=1)
        fp32 = _Graphs(work / "encoder.onnx", work / "decoder.onnx")

        def check(pairs, labels) -> float:
            err = 0.0
            with torch.no_grad():
                for (c, s), where in zip(pairs, labels, strict=True):
                    got = fp32(c.numpy(), s.numpy(), where)
                    err = max(err, float(np.abs(got - net(c, s).numpy()).max()))
            return err

        err_random = check(random, ["random input"])
        err_real = check(held, names)
        at_most("encoder.onnx + decoder.onnx", "max |ORT - torch|", max(err_random, err_real),
                 "max_abs_error", gates.max_abs_error)
        entry: dict[str, Any] = {"file": "decoder.onnx", "encoder": "encoder.onnx", "decoder": "decoder.onnx",
                                 "max_abs_error_vs_torch": {"random": err_random, "real": err_real}}
        reference = [fp32(c.numpy(), s.numpy(), w) for (c, s), w in zip(held, names, strict=True)]
        meta["precisions"]["fp32"] = entry
        entry["tiled_psnr_db"] = _check_tiles(registry.Style(style, work, meta, work), held, names, gates)
        entry["validated"] = True
        say(f"[raystyle] fp32 ONNX (encoder + decoder): max |ORT - torch| = {max(err_random, err_real):.2e}; "
            f"tiles vs whole {entry['tiled_psnr_db']} dB (halo {halo} px) ({time.perf_counter() - t0:.1f} s)")

        if "int8" in precisions:
            calib = _calibration(folders, calib_images, tuple(held_c) + tuple(held_s), encoder, min(crop, 128))
            meta["precisions"]["int8"] = _int8(work, calib, held, names, reference, gates)
            e8 = meta["precisions"]["int8"]
            say(f"[raystyle] int8 ONNX ({'+'.join(e8['int8_graphs'])}, {e8['calibration']['count']} calibration "
                f"pairs): PSNR vs fp32 {e8['psnr_vs_fp32_db']} dB (gate {gates.int8_min_psnr_db:g})")
        if "fp16" in precisions:
            meta["precisions"]["fp16"] = _fp16(work, held, names, reference, gates, allow_unvalidated_fp16)
            say(f"[raystyle] fp16 ONNX: PSNR vs fp32 {meta['precisions']['fp16'].get('psnr_vs_fp32_db')} dB")
        meta["validation"] = {"thresholds": dataclasses.asdict(gates), "held_out_images": held_c,
                              "held_out_style_images": held_s, "provider": "CPUExecutionProvider",
                              "onnxruntime": ort.__version__}
        (work / registry.METADATA).write_text(json.dumps(meta, indent=2))
        return registry.install(work, style, version, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _check_tiles(st: registry.Style, held: list[tuple[torch.Tensor, torch.Tensor]], names: list[str],
                 gates: ExportConfig) -> float:
    """The ArbitraryStylizer's exact tiles (2x2 or more cores) vs its whole-image output on held-out
    photos, each upscaled to at least TILE_CHECK_SIDE px so that it really is cut into tiles."""
    from PIL import Image

    from raystyle.infer.tiles import TilePlan

    stylizer = ArbitraryStylizer(st, provider="cpu", cache_size=0)
    worst = 99.0
    for (c, s), where in list(zip(held, names, strict=True))[:2]:
        photo, painting = u8(c), u8(s)
        if max(photo.shape[:2]) < TILE_CHECK_SIDE:
            factor = TILE_CHECK_SIDE / max(photo.shape[:2])
            size = (round(photo.shape[1] * factor), round(photo.shape[0] * factor))
            photo = np.asarray(Image.fromarray(photo).resize(size, Image.BICUBIC))
        stats = stylizer.style_stats(painting)
        h, w = photo.shape[:2]
        core = max(64, max(h, w) // 2 // MULTIPLE * MULTIPLE)  # 64: the Stylizer's smallest tile
        if len(TilePlan(photo.shape, core, stylizer.halo, MULTIPLE).boxes) < 2:  # pragma: no cover - by construction
            raise ExportError(f"the tile check of {where} would not tile")
        whole = stylizer.stylize_batch([photo], styles=[stats], tile=max(64, -(-max(h, w) // MULTIPLE) * MULTIPLE))[0]
        tiled = stylizer.stylize_batch([photo], styles=[stats], tile=core)[0]
        db = psnr_db(tiled, whole, 255.0)
        worst = min(worst, at_least("encoder.onnx + decoder.onnx", f"tiled ({core} px cores) vs whole image "
                                     f"PSNR on {where}", db, "tile_min_psnr_db", gates.tile_min_psnr_db))
    return round(worst, 2)


def _calibration(folders: dict[str, Path | None], count: int, exclude: tuple[str, ...], encoder: Encoder,
                 side: int) -> dict[str, Any]:
    """Centre squares of training photos and paintings: the encoder's feeds, and the AdaIN
    targets of photo i with painting i as the decoder's."""
    photos = image_files(folders["trainA"], count, exclude)
    paintings = image_files(folders["trainB"], count, exclude) or photos
    c = [center_square(x, side) for x in load_images(photos, 2 * side)]
    s = [center_square(x, side) for x in load_images(paintings, 2 * side)]
    if not c:
        raise ExportError("no calibration images for int8 (all candidates are held out)")
    with torch.no_grad():
        targets = []
        for i, x in enumerate(c):
            m, sd = mean_std(encoder(s[i % len(s)]))
            targets.append(adain(encoder(x), m, sd).numpy())
    return {"encoder": [{"image": x.numpy()} for x in c + s], "decoder": [{"features": t} for t in targets],
            "count": len(c), "side": side, "images": photos, "style_images": paintings}


def _compare(graphs: _Graphs, held, names, reference) -> float:
    """The lowest PSNR against ``reference`` (fp32 outputs), both clipped to [-1, 1] as the
    Stylizer's images are: the decoder is not bounded, and what lies outside is never seen."""
    outs = [np.clip(graphs(c.numpy(), s.numpy(), w), -1, 1) for (c, s), w in zip(held, names, strict=True)]
    return min(psnr_db(a, np.clip(b, -1, 1), 2.0) for a, b in zip(outs, reference, strict=True))


def _int8(work: Path, calib: dict[str, Any], held, names, reference, gates: ExportConfig) -> dict[str, Any]:
    """Both graphs int8 where that holds the gate, else the decoder alone; else an ExportError."""
    quantize_int8(work / "decoder.onnx", work / "decoder.int8.onnx", calib["decoder"])
    quantize_int8(work / "encoder.onnx", work / "encoder.int8.onnx", calib["encoder"])
    entry: dict[str, Any] = {"file": "decoder.int8.onnx", "decoder": "decoder.int8.onnx",
                             "calibration": {k: calib[k] for k in ("count", "side", "images", "style_images")}}
    both = _compare(_Graphs(work / "encoder.int8.onnx", work / "decoder.int8.onnx"), held, names, reference)
    entry["both_int8_psnr_vs_fp32_db"] = round(both, 2)
    if both >= gates.int8_min_psnr_db:
        entry.update(encoder="encoder.int8.onnx", int8_graphs=["encoder", "decoder"], psnr_vs_fp32_db=round(both, 2))
    else:
        (work / "encoder.int8.onnx").unlink()
        dec_only = _compare(_Graphs(work / "encoder.onnx", work / "decoder.int8.onnx"), held, names, reference)
        entry.update(encoder="encoder.onnx", int8_graphs=["decoder"],
                     psnr_vs_fp32_db=at_least("decoder.int8.onnx", "PSNR vs fp32 (encoder fp32; both int8: "
                                               f"{both:.2f} dB)", dec_only, "int8_min_psnr_db", gates.int8_min_psnr_db))
    entry["validated"] = True
    return entry


def _fp16(work: Path, held, names, reference, gates: ExportConfig, allow_unvalidated: bool) -> dict[str, Any]:
    for graph in ("encoder", "decoder"):
        convert_fp16(work / f"{graph}.onnx", work / f"{graph}.fp16.onnx")
    entry: dict[str, Any] = {"file": "decoder.fp16.onnx", "encoder": "encoder.fp16.onnx", "decoder": "decoder.fp16.onnx"}
    try:
        graphs = _Graphs(work / "encoder.fp16.onnx", work / "decoder.fp16.onnx")
        db = _compare(graphs, held, names, reference)
    except ExportError:
        raise
    except Exception as exc:  # an fp16 kernel this ORT build lacks on the CPU
        if not allow_unvalidated:
            raise ExportError(f"the fp16 graphs cannot run on this machine's CPU provider ({type(exc).__name__}), "
                              "so they cannot be validated; export them where they run, or pass "
                              "--allow-unvalidated-fp16") from None
        entry.update(validated=False, psnr_vs_fp32_db=None,
                     note=f"NOT validated: the CPU provider cannot run it ({type(exc).__name__}); meant for CUDA/TensorRT")
        return entry
    entry["psnr_vs_fp32_db"] = at_least("encoder.fp16.onnx + decoder.fp16.onnx", "PSNR vs fp32", db,
                                         "fp16_min_psnr_db", gates.fp16_min_psnr_db)
    entry["validated"] = True
    return entry


def export(checkpoint: Path, style: str, *, direction: str | None = None, models_dir: str | Path | None = None,
           precisions: tuple[str, ...] = ("fp32",), torchscript: bool = False, calib_images: int = 16,
           overrides: list[str] | None = None, allow_unvalidated_fp16: bool = False,
           verbose: bool = False) -> registry.Style:
    """Export an AdaIN checkpoint as an arbitrary style (raystyle.export.export_style)."""
    if direction not in (None, "ab") or torchscript:
        raise ExportError("an AdaIN checkpoint exports as an arbitrary style: --direction and "
                          "--torchscript are for generators")
    config = ckpt.load_config(checkpoint)
    return export_arbitrary(checkpoint, config, ckpt.read_manifest(checkpoint), style, models_dir=models_dir,
                            precisions=precisions, gates=export_settings(config, overrides),
                            calib_images=calib_images, allow_unvalidated_fp16=allow_unvalidated_fp16,
                            verbose=verbose)
