"""Did training move domain A toward domain B? Held-out figures of a checkpoint, pure torch.

The figures are raystyle.methods.quality's (the ones validation logs during training), for three
"generators" side by side: the identity (the photo itself: the starting point), freshly
initialised nets, and the checkpoint's nets. Held-out images are prepared as in training
(shorter side -> data.load_size, centre crop data.crop_size):

- colour distance to held-out B (lower is better), content SSIM of input vs output luminance,
  cycle-reconstruction PSNR (trained nets only have a meaningful one);
- the domain score: the share of G_ab(A) a classifier trained on trainA vs trainB judges to
  be B, reported only when that classifier's held-out accuracy is at least 85%;
- where the dataset pairs its test split (the bundled sample data does), the ground-truth
  PSNR of G_ab(testA) against testB and its gain over the identity.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Evaluation:
    step: int
    images: int  # held-out A images translated
    split: str  # "test", "held-back train" or "train"
    paired: bool  # ground truth available
    identity: dict[str, float]  # the figures of the photo itself
    untrained: dict[str, float]  # freshly initialised nets (same seed as training)
    trained: dict[str, float]  # the checkpoint's nets
    classifier: str | None = None  # how good the domain classifier is, or why there is none
    classifier_accuracy: float | None = None
    notes: list[str] = field(default_factory=list)

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


@torch.no_grad()
def evaluate(checkpoint: str | Path, data: str | Path, split: str = "test", limit: int = 16,
             grid: str | Path | None = None, classifier: bool = True,
             progress=None) -> Evaluation:
    """Held-out figures of a checkpoint's G_ab (and G_ba for the cycle) on dataset ``data``.

    ``split="test"`` uses testA/testB (or, without them, the share of train that training held
    back); ``split="train"`` the train images themselves (no generalisation in that figure).
    """
    path = ckpt.resolve(checkpoint)
    config, nets = ckpt.load_nets(path)
    step = ckpt.read_manifest(path)["step"]
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    sp = quality.split_dataset(root, config.data.crop_size, config.train.val_holdout)
    if split == "test":
        heldout = quality.HeldOut.from_files(sp.held_a, sp.held_b, config.data, limit, sp.paired)
    else:
        heldout = quality.HeldOut.from_files(sp.train_a, sp.train_b, config.data, limit)
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
    torch.manual_seed(config.train.seed)  # the untrained nets training started from
    # a distilled student has one generator: no cycle figure
    pair = 2 if "g_ba" in nets else 1
    fresh = [build_generator(config.model) for _ in range(pair)]
    trained = [build_generator(config.model) for _ in range(pair)]
    trained[0].load_state_dict(generator_state(nets, "ab"))
    if pair == 2:
        trained[1].load_state_dict(generator_state(nets, "ba"))
    identity = val.measure(heldout.a)
    fakes, rec = val.translate(*trained)
    result = Evaluation(step, len(heldout.a), sp.source if split == "test" else "train", heldout.gt_b is not None, identity,
                        val.measure(*val.translate(*fresh)), val.measure(fakes, rec), clf_text,
                        clf.accuracy if clf is not None else None, notes)
    if grid is not None:
        rows = [heldout.a, fakes] + ([heldout.gt_b] if heldout.gt_b is not None else [])
        n = min(8, len(heldout.a))
        tiles = torch.cat([r[:n] for r in rows])  # one row per kind: photo | G_ab | ground truth
        save_image(tiles * 0.5 + 0.5, grid, nrow=n, padding=2)
    return result
