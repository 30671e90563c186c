import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from raystyle import registry
from raystyle.export import export_style, pick_checkpoint
from raystyle.export.gates import ExportError
from raystyle.export.generator import load_generator
from raystyle.methods.quality import psnr
from raystyle.train.evaluate import load_images

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny nets: see conftest.one_torch_thread


def test_registry_entry_describes_itself(exported, trained_checkpoint):
    meta = json.loads((exported.path / "model.json").read_text())
    assert meta["style"] == "tiny" and meta["direction"] == "ab"
    assert (meta["source_domain"], meta["target_domain"]) == ("A", "B")
    assert meta["architecture"]["ngf"] == 8 and meta["opset"] == 18
    assert meta["training"]["step"] == 150 and meta["training"]["checkpoint"] == str(trained_checkpoint)
    assert meta["input"]["multiple_of"] == 4 and meta["input"]["range"] == [-1.0, 1.0]
    assert sorted(meta["precisions"]) == ["fp16", "fp32", "int8"]
    for name in ("model.onnx", "model.int8.onnx", "model.fp16.onnx", "tile.onnx", "stats.onnx", "sums.onnx",
                 "tile.int8.onnx", "tile.fp16.onnx", "model.ts"):
        assert (exported.path / name).is_file(), name
    assert [s.name for s in registry.list_styles(exported.path.parent)] == ["tiny"]
    # MODELS/tiny -> .versions/tiny/VERSION; nothing else (no half-written folders left behind)
    assert sorted(p.name for p in exported.path.parent.iterdir()) == [".versions", "tiny"]
    assert exported.path.is_symlink() and exported.version_dir == exported.path.resolve()
    assert registry.versions("tiny", exported.path.parent) == [meta["version"]] == [exported.version_dir.name]
    assert not [p for p in (exported.path.parent / ".versions").iterdir() if p.name.startswith(".")]


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
        assert float(psnr(a, b)) >= 30.0
    assert exported.meta["precisions"]["int8"]["psnr_vs_fp32_db"] >= 30.0


def test_torchscript_matches_torch(exported, trained_checkpoint):
    gen, _, _ = load_generator(trained_checkpoint, "ab")
    ts = torch.jit.load(str(exported.path / "model.ts"))
    x = torch.rand(1, 3, 32, 40) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ts(x), gen(x), atol=1e-5)


@pytest.mark.slow  # an export of its own
def test_direction_ba_exports_the_other_generator(trained_checkpoint, tmp_path):
    style = export_style(trained_checkpoint, "rev", direction="ba", models_dir=tmp_path)
    gen_ba, _, _ = load_generator(trained_checkpoint, "ba")
    sess = ort.InferenceSession(str(style.file("fp32")), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert np.abs(sess.run(None, {"image": x.numpy()})[0] - gen_ba(x).numpy()).max() < 1e-3
    assert style.meta["source_domain"] == "B"


def _three_checkpoints(tmp_path, trained_checkpoint) -> None:
    """checkpoint_00000010/20/30 (copies of the tiny checkpoint) with logged cycle_a and PSNR."""
    import shutil

    from raystyle import runlog

    for step in (10, 20, 30):
        dst = tmp_path / f"checkpoint_{step:08d}"
        shutil.copytree(trained_checkpoint, dst)
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["step"] = step
        (dst / "manifest.json").write_text(json.dumps(manifest))
        runlog.append_metrics(tmp_path, {"step": step, "cycle_a": {10: 0.5, 20: 0.1, 30: 0.3}[step],
                                         "val_gt_psnr": {10: 19.0, 20: 18.0, 30: 17.5}[step]})


def test_best_checkpoint_by_metric(tmp_path, trained_checkpoint):
    from raystyle import runlog

    _three_checkpoints(tmp_path, trained_checkpoint)
    assert pick_checkpoint(tmp_path).name == "checkpoint_00000030"
    assert pick_checkpoint(tmp_path, best="cycle_a").name == "checkpoint_00000020"  # a loss: lowest
    assert pick_checkpoint(tmp_path, best="val_gt_psnr").name == "checkpoint_00000010"  # PSNR: highest
    with pytest.raises(ExportError, match="no checkpoint of .* has metric 'nope'"):
        pick_checkpoint(tmp_path, best="nope")
    with pytest.raises(ExportError, match="ranks its checkpoints by no metric"):
        pick_checkpoint(tmp_path, best="auto")  # no validation.json
    runlog.write_validation(tmp_path, {"best_metric": "val_gt_psnr"})
    assert pick_checkpoint(tmp_path, best="auto").name == "checkpoint_00000010"


@pytest.mark.slow  # an export with every precision and TorchScript of its own
def test_the_readme_export_command_takes_the_best_checkpoint(tmp_path, trained_checkpoint):
    _three_checkpoints(tmp_path, trained_checkpoint)
    # README: raystyle export RUN_DIR --style S --best cycle_a --precision fp32,fp16,int8
    # --torchscript, through the CLI (RUN_DIR with default precisions: test_cli_styles.py).
    from raystyle.cli.main import main

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


# -- export is a gate: every figure recorded, every failure refused, nothing half-registered ------


def _registry_state(models, name):
    """What a reader could see of style ``name``: the entry's target, the kept versions, leftovers."""
    entry = models / name
    target = entry.resolve().name if entry.exists() else None
    versions = models / ".versions"
    leftovers = sorted(p.name for p in versions.rglob(".*")) if versions.is_dir() else []
    return target, registry.versions(name, models), leftovers


def test_model_json_records_calibration_and_every_validation_figure(exported, sample_data):
    meta = exported.meta
    p32, p8, p16 = (meta["precisions"][p] for p in ("fp32", "int8", "fp16"))
    train_a = sorted(str(p) for p in (sample_data / "trainA").iterdir())
    calib = p8["calibration"]
    assert calib["images"] == train_a[:16] and calib["count"] == len(calib["images"]) > 0
    held_out = meta["validation"]["held_out_images"]
    assert held_out and all("/testA/" in f for f in held_out) and not set(held_out) & set(calib["images"])
    gates = meta["validation"]["thresholds"]
    assert gates == {"max_abs_error": 1e-3, "stats_max_rel_error": 1e-3, "tile_min_psnr_db": 60.0,
                     "int8_min_psnr_db": 28.0, "fp16_min_psnr_db": 45.0}
    assert p32["tile_max_abs_error_vs_torch"] <= gates["max_abs_error"]
    assert p32["stats_max_rel_error"] <= gates["stats_max_rel_error"]
    assert p32["tiled_psnr_db"] >= gates["tile_min_psnr_db"]
    for entry, key in ((p8, "int8_min_psnr_db"), (p16, "fp16_min_psnr_db")):
        assert entry["validated"] is True and entry["sums"] == "sums.onnx"
        assert min(entry["psnr_vs_fp32_db"], entry["tile_psnr_vs_fp32_db"]) >= gates[key]
    assert meta["tiling"]["halo"] == 32 and len(meta["tiling"]["norms"]) == 9


def _nan_tile(monkeypatch):
    from raystyle.export import generator as export

    class NaNTile(export.TileModel):  # e.g. a variance read from the wrong slot: sqrt(negative)
        def forward(self, x, stats):
            return super().forward(x, stats) + torch.sqrt(stats[:, :1, None, None] * 0 - 1)

    monkeypatch.setattr(export, "TileModel", NaNTile)


def _shifted_tile(monkeypatch):
    from raystyle.export import generator as export

    class ShiftedTile(export.TileModel):  # finite, agrees with its own torch source, wrong
        def forward(self, x, stats):
            return super().forward(x, stats * 1.05)

    monkeypatch.setattr(export, "TileModel", ShiftedTile)


@pytest.mark.parametrize(("corrupt", "message"), [
    pytest.param(_nan_tile, r"tile\.onnx outputs NaN/inf on held-out image", marks=pytest.mark.slow),
    pytest.param(_shifted_tile, r"tile\.onnx: max \|tile\(x, stats\(x\)\) - generator\(x\)\| .* > export\.max_abs_error 0\.001",
                 marks=pytest.mark.slow),  # an export up to its tile gate (test_adain's int8 refusal is default)
])
def test_a_broken_tile_graph_is_refused_and_nothing_registered(trained_checkpoint, tmp_path, monkeypatch,
                                                                corrupt, message):
    corrupt(monkeypatch)
    with pytest.raises(ExportError, match=message) as err:
        export_style(trained_checkpoint, "broken", models_dir=tmp_path)
    assert "\n" not in str(err.value) and "nothing was registered" in str(err.value)
    assert _registry_state(tmp_path, "broken") == (None, [], [])
    assert not (tmp_path / "broken").exists() and registry.list_styles(tmp_path) == []


def _install_copy(style, models, name):
    """A version of ``name`` in ``models`` holding the files of ``style`` (an earlier real export)."""
    import shutil

    version, work = registry.new_version(name, models)
    for f in style.version_dir.iterdir():
        shutil.copy2(f, work / f.name)
    (work / registry.METADATA).write_text(json.dumps({**style.meta, "style": name, "version": version}))
    return registry.install(work, name, version, models)


@pytest.mark.slow  # two exports of its own
def test_int8_below_its_threshold_refuses_and_the_previous_version_stays(trained_checkpoint, exported, tmp_path,
                                                                           capsys):
    first = _install_copy(exported, tmp_path, "gate")  # the session's export stands in for an earlier one
    before = _registry_state(tmp_path, "gate")
    with pytest.raises(ExportError, match=r"model\.int8\.onnx: PSNR vs fp32 \d+\.\d+ dB < export\.int8_min_psnr_db 99 dB"):
        export_style(trained_checkpoint, "gate", models_dir=tmp_path, precisions=("fp32", "int8"),
                     overrides=["export.int8_min_psnr_db=99"])
    assert _registry_state(tmp_path, "gate") == before == (first.version, [first.version], [])
    assert registry.get_style("gate", tmp_path).meta == first.meta  # as before
    # The same through the CLI, on a style that does not exist yet: exit 2, one line, nothing at all.
    from raystyle.cli.main import main

    assert main(["export", str(trained_checkpoint), "--style", "fresh", "--models-dir", str(tmp_path),
                 "--precision", "int8", "--set", "export.int8_min_psnr_db=99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "export.int8_min_psnr_db 99 dB" in err[0]
    assert _registry_state(tmp_path, "fresh") == (None, [], [])


@pytest.mark.slow  # two exports of its own
def test_fp16_that_this_machine_cannot_run_is_refused_unless_allowed(trained_checkpoint, tmp_path, monkeypatch):
    from raystyle.export import generator as export

    real_session = export.session

    def no_fp16(path, threads=None):
        if ".fp16." in str(path):
            raise RuntimeError("NOT_IMPLEMENTED: Could not find an implementation for Conv(11) float16")
        return real_session(path, threads)

    monkeypatch.setattr(export, "session", no_fp16)
    with pytest.raises(ExportError, match=r"model\.fp16\.onnx cannot run on this machine's CPU provider .*"
                                          r"--allow-unvalidated-fp16"):
        export_style(trained_checkpoint, "half", models_dir=tmp_path, precisions=("fp32", "fp16"))
    assert _registry_state(tmp_path, "half") == (None, [], [])
    style = export_style(trained_checkpoint, "half", models_dir=tmp_path, precisions=("fp32", "fp16"),
                         allow_unvalidated_fp16=True)
    entry = style.meta["precisions"]["fp16"]
    assert entry["validated"] is False and entry["psnr_vs_fp32_db"] is None and "NOT validated" in entry["note"]
    assert style.meta["precisions"]["fp32"]["validated"] is True


def test_export_settings_come_from_the_checkpoint_with_overrides():
    from raystyle.config import Config, ConfigError, ExportConfig
    from raystyle.export.gates import export_settings

    old = Config().to_dict()
    del old["export"]  # a checkpoint written before the export section existed
    assert Config.from_dict(old).export == ExportConfig()
    cfg = Config().replace(export={"tile_min_psnr_db": 50.0})
    got = export_settings(cfg, ["export.int8_min_psnr_db=33", "export.max_abs_error=1e-4"])
    assert (got.tile_min_psnr_db, got.int8_min_psnr_db, got.max_abs_error) == (50.0, 33.0, 1e-4)
    with pytest.raises(ExportError, match="export takes export.KEY=VALUE"):
        export_settings(cfg, ["train.lr=1"])
    with pytest.raises(ConfigError, match="unknown config key 'export.nope'"):
        export_settings(cfg, ["export.nope=1"])


def test_fp16_conversion_handles_float_list_constants(tmp_path):
    """Older torch/onnxscript emit Constant(value_floats=...) (seen at the dependency floors in
    instance norm): the fp16 model must still load and match fp32."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from raystyle.export.gates import convert_fp16

    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value_floats=[0.5, -1.0, 2.0]),
         helper.make_node("Mul", ["image", "c"], ["stylized"])],
        "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("stylized", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    convert_fp16(tmp_path / "m.onnx", tmp_path / "m16.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m16.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": np.array([2.0, 3.0, 4.0], np.float32)})[0]
    assert np.allclose(out, [1.0, -3.0, 8.0])


@pytest.mark.slow  # two exports of their own (~35 s; the tiling graphs' maths: tests/core/test_tiling.py)
def test_an_affine_fast_net_exports_and_tiles_exactly_and_an_old_one_still_does(sample_data, tmp_path):
    """The fast presets' affine instance norms (model.norm_affine) pass every fp32 and int8 gate,
    the tile gate (>= 60 dB) included, and tile exactly in the Stylizer; a fast checkpoint from
    before the key (non-affine, its config without it) exports as it did."""
    from raystyle import checkpoint as ckpt
    from raystyle.data.datasets import painterly, sample_photo_dir
    from raystyle.data.images import load_rgb
    from raystyle.export.gates import psnr_db
    from raystyle.infer.generator import Stylizer
    from raystyle.infer.tiles import to_input, to_uint8
    from raystyle.methods.fast import FastStyle, plan

    painting = tmp_path / "painting.png"
    painterly(load_rgb(sample_photo_dir() / "chelsea.png")).save(painting)
    tiny = ["fast.features=random", "data.load_size=36", "data.crop_size=32", "model.ngf=4", "model.n_blocks=1",
            "fast.style_layers=[relu1_1,relu2_1]", "fast.content_layers=[relu2_1]", "fast.style_size=64"]
    photo = np.asarray(load_rgb(sample_photo_dir() / "coffee.png").resize((200, 152)))
    for affine in (True, False):
        cfg, extra = plan(painting, overrides=[*tiny, f"model.norm_affine={str(affine).lower()}"])
        torch.manual_seed(0)
        model = FastStyle.from_config(cfg, torch.device("cpu"), 0, extra)
        norms = [m for m in model.g_ab.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
        assert norms and all(m.affine == affine for m in norms)
        for m in norms if affine else ():  # away from (1, 0), which would hide a missing scale or shift
            torch.nn.init.normal_(m.weight, 1.0, 0.5)
            torch.nn.init.normal_(m.bias, 0.0, 0.5)
        out = tmp_path / f"run{int(affine)}" / "checkpoint_00000000"
        ckpt.save_shared(out, cfg, model.nets_state(), {**model.train_state(), "world_size": 1},
                         {"data_dir": str(sample_data), "method": "fast"})
        if not affine:  # as written before the key existed
            data = json.loads((out / "config.json").read_text())
            del data["model"]["norm_affine"]
            (out / "config.json").write_text(json.dumps(data))
            manifest = json.loads((out / ckpt.MANIFEST).read_text())
            manifest["files"]["config.json"] = (out / "config.json").stat().st_size
            (out / ckpt.MANIFEST).write_text(json.dumps(manifest))
        name = f"fast{int(affine)}"
        style = export_style(out, name, models_dir=tmp_path / "models", precisions=("fp32", "int8")[:1 + affine])
        assert style.meta["precisions"]["fp32"]["tiled_psnr_db"] >= 60
        s = Stylizer(name, models_dir=tmp_path / "models", threads=1, tile=64)
        whole = to_uint8(s.session.run(None, {"image": to_input(photo[None])})[0], *photo.shape[:2])[0]
        assert whole.std() > 10 and psnr_db(s.stylize(photo), whole, 255.0) >= 60
        if affine:
            with torch.no_grad():
                x = torch.from_numpy(to_input(photo[None]))
                assert np.abs(s.session.run(None, {"image": x.numpy()})[0] - model.g_ab.eval()(x).numpy()).max() < 1e-3


@pytest.mark.slow  # an export of its own
def test_a_residual_generator_exports_and_tiles_exactly(trained_checkpoint, tmp_path):
    """The `cpu` recipe's generator (a global skip) passes every export gate, tiling included."""
    import shutil

    from raystyle import checkpoint as ckpt
    from raystyle.core.nets import build_generator

    config, nets = ckpt.load_nets(trained_checkpoint)
    config = config.replace(model={"residual": True})
    state = ckpt.load_shared(trained_checkpoint)[2]
    out = tmp_path / "run" / "checkpoint_00000001"
    ckpt.save_shared(out, config, nets, state)
    style = export_style(out, "skip", models_dir=tmp_path / "models", precisions=("fp32", "int8"))
    assert style.meta["architecture"]["residual"] is True
    assert style.meta["precisions"]["fp32"]["tiled_psnr_db"] >= 60
    g = build_generator(config.model).eval()
    g.load_state_dict(nets["g_ab"])
    sess = ort.InferenceSession(str(style.file("fp32")), providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 40, 48) * 2 - 1
    with torch.no_grad():
        assert np.abs(sess.run(None, {"image": x.numpy()})[0] - g(x).numpy()).max() < 1e-3
    shutil.rmtree(tmp_path / "run")


@pytest.mark.slow  # an export of its own
def test_the_averaged_generator_is_what_export_and_evaluate_use(trained_checkpoint, tmp_path, sample_data):
    """train.ema: a checkpoint with g_ab_ema exports and evaluates that one, not g_ab."""
    from raystyle import checkpoint as ckpt
    from raystyle.core.nets import build_generator
    from raystyle.train.evaluate import evaluate

    config, nets = ckpt.load_nets(trained_checkpoint)
    config = config.replace(train={"ema": 0.99})
    fresh = build_generator(config.model)  # a very different net stands in for the average
    nets = {**nets, "g_ab_ema": fresh.state_dict(), "g_ba_ema": nets["g_ba"]}
    out = tmp_path / "run" / "checkpoint_00000001"
    ckpt.save_shared(out, config, nets, ckpt.load_shared(trained_checkpoint)[2])
    gen, _, _ = load_generator(out, "ab")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(gen(x), fresh.eval()(x), atol=1e-6)
    style = export_style(out, "avg", models_dir=tmp_path / "models", precisions=("fp32",))
    sess = ort.InferenceSession(str(style.file("fp32")), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.abs(sess.run(None, {"image": x.numpy()})[0] - fresh(x).numpy()).max() < 1e-3
    ev = evaluate(out, sample_data, limit=4, classifier=False)
    base = evaluate(trained_checkpoint, sample_data, limit=4, classifier=False)
    assert ev.trained["val_gt_psnr"] != base.trained["val_gt_psnr"]
