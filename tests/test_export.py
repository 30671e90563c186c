import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from raystyle import registry
from raystyle.evaluate import load_images, psnr
from raystyle.export import ExportError, export_style, load_generator, pick_checkpoint


def test_registry_entry_describes_itself(exported, trained_checkpoint):
    meta = json.loads((exported.path / "model.json").read_text())
    assert meta["style"] == "tiny" and meta["direction"] == "ab"
    assert (meta["source_domain"], meta["target_domain"]) == ("A", "B")
    assert meta["architecture"]["ngf"] == 8 and meta["opset"] == 18
    assert meta["training"]["step"] == 150 and meta["training"]["checkpoint"] == str(trained_checkpoint)
    assert meta["input"]["multiple_of"] == 4 and meta["input"]["range"] == [-1.0, 1.0]
    assert sorted(meta["precisions"]) == ["fp16", "fp32", "int8"]
    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx", "tile.onnx", "stats.onnx", "model.ts"):
        assert (exported.path / name).is_file(), name
    assert [s.name for s in registry.list_styles(exported.path.parent)] == ["tiny"]
    assert not [p for p in exported.path.parent.iterdir() if p.name.startswith(".")]


def test_onnx_is_valid_with_dynamic_batch_height_width(exported):
    model = onnx.load(str(exported.file("fp32")))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3
    assert all(d.dim_param for d in (dims[0], dims[2], dims[3]))


def test_ort_matches_torch_on_real_images(exported, trained_checkpoint, sample_data):
    gen, _, _ = load_generator(trained_checkpoint, "ab")
    sess = ort.InferenceSession(str(exported.file("fp32")), providers=["CPUExecutionProvider"])
    images = load_images(sample_data / "testA", 4, 48) + [torch.rand(3, 3, 20, 36) * 2 - 1]
    with torch.no_grad():
        for x in images:
            err = np.abs(sess.run(None, {"image": x.numpy()})[0] - gen(x).numpy()).max()
            assert err < 1e-3
    recorded = exported.meta["precisions"]["fp32"]["max_abs_error_vs_torch"]
    assert recorded["real"] < 1e-3 and recorded["random"] < 1e-3


def test_int8_is_close_to_fp32_on_held_out_images(exported, sample_data):
    fp32 = ort.InferenceSession(str(exported.file("fp32")), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(exported.file("int8")), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(exported.file("int8"))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    for x in load_images(sample_data / "testA", 4, 48):
        a, b = (torch.from_numpy(s.run(None, {"image": x.numpy()})[0]) for s in (fp32, int8))
        assert psnr(a, b) >= 30.0
    assert exported.meta["precisions"]["int8"]["psnr_vs_fp32_db"] >= 30.0


def test_torchscript_matches_torch(exported, trained_checkpoint):
    gen, _, _ = load_generator(trained_checkpoint, "ab")
    ts = torch.jit.load(str(exported.path / "model.ts"))
    x = torch.rand(1, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ts(x), gen(x), atol=1e-5)


def test_direction_ba_exports_the_other_generator(trained_checkpoint, tmp_path):
    style = export_style(trained_checkpoint, "rev", direction="ba", models_dir=tmp_path)
    gen_ba, _, _ = load_generator(trained_checkpoint, "ba")
    sess = ort.InferenceSession(str(style.file("fp32")), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert np.abs(sess.run(None, {"image": x.numpy()})[0] - gen_ba(x).numpy()).max() < 1e-3
    assert style.meta["source_domain"] == "B"


def test_best_checkpoint_by_metric(tmp_path, trained_checkpoint):
    import shutil

    from raystyle import runlog

    for step in (10, 20, 30):
        dst = tmp_path / f"checkpoint_{step:08d}"
        shutil.copytree(trained_checkpoint, dst)
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["step"] = step
        (dst / "manifest.json").write_text(json.dumps(manifest))
        runlog.append_metrics(tmp_path, {"step": step, "cycle_a": {10: 0.5, 20: 0.1, 30: 0.3}[step]})
    assert pick_checkpoint(tmp_path).name == "checkpoint_00000030"
    assert pick_checkpoint(tmp_path, best="cycle_a").name == "checkpoint_00000020"
    with pytest.raises(ExportError, match="no checkpoint of .* has metric 'nope'"):
        pick_checkpoint(tmp_path, best="nope")

    # README: raystyle export RUN_DIR --style S --best cycle_a --precision fp32,fp16,int8
    # --torchscript, through the CLI (RUN_DIR with default precisions: test_cli_styles.py).
    from raystyle.cli import main

    models = tmp_path / "models"  # not a checkpoint_* folder: the run dir stays valid
    assert main(["export", str(tmp_path), "--style", "best", "--models-dir", str(models),
                 "--best", "cycle_a", "--precision", "fp32,fp16,int8", "--torchscript"]) == 0
    best = json.loads((models / "best" / "model.json").read_text())
    assert best["training"]["checkpoint"] == str(tmp_path / "checkpoint_00000020")
    assert best["training"]["step"] == 20 and best["torchscript"] == "model.ts"
    assert sorted(best["precisions"]) == ["fp16", "fp32", "int8"]
    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx", "model.ts"):
        assert (models / "best" / name).is_file(), name


def test_bad_arguments(trained_checkpoint, tmp_path):
    with pytest.raises(ExportError, match="precisions must be among"):
        export_style(trained_checkpoint, "x", models_dir=tmp_path, precisions=("int4",))
    with pytest.raises(registry.RegistryError, match="style name"):
        export_style(trained_checkpoint, "../evil", models_dir=tmp_path)
    with pytest.raises(ExportError, match="direction must be ab or ba"):
        export_style(trained_checkpoint, "x", models_dir=tmp_path, direction="aa")
    with pytest.raises(registry.RegistryError, match=r"unknown style 'nope' .*available: none"):
        registry.get_style("nope", tmp_path)
