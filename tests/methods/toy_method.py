"""A fifth training method in one file (plus its preset, toy.yaml beside it): what the method
seam asks of a new method, and all of it. tests/methods/test_toy_method.py trains, resumes and
exports it through the real `raystyle train`, Ray Train and the exporter, none of which names it.

"toy" learns a fixed tone for one folder of photos: the generator is trained (L1) to turn each
photo into its sepia or grey version (``toy.tone``, also the flag ``--tone``). Its export is one
generator (style kind ``generator``) whose model.json records the tone (``export_record``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from raystyle.config import ConfigError
from raystyle.core.nets import build_generator
from raystyle.data.datasets import DomainScan, check_photos
from raystyle.methods.base import (
    Option,
    PerceptualMethod,
    linear_decay,
    register_method,
    resolve_amp,
)

SEPIA = torch.tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
GREY = torch.tensor([[0.299, 0.587, 0.114]] * 3)


@dataclass(frozen=True)
class ToyConfig:
    """The method's own section: ``toy:`` in a YAML file, ``--set toy.KEY=VALUE``."""

    tone: Literal["sepia", "grey"] = "sepia"
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ConfigError(f"toy.weight must be > 0, got {self.weight!r}")


@register_method("toy", section=ToyConfig)
class ToyTone(PerceptualMethod):
    default_preset = str(Path(__file__).with_name("toy.yaml"))
    one_folder = True
    options = (Option("--tone", "tone", "the tone the photos are turned to", choices=("sepia", "grey")),)
    verb = "toning"

    @classmethod
    def export_record(cls, config, checkpoint, manifest, work):
        return {"toy": {"tone": config.toy.tone, "step": manifest["step"]}}

    def __init__(self, cfg, device, rank):
        self.device, self.train_cfg, self.tc = torch.device(device), cfg.train, cfg.toy
        self.matrix = (SEPIA if self.tc.tone == "sepia" else GREY).to(self.device)
        torch.manual_seed(cfg.train.seed)
        self.g_ab = build_generator(cfg.model).to(self.device)
        torch.manual_seed(cfg.train.seed + 1000 * (rank + 1))
        self.net_fwd = self.g_ab
        t = cfg.train
        self.opt_g = torch.optim.Adam(self.g_ab.parameters(), lr=t.lr, betas=(t.beta1, t.beta2))
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, linear_decay(t.epochs, t.epochs_decay))
        self.amp_dtype = resolve_amp(t.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)
        self.net_names = ("g_ab",)
        self.step = self.epoch = self.epoch_step = 0
        self.last = None

    @classmethod
    def from_config(cls, cfg, device, rank, extra):
        return cls(cfg, device, rank)

    def wrap(self, wrapper):
        self.net_fwd = wrapper(self.g_ab)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """The toned photo, in [-1, 1] like ``x``."""
        rgb = (x + 1) / 2
        return (torch.einsum("ij,bjhw->bihw", self.matrix, rgb).clamp(0, 1)) * 2 - 1

    def train_step(self, real_a, real_b):
        x = real_a.to(self.device)
        with self._autocast():
            y = self.net_fwd(x)
        loss = self.tc.weight * (y.float() - self.target(x)).abs().mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.step += 1
        self.last = (x.detach(), y.detach())
        return {"total": loss.detach()}

    def sample_rows(self):
        if self.last is None:
            return []
        x, y = self.last
        return [[x, y, self.target(x)]]

    @staticmethod
    def progress_text(m: dict[str, Any]) -> str:
        return f"loss {m['total']:.4f}"

    @staticmethod
    def check_data(data_dir, crop_size):
        return check_photos(data_dir, crop_size), DomainScan((), (), 0)

    @staticmethod
    def data_text(n_a: int, n_b: int) -> str:
        return f"{n_a} photos"

    @staticmethod
    def loss_keys(cfg) -> list[str]:
        return ["total"]

    def nets_state(self):
        return {"g_ab": self.g_ab.state_dict()}
