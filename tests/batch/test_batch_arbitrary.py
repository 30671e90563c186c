"""`raystyle batch --style ARBITRARY --style-image PAINTING`: an AdaIN style over a folder with
Ray Data (paintings read once on the driver, blended once per actor), and its one-line errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raystyle.batch.images import MANIFEST, run_batch
from raystyle.cli import main as cli
from raystyle.data.images import decode
from raystyle.infer.arbitrary import ArbitraryStylizer
from raystyle.train import loop as train

BROKEN = "broken.png"
ALPHA = 0.8


@pytest.fixture(scope="module")
def models(arbitrary_style) -> Path:
    return arbitrary_style.path.parent


@pytest.fixture(scope="module")
def photos(sample_data, tmp_path_factory) -> Path:
    """Two photos at the top, one of an odd size (not a multiple of 8) in sub/, a corrupt file."""
    root = tmp_path_factory.mktemp("arb_in")
    for p in sorted((sample_data / "testA").glob("*.png"))[:2]:
        shutil.copy(p, root / p.name)
    (root / "sub").mkdir()
    train_a = sorted((sample_data / "trainA").glob("*.png"))
    Image.open(train_a[0]).convert("RGB").resize((40, 52)).save(root / "sub" / "odd.jpg", quality=95)
    (root / BROKEN).write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")
    return root


@pytest.fixture(scope="module")
def paintings(sample_data) -> list[Path]:
    return sorted((sample_data / "trainB").glob("*.png"))[:2]


@pytest.fixture(scope="module")
def single(ray_session, photos, paintings, models, tmp_path_factory):
    """The CLI with one painting and --alpha: (rc, stdout, output folder)."""
    out = tmp_path_factory.mktemp("arb_out") / "single"
    rc = cli.main(["batch", str(photos), str(out), "--style", "anystyle", "--models-dir", str(models),
                   "--style-image", str(paintings[0]), "--alpha", str(ALPHA), "--workers", "1",
                   "--batch-size", "2"])
    return rc, out


def outputs(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.asarray(decode(p)).astype(int)
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != MANIFEST}


def test_the_batch_output_is_the_stylizers(single, photos, paintings, models, capsys):
    rc, out = single
    assert rc == 0
    got = outputs(out)
    assert sorted(got) == sorted(str(p.relative_to(photos)) for p in photos.rglob("*.*")
                                 if p.is_file() and p.name != BROKEN)
    manifest = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert [row["path"] for row in manifest] == [BROKEN]
    offline = ArbitraryStylizer("anystyle", models_dir=models, provider="cpu")
    for rel, image in got.items():
        want = offline.stylize(photos / rel, style_images=[paintings[0]], alpha=ALPHA)
        assert image.shape == want.shape == np.asarray(decode(photos / rel)).shape, rel
        if rel.endswith(".png"):  # the JPEG output was re-encoded lossily
            assert np.abs(image - want.astype(int)).max() <= 1, rel
        else:
            assert np.abs(image - want.astype(int)).mean() < 3, rel
        original = np.asarray(decode(photos / rel)).astype(int)
        assert np.abs(image - original).mean() > 2, rel  # stylized, not a copy

    # a rerun skips the done ones, retries the broken one, and logs the painting's sha256
    capsys.readouterr()
    result = run_batch(photos, out, "anystyle", models_dir=models, style_images=[paintings[0]],
                       alpha=ALPHA, workers=1)
    stdout = capsys.readouterr().out
    assert (result.skipped, result.stylized, [e["path"] for e in result.errors]) == (3, 0, [BROKEN])
    sha = hashlib.sha256(paintings[0].read_bytes()).hexdigest()
    assert result.style == {"alpha": ALPHA, "style_images": [
        {"image": str(paintings[0]), "sha256": sha, "weight": 1.0}]}
    assert f"sha256 {sha[:12]}" in stdout and f"alpha {ALPHA:g}" in stdout


def test_weights_one_and_zero_are_the_first_painting_alone(single, photos, paintings, models,
                                                           tmp_path):
    _, first = single
    result = run_batch(photos, tmp_path / "out", "anystyle", models_dir=models, workers=1,
                       style_images=paintings, weights=[1, 0], alpha=ALPHA, echo=None)
    assert (result.stylized, [e["path"] for e in result.errors]) == (3, [BROKEN])
    assert [i["weight"] for i in result.style["style_images"]] == [1.0, 0.0]
    got, want = outputs(tmp_path / "out"), outputs(first)
    assert sorted(got) == sorted(want)
    for rel in got:
        assert np.abs(got[rel] - want[rel]).max() <= 1, rel


def test_a_blend_of_two_paintings_is_the_stylizers_blend(ray_session, photos, paintings, models,
                                                         tmp_path):
    out = tmp_path / "out"
    rc = cli.main(["batch", str(photos), str(out), "--style", "anystyle", "--models-dir", str(models),
                   "--style-image", str(paintings[0]), "--style-image", str(paintings[1]),
                   "--weights", "0.7,0.3", "--workers", "2", "--batch-size", "1"])
    assert rc == 0
    offline = ArbitraryStylizer("anystyle", models_dir=models, provider="cpu")
    for rel, image in outputs(out).items():
        if rel.endswith(".png"):
            want = offline.stylize(photos / rel, style_images=paintings, weights=[0.7, 0.3])
            assert np.abs(image - want.astype(int)).max() <= 1, rel


def one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    rc = cli.main(["batch", *argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("raystyle: error: "), err
    return lines[0]


def test_one_line_errors_before_ray_starts(capsys, photos, paintings, models, tmp_path, monkeypatch):
    def no_ray(*_args, **_kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(train, "connect", no_ray)
    # a generator style (the registry reads model.json; nothing else is opened before the check)
    generators = tmp_path / "generators"
    (generators / "gen").mkdir(parents=True)
    (generators / "gen" / "model.json").write_text(json.dumps(
        {"precisions": {"fp32": {"file": "model.onnx"}}}))
    out = tmp_path / "out"
    base = [str(photos), str(out), "--style", "anystyle", "--models-dir", str(models)]
    painting = ["--style-image", str(paintings[0])]

    line = one_line_error(capsys, base)
    assert "'anystyle' is an arbitrary style: give --style-image PAINTING" in line
    line = one_line_error(capsys, [str(photos), str(out), "--style", "gen", "--models-dir",
                                   str(generators), *painting])
    assert "--style-image, --weights and --alpha are for arbitrary styles; 'gen' is a generator" in line
    assert "style image nope.png: no such file" in one_line_error(
        capsys, [*base, "--style-image", "nope.png"])
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 a JPEG header and nothing else")
    assert f"style image {corrupt}: " in one_line_error(capsys, [*base, "--style-image", str(corrupt)])
    assert f"style image {tmp_path}: not a file" in one_line_error(
        capsys, [*base, "--style-image", str(tmp_path)])
    assert "--weights must be numbers separated by commas, got '0.7;0.3'" in one_line_error(
        capsys, [*base, *painting, "--weights", "0.7;0.3"])
    assert "--weights: 2 style weights for 1 style images" in one_line_error(
        capsys, [*base, *painting, "--weights", "0.5,0.5"])
    assert "--weights: style weights must be >= 0" in one_line_error(
        capsys, [*base, *painting, "--style-image", str(paintings[1]), "--weights=-1,2"])
    assert "--alpha must be between 0 and 1, got 1.5" in one_line_error(
        capsys, [*base, *painting, "--alpha", "1.5"])
    assert "has no fp16 model" in one_line_error(capsys, [*base, *painting, "--precision", "fp16"])
    assert "--style-image, --alpha only apply with --style" in one_line_error(
        capsys, [str(photos), str(out), "--nst", str(paintings[0]), *painting, "--alpha", "0.5"])
    assert not out.exists()  # nothing written


def test_the_help_tells_nst_from_style_image(capsys):
    with pytest.raises(SystemExit):
        cli.main(["batch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "for a trained arbitrary style use --style NAME --style-image PAINTING" in text
    assert "repeat to blend several (see --weights). Not for --nst" in text
