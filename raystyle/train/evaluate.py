"""Did training move domain A toward domain B? Held-out figures of a checkpoint, pure torch.

The figures are raystyle.methods.quality's (the ones validation logs during training), on the
**reporting split** (held-out images training never ranked checkpoints on: validation and
``--best`` use the selection split), for the generators side by side: the identity (the photo
itself: the starting point), the colour-transfer baseline (the photo histogram-matched to
training B images: a palette change, no strokes), freshly initialised nets, the checkpoint's
nets and, when the checkpoint is not the run's last, the last one's. Held-out images are
prepared as in training (shorter side -> data.load_size, centre crop data.crop_size):

- KID-EL0 (with its standard error) and FID-EL0 against held-out B on EfficientNet-Lite0
  ImageNet features (raystyle.quality; lower is better; not Inception's FID);
- colour distance to held-out B (lower is better), content SSIM of input vs output luminance,
  cycle-reconstruction PSNR (trained nets only have a meaningful one);
- the domain score: the mean probability of being B that a classifier trained on trainA vs
  trainB gives G_ab(A), reported only when that classifier's held-out accuracy is at least 85%;
- where the dataset pairs its test split (the bundled sample data does), the ground-truth
  PSNR of G_ab(testA) against testB and its gain over the identity.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import save_image

from raystyle import checkpoint as ckpt
from raystyle.core.nets import MULTIPLE, build_generator
from raystyle.data.datasets import DataError, scan_domain
from raystyle.data.images import load_rgb
from raystyle.methods import quality
from raystyle.methods.cyclegan import generator_state
from raystyle.quality import colour_transfer
from raystyle.runlog import read_validation

SPLITS = ("report", "selection", "train")


@dataclass(frozen=True)
class Evaluation:
    step: int
    images: int  # held-out A images translated
    split: str  # "report", "selection" or "train"
    paired: bool  # ground truth available
    identity: dict[str, float]  # the figures of the photo itself
    untrained: dict[str, float]  # freshly initialised nets (same seed as training)
    trained: dict[str, float]  # the checkpoint's nets
    classifier: str | None = None  # how good the domain classifier is, or why there is none
    classifier_accuracy: float | None = None
    notes: list[str] = field(default_factory=list)
    source: str = "test"  # what the split divides: "test" (testA/testB) or "held-back train"
    baseline: dict[str, float] = field(default_factory=dict)  # colour transfer to training B
    last: dict[str, float] | None = None  # the run's last checkpoint, when ``step`` is not it
    last_step: int | None = None
    checkpoint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_images(folder: Path, limit: int, max_side: int) -> list[torch.Tensor]:
    """Up to ``limit`` images as (1, 3, H, W) in [-1, 1], resized to <= max_side, H, W % 4 == 0."""
    out = []
    for path in scan_domain(folder, 0).files[:limit]:
        x = TF.pil_to_tensor(load_rgb(path))
        h, w = x.shape[-2:]
        scale = min(1.0, max_side / max(h, w))
        h, w = max(MULTIPLE, int(h * scale) // MULTIPLE * MULTIPLE), max(MULTIPLE, int(w * scale) // MULTIPLE * MULTIPLE)
        x = TF.resize(x, [h, w], antialias=True)
        out.append(x.float().div(127.5).sub(1).unsqueeze(0))
    if not out:
        raise DataError(f"{folder} has no readable images")
    return out


def best_and_last(checkpoint: str | Path) -> tuple[str | Path, str | Path | None]:
    """(the checkpoint to evaluate, the run's last checkpoint if it is another one). A run dir
    gives its best checkpoint by the metric it ranked them on (else its latest)."""
    path = Path(str(checkpoint)).expanduser()
    if path.is_dir() and not (path / ckpt.MANIFEST).exists():
        last = ckpt.resolve(path)
        chosen: str | Path = last
        if read_validation(path).get("best_metric"):
            from raystyle.export import pick_checkpoint  # the rule --best auto applies
            from raystyle.export.gates import ExportError

            with contextlib.suppress(ExportError):  # no checkpoint has the metric: the latest
                chosen = pick_checkpoint(path, "auto")
        return chosen, (last if str(last) != str(chosen) else None)
    chosen = ckpt.resolve(checkpoint)
    run = Path(str(chosen)).parent
    last = ckpt.latest_checkpoint(run) if run.is_dir() else None
    return chosen, (last if last is not None and str(last) != str(chosen) else None)


def _generators(config, nets) -> list[torch.nn.Module]:
    pair = 2 if "g_ba" in nets else 1  # a distilled student has one generator: no cycle figure
    gens = [build_generator(config.model) for _ in range(pair)]
    gens[0].load_state_dict(generator_state(nets, "ab"))
    if pair == 2:
        gens[1].load_state_dict(generator_state(nets, "ba"))
    return gens


@torch.no_grad()
def evaluate(checkpoint: str | Path, data: str | Path, split: str = "report", limit: int = 16,
             grid: str | Path | None = None, classifier: bool = True,
             progress=None, last: bool = True) -> Evaluation:
    """Held-out figures of a checkpoint's G_ab (and G_ba for the cycle) on dataset ``data``.

    ``split="report"`` uses the reporting split of testA/testB (or, without them, of the share
    of train that training held back); ``"selection"`` the split training ranked checkpoints
    on; ``"train"`` the train images themselves (no generalisation in that figure). A run dir
    evaluates its best checkpoint (by the metric it ranked them on; else its latest) and, with
    ``last``, the run's last checkpoint beside it.
    """
    if split == "test":  # the name before the selection/report division
        split = "report"
    if split not in SPLITS:
        raise DataError(f"no split {split!r}: choose {', '.join(SPLITS)}")
    path, last_path = best_and_last(checkpoint)
    config, nets = ckpt.load_nets(path)
    step = ckpt.read_manifest(path)["step"]
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    sp = quality.split_dataset(root, config.data.crop_size, config.train.val_holdout)
    files_a, files_b = sp.part(split)
    if not files_a or not files_b:
        raise DataError(f"{root} has no {split} images in both domains "
                        f"({len(sp.held_a)} + {len(sp.held_b)} held out in all)")
    heldout = quality.HeldOut.from_files(files_a, files_b, config.data, limit,
                                         sp.paired and split != "train")
    clf, clf_text, notes = None, None, []
    if classifier:
        try:
            clf = quality.get_classifier(sp.train_a, sp.train_b, sp.held_a, sp.held_b, config.data,
                                         progress=progress)
            clf_text = clf.describe()
            if not clf.usable:
                notes.append(f"domain score not reported: the classifier's held-out accuracy "
                             f"{100 * clf.accuracy:.1f}% is below {100 * quality.MIN_ACCURACY:.0f}%")
        except quality.QualityError as exc:
            notes.append(f"domain score not reported: {exc}")
    if "g_ab" not in nets:  # a student distilled in direction ba
        raise DataError(f"{path} has no A->B generator to evaluate (a student distilled from g_ba)")
    val = quality.Validator(heldout, clf)
    if not val.realism:
        notes.append("KID/FID-EL0 not reported: they need at least 3 images per domain")
    torch.manual_seed(config.train.seed)  # the untrained nets training started from
    fresh = [build_generator(config.model) for _ in range(2 if "g_ba" in nets else 1)]
    trained = _generators(config, nets)
    identity = val.measure(heldout.a)
    reference = torch.stack([quality.centre_tensor(f, config.data) for f in sp.train_b[:limit]])
    baseline = val.measure(colour_transfer(heldout.a, reference))
    fakes, rec = val.translate(*trained)
    last_figures, last_step = None, None
    if last and last_path is not None:
        last_config, last_nets = ckpt.load_nets(last_path)
        if "g_ab" in last_nets:
            last_figures = val.measure(*val.translate(*_generators(last_config, last_nets)))
            last_step = ckpt.read_manifest(last_path)["step"]
    result = Evaluation(step, len(heldout.a), split, heldout.gt_b is not None, identity,
                        val.measure(*val.translate(*fresh)), val.measure(fakes, rec), clf_text,
                        clf.accuracy if clf is not None else None, notes, sp.source, baseline,
                        last_figures, last_step, str(path))
    if grid is not None:
        rows = [heldout.a, fakes] + ([heldout.gt_b] if heldout.gt_b is not None else [])
        n = min(8, len(heldout.a))
        tiles = torch.cat([r[:n] for r in rows])  # one row per kind: photo | G_ab | ground truth
        save_image(tiles * 0.5 + 0.5, grid, nrow=n, padding=2)
    return result
