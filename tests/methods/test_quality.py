"""raystyle.methods.quality: held-out splits, the figures, the domain classifier and its cache, and the
ground truth of the sample data. (Validation inside real training runs: test_train.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from raystyle.config import DataConfig
from raystyle.data.datasets import painterly, write_sample_dataset
from raystyle.methods import quality
from tests.conftest import one_torch_thread

CFG = DataConfig(load_size=40, crop_size=32)
pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny nets: see conftest.one_torch_thread


@pytest.fixture(scope="module")
def split(sample_data):
    return quality.split_dataset(sample_data, CFG.crop_size, 0.1)


@pytest.fixture(scope="module")
def classifier(split, tmp_path_factory):
    with one_torch_thread():
        return quality.get_classifier(split.train_a, split.train_b, split.held_a, split.held_b, CFG,
                                      cache=tmp_path_factory.mktemp("clf"))


def test_the_sample_test_split_is_paired_through_the_filter(tmp_path):
    counts = write_sample_dataset(tmp_path, size=32, per_photo=1, test_per_photo=2)
    assert counts["testA"] == counts["testB"] == 14
    info = json.loads((tmp_path / "raystyle_dataset.json").read_text())
    assert info["paired"] == ["test"] and quality.is_paired(tmp_path)
    for a in sorted((tmp_path / "testA").iterdir()):
        b = tmp_path / "testB" / a.name  # the same name ...
        want = np.asarray(painterly(Image.open(a).convert("RGB")))  # ... is the filter of it
        assert np.array_equal(np.asarray(Image.open(b).convert("RGB")), want), a.name
    # the train split stays unpaired: B is drawn from other crops
    a0 = np.asarray(Image.open(sorted((tmp_path / "trainA").iterdir())[0]).convert("RGB"))
    b0 = np.asarray(Image.open(sorted((tmp_path / "trainB").iterdir())[0]).convert("RGB"))
    assert not np.array_equal(np.asarray(painterly(Image.fromarray(a0))), b0)


def test_a_dataset_without_the_marker_is_not_paired(tmp_path):
    assert not quality.is_paired(tmp_path)
    (tmp_path / "raystyle_dataset.json").write_text("{not json")
    assert not quality.is_paired(tmp_path)


def test_hold_back_is_stable_and_keeps_both_sides():
    files = [f"/d/trainA/{i}.png" for i in range(50)]
    train, held = quality.hold_back(files, 0.1)
    assert set(train) | set(held) == set(files) and not set(train) & set(held)
    assert 1 <= len(held) <= 12
    more_train, more_held = quality.hold_back(files + ["/d/trainA/new.png"], 0.1)
    assert set(held) <= set(more_held)  # adding a file never moves another one
    assert quality.hold_back(["/x/1.png", "/x/2.png"], 0.1)[1]  # even tiny sets hold one back
    assert len(quality.hold_back(["/x/1.png", "/x/2.png"], 0.99)[0]) == 1  # and train one


def test_a_dataset_without_test_split_holds_back_train(tmp_path):
    sp = quality.split_dataset(_unpaired(tmp_path), 32, 0.2)
    assert sp.source == "held-back train" and not sp.paired
    assert sp.held_a and sp.held_b and len(sp.train_a) + len(sp.held_a) == 21
    assert not set(sp.held_a) & set(sp.train_a)
    with pytest.raises(ValueError, match="nothing to validate on"):
        quality.split_dataset(tmp_path, 32, 0.0)


def test_psnr_and_ssim_values():
    x = torch.zeros(1, 3, 16, 16)
    y = torch.full((1, 3, 16, 16), 0.2)  # 0.1 on the [0, 1] scale: MSE 0.01 -> 20 dB
    assert float(quality.psnr(x, y)) == pytest.approx(20.0, abs=1e-4)
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    assert quality.content_ssim(img, img) == pytest.approx([1.0, 1.0])
    assert max(quality.content_ssim(img, torch.zeros_like(img))) < 0.1  # a flat output
    # structure, not colour: a global tint leaves SSIM high, shuffled pixels do not
    tinted = (img + 0.2).clamp(-1, 1)
    shuffled = img.flatten(2)[..., torch.randperm(32 * 32)].view_as(img)
    assert min(quality.content_ssim(img, tinted)) > 0.8 > max(quality.content_ssim(img, shuffled))


def test_the_classifier_separates_the_sample_domains(classifier, split):
    assert classifier.held_out == len(split.held_a) + len(split.held_b) == 14
    assert classifier.accuracy >= quality.MIN_ACCURACY and classifier.usable
    assert "held-out accuracy" in classifier.describe()


def test_identity_scores_low_and_the_filter_itself_high(classifier, split):
    held = quality.HeldOut.from_files(split.held_a, split.held_b, CFG, 16, paired=True)
    val = quality.Validator(held, classifier)
    identity = val.measure(held.a)  # the photo itself
    ideal = val.measure(held.gt_b)  # a generator that is exactly the filter
    assert identity["val_domain_score"] <= 0.15 and ideal["val_domain_score"] >= 0.85
    assert identity["val_gt_gain_db"] == 0.0 and ideal["val_gt_gain_db"] > 40
    assert identity["val_content_ssim"] == pytest.approx(1.0) and ideal["val_content_ssim"] > 0.5
    # painting every photo the same is B-coloured but keeps no content: it cannot score well
    same = held.gt_b[:1].expand_as(held.gt_b).clone()
    flat = val.measure(same)
    assert flat["val_content_ssim"] < 0.4 and flat["val_domain_content"] < ideal["val_domain_content"] - 0.3


def test_a_weak_classifier_gives_no_domain_score(split):
    held = quality.HeldOut.from_files(split.held_a, split.held_b, CFG, 16, paired=True)
    weak = quality.Classifier(quality.DomainClassifier(), 0.6, 14, (7, 7), 0.1)
    assert not weak.usable
    figures = quality.Validator(held, weak).measure(held.a)
    assert "val_domain_score" not in figures and "val_gt_psnr" in figures
    assert quality.auto_metric(False, weak) is None and quality.auto_metric(True, weak) == "val_gt_psnr"


def test_the_classifier_is_cached_per_dataset(split, tmp_path, monkeypatch):
    calls = []
    real = quality.train_classifier
    # what is cached, not how well it separates (the fixture's full training): 20 steps each
    monkeypatch.setattr(quality, "train_classifier",
                        lambda *a, **k: calls.append(1) or real(*a, **{**k, "steps": 20}))
    args = (split.train_a, split.train_b, split.held_a, split.held_b, CFG)
    first = quality.get_classifier(*args, cache=tmp_path)
    again = quality.get_classifier(*args, cache=tmp_path)
    assert len(calls) == 1 and again.cached and not first.cached
    assert again.accuracy == first.accuracy
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    assert torch.equal(first.net.prob_b(x), again.net.prob_b(x))
    other = DataConfig(load_size=48, crop_size=40)  # another scale is another classifier
    quality.get_classifier(*args[:4], other, cache=tmp_path)
    assert len(calls) == 2
    (cached,) = [p for p in tmp_path.glob("*.pt")][:1]
    cached.write_bytes(b"damaged")  # a damaged cache file is retrained, never trusted
    quality.get_classifier(*args, cache=tmp_path)
    quality.get_classifier(*args[:4], other, cache=tmp_path)
    assert len(calls) == 3


def test_validation_does_not_touch_the_nets_state():
    from raystyle.config import ModelConfig
    from raystyle.core.nets import build_generator

    torch.manual_seed(0)
    g = build_generator(ModelConfig(ngf=4, n_blocks=1, norm="batch", dropout=0.5))
    held = quality.HeldOut(torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1, None, ("x",) * 3)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    rng = torch.get_rng_state()
    quality.Validator(held)(g, g)
    assert g.training  # back in training mode
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())  # BN stats untouched
    assert torch.equal(rng, torch.get_rng_state())  # no random draws (dropout off in eval)


def test_selection_and_report_splits_never_share_a_file(split, tmp_path):
    """Checkpoints are ranked on one half of the held-out images and reported on the other:
    disjoint, together all of them, both non-empty, paired B files on their A file's side, and
    a file's side depends on its own name only."""
    for sp in (split, quality.split_dataset(_unpaired(tmp_path), 32, 0.4)):
        sel_a, sel_b = sp.part("selection")
        rep_a, rep_b = sp.part("report")
        assert sel_a and sel_b and rep_a and rep_b
        assert not set(sel_a) & set(rep_a) and not set(sel_b) & set(rep_b)
        assert set(sel_a) | set(rep_a) == set(sp.held_a) and set(sel_b) | set(rep_b) == set(sp.held_b)
        assert not (set(sel_a) | set(rep_a) | set(sel_b) | set(rep_b)) & (set(sp.train_a) | set(sp.train_b))
        if sp.paired:
            stem = lambda files: {f.rsplit("/", 1)[-1] for f in files}  # noqa: E731
            assert stem(sel_a) == stem(sel_b) and stem(rep_a) == stem(rep_b)
    files = [f"/d/testA/{i}.png" for i in range(40)]
    select, report = quality.divide(files)
    assert 10 <= len(select) <= 30
    more_select, more_report = quality.divide(files + ["/d/testA/new.png"])
    assert set(select) <= set(more_select) and set(report) <= set(more_report)
    assert quality.divide(["/x/1.png"]) == ((), ("/x/1.png",))  # one image: reported, not selected on
    assert all(quality.divide(["/x/1.png", "/x/2.png"]))


def _unpaired(root):
    write_sample_dataset(root, size=32, per_photo=3, test_per_photo=1)
    for d in ("testA", "testB"):
        for f in (root / d).iterdir():
            f.unlink()
        (root / d).rmdir()
    return root


def test_the_domain_score_is_a_mean_probability_not_a_count(split, classifier):
    """A translation the classifier is barely sure of scores near 0.5, not 100%: the score is
    the mean of P(B), so a colour change that just flips the threshold gains little."""
    held = quality.HeldOut.from_files(split.held_a, split.held_b, CFG, 16, paired=True)
    val = quality.Validator(held, classifier, realism=False)
    probs = classifier.net.prob_b(held.gt_b)
    assert val.measure(held.gt_b)["val_domain_score"] == pytest.approx(float(probs.mean()), abs=1e-4)
