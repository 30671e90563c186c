"""The CycleGAN optimisation step (Zhu et al. 2017), pure torch + torch.amp; knows nothing of Ray.

Two generators (g_ab: A->B, g_ba: B->A) and two discriminators (d_a judges domain A,
d_b judges domain B). One step:
  1. generators: fool both discriminators, keep both cycles and identities   (opt_g)
  2. discriminators: real vs. fakes drawn from the image pools               (opt_d)

DDP-safe by construction: all generator work is one forward of ``Generators`` and all
discriminator training is one forward of ``Discriminators``, so when each wrapper is
DistributedDataParallel every parameter is used exactly once per backward (no
unused-parameter errors, no hangs). In step 1 the discriminators run unwrapped with
``requires_grad=False``, so their gradient hooks never fire outside their own step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from raystyle.config import Config, LossConfig, ModelConfig, TrainConfig
from raystyle.core.losses import cycle_loss, discriminator_loss, gan_loss, identity_loss
from raystyle.core.nets import build_discriminator, build_generator
from raystyle.methods.base import GANMethod, linear_decay, register_method, resolve_amp


class ImagePool:
    """History of generated images (Shrivastava et al. 2017): D also sees older fakes.

    With probability 1/2 a query image is swapped for a stored one once the pool is full.
    Randomness comes from a private generator whose state is checkpointed.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)  # (1, 3, H, W)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand(1, generator=self.gen).item() < 0.5:
                k = int(torch.randint(0, self.size, (1,), generator=self.gen))
                out.append(self.images[k].clone())
                self.images[k] = img.clone()
            else:
                out.append(img)
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        return {"images": [t.cpu() for t in self.images], "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.images = [t.to(device) for t in state["images"]][: self.size]
        self.gen.set_state(state["gen"])


@dataclass
class CycleOutputs:
    fake_b: torch.Tensor  # G_ab(a)
    rec_a: torch.Tensor  # G_ba(G_ab(a))
    fake_a: torch.Tensor  # G_ba(b)
    rec_b: torch.Tensor  # G_ab(G_ba(b))
    idt_a: torch.Tensor | None  # G_ba(a)
    idt_b: torch.Tensor | None  # G_ab(b)


class Generators(nn.Module):
    """Both generators in one module, so one DDP wrapper covers one forward per step."""

    def __init__(self, g_ab: nn.Module, g_ba: nn.Module, identity: bool):
        super().__init__()
        self.g_ab, self.g_ba, self.identity = g_ab, g_ba, identity

    def forward(self, real_a: torch.Tensor, real_b: torch.Tensor) -> tuple:
        """Returns the fields of CycleOutputs as a tuple (DDP traverses plain containers)."""
        n = real_a.shape[0]
        if self.identity:
            # Batch the identity inputs with the translation inputs: one conv pass each.
            ab = self.g_ab(torch.cat([real_a, real_b]))  # (2B, 3, H, W): fake_b | idt_b
            ba = self.g_ba(torch.cat([real_b, real_a]))  # (2B, 3, H, W): fake_a | idt_a
            fake_b, idt_b, fake_a, idt_a = ab[:n], ab[n:], ba[:n], ba[n:]
        else:
            fake_b, fake_a, idt_a, idt_b = self.g_ab(real_a), self.g_ba(real_b), None, None
        rec_a = self.g_ba(fake_b)  # (B, 3, H, W)
        rec_b = self.g_ab(fake_a)
        return fake_b, rec_a, fake_a, rec_b, idt_a, idt_b


class Discriminators(nn.Module):
    """Both discriminators in one module: real and pooled fakes judged in one forward."""

    def __init__(self, d_a: nn.Module, d_b: nn.Module):
        super().__init__()
        self.d_a, self.d_b = d_a, d_b

    def forward(self, real_a, fake_a, real_b, fake_b):
        n = real_a.shape[0]
        pa = self.d_a(torch.cat([real_a, fake_a]))  # (2B, 1, h, w): real | fake
        pb = self.d_b(torch.cat([real_b, fake_b]))
        return pa[:n], pa[n:], pb[:n], pb[n:]


def generator_state(nets: dict[str, Any], direction: str) -> dict[str, Any]:
    """The weights of generator ``g_<direction>`` to evaluate and export: the averaged ones
    (``g_<direction>_ema``, written when train.ema is on) where ``nets`` has them."""
    return nets.get(f"g_{direction}_ema", nets[f"g_{direction}"])


@register_method("cyclegan")
class CycleGAN(GANMethod):
    """Nets, optimisers, schedulers, scaler and pools, and ``train_step``."""

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig, train_cfg: TrainConfig,
                 device: torch.device | str = "cpu", rank: int = 0):
        self.device = torch.device(device)
        self.loss_cfg, self.train_cfg = loss_cfg, train_cfg
        torch.manual_seed(train_cfg.seed)  # same init on every rank (DDP also broadcasts)
        self.g_ab, self.g_ba = build_generator(model_cfg), build_generator(model_cfg)
        self.d_a, self.d_b = build_discriminator(model_cfg), build_discriminator(model_cfg)
        torch.manual_seed(train_cfg.seed + 1000 * (rank + 1))  # dropout differs per rank
        self.memory_format = torch.channels_last if train_cfg.channels_last else torch.contiguous_format
        self.gens = Generators(self.g_ab, self.g_ba, loss_cfg.lambda_identity > 0)
        self.discs = Discriminators(self.d_a, self.d_b)
        for m in (self.gens, self.discs):
            m.to(self.device, memory_format=self.memory_format)
        self.gens_fwd: nn.Module = self.gens  # replaced by DDP wrappers in ``wrap``
        self.discs_fwd: nn.Module = self.discs
        betas = (train_cfg.beta1, train_cfg.beta2)
        self.opt_g = torch.optim.Adam(self.gens.parameters(), lr=train_cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discs.parameters(), lr=train_cfg.lr, betas=betas)
        rule = linear_decay(train_cfg.epochs, train_cfg.epochs_decay)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, rule)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, rule)
        self.amp_dtype = resolve_amp(train_cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.pool_a = ImagePool(train_cfg.pool_size, seed=train_cfg.seed + 17 * (rank + 1))
        self.pool_b = ImagePool(train_cfg.pool_size, seed=train_cfg.seed + 31 * (rank + 1))
        # The averaged generators (train.ema > 0): copies that follow the trained weights.
        self.ema = train_cfg.ema
        self.g_ab_ema = copy.deepcopy(self.g_ab).requires_grad_(False) if self.ema else None
        self.g_ba_ema = copy.deepcopy(self.g_ba).requires_grad_(False) if self.ema else None
        self.net_names = ("g_ab", "g_ba", "d_a", "d_b") + (("g_ab_ema", "g_ba_ema") if self.ema else ())
        self.step = self.epoch = self.epoch_step = 0
        self.last: CycleOutputs | None = None
        self.last_real: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device, rank: int, extra: dict[str, Any]) -> CycleGAN:
        return cls(cfg.model, cfg.loss, cfg.train, device, rank)

    # -- distributed wiring -------------------------------------------------------------
    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Wrap both halves, e.g. in DistributedDataParallel; the step calls the wrappers."""
        self.gens_fwd, self.discs_fwd = wrapper(self.gens), wrapper(self.discs)

    # -- the step -------------------------------------------------------------------------
    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch; returns detached 0-d loss tensors.

        (Tensors, not floats: ``.item()`` would sync the GPU every step; call float() when logging.)
        """
        lc = self.loss_cfg
        real_a = real_a.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        real_b = real_b.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

        # 1. Generators. D is frozen so its parameters collect no gradient here.
        self.discs.requires_grad_(False)
        with self._autocast():
            out = CycleOutputs(*self.gens_fwd(real_a, real_b))
            g_gan_ab = gan_loss(self.d_b(out.fake_b), True, lc.gan_mode)  # D_b(G_ab(a)) -> real
            g_gan_ba = gan_loss(self.d_a(out.fake_a), True, lc.gan_mode)  # D_a(G_ba(b)) -> real
        cyc_a = cycle_loss(out.rec_a, real_a)  # ||G_ba(G_ab(a)) - a||_1
        cyc_b = cycle_loss(out.rec_b, real_b)  # ||G_ab(G_ba(b)) - b||_1
        loss_g = g_gan_ab + g_gan_ba + lc.lambda_cycle * (cyc_a + cyc_b)
        losses = {"g_gan_ab": g_gan_ab, "g_gan_ba": g_gan_ba, "cycle_a": cyc_a, "cycle_b": cyc_b}
        if out.idt_a is not None:
            idt_a = identity_loss(out.idt_a, real_a)  # ||G_ba(a) - a||_1
            idt_b = identity_loss(out.idt_b, real_b)  # ||G_ab(b) - b||_1
            loss_g = loss_g + lc.lambda_identity * lc.lambda_cycle * (idt_a + idt_b)
            losses.update(idt_a=idt_a, idt_b=idt_b)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)

        # 2. Discriminators on real images and on fakes from the history pools.
        self.discs.requires_grad_(True)
        fake_a = self.pool_a.query(out.fake_a.detach())
        fake_b = self.pool_b.query(out.fake_b.detach())
        with self._autocast():
            pa_real, pa_fake, pb_real, pb_fake = self.discs_fwd(real_a, fake_a, real_b, fake_b)
            loss_d_a = discriminator_loss(pa_real, pa_fake, lc.gan_mode)
            loss_d_b = discriminator_loss(pb_real, pb_fake, lc.gan_mode)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d_a + loss_d_b).backward()
        self.scaler.step(self.opt_d)
        self.scaler.update()

        self._update_ema()
        self.step += 1
        self.last, self.last_real = out, (real_a, real_b)
        losses.update(g_total=loss_g, d_a=loss_d_a, d_b=loss_d_b)
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        if not self.ema:
            return
        for avg, net in ((self.g_ab_ema, self.g_ab), (self.g_ba_ema, self.g_ba)):
            torch._foreach_lerp_(list(avg.parameters()), list(net.parameters()), 1.0 - self.ema)
            for b_avg, b in zip(avg.buffers(), net.buffers(), strict=True):
                b_avg.copy_(b)

    def generators(self) -> tuple[nn.Module, nn.Module]:
        """The generators to judge and export: the averaged ones when train.ema is on."""
        if self.ema:
            return self.g_ab_ema, self.g_ba_ema
        return self.g_ab, self.g_ba

    # -- what train.py shows and measures (the method interface, raystyle.methods) -----------
    uses_classifier = True  # validation scores translations with the domain classifier

    def sample_rows(self) -> list[list[torch.Tensor]]:
        """The last batch's first images: real A | fake B | rec A, real B | fake A | rec B."""
        if self.last is None or self.last_real is None:
            return []
        o, (a, b) = self.last, self.last_real
        return [[a, o.fake_b, o.rec_a], [b, o.fake_a, o.rec_b]]

    @staticmethod
    def progress_text(m: dict[str, Any]) -> str:
        return (f"G {m['g_total']:.3f} D_a {m['d_a']:.3f} D_b {m['d_b']:.3f} "
                f"cyc {m['cycle_a'] + m['cycle_b']:.3f}")

    def validate(self, validator: Any) -> dict[str, float]:
        return validator(*self.generators())

    @staticmethod
    def validation_metrics(paired: bool, classifier: Any) -> list[str]:
        from raystyle.methods.quality import metrics_available

        return metrics_available(paired, classifier)

    @staticmethod
    def auto_metric(paired: bool, classifier: Any) -> str | None:
        from raystyle.methods.quality import auto_metric

        return auto_metric(paired, classifier)

    @staticmethod
    def loss_keys(cfg: Config) -> list[str]:
        from raystyle.runlog import LOSS_KEYS

        return [k for k in LOSS_KEYS if cfg.loss.lambda_identity > 0 or not k.startswith("idt")]

    # -- state --------------------------------------------------------------------------
    def nets_state(self) -> dict[str, Any]:
        return {name: getattr(self, name).state_dict() for name in self.net_names}

    def train_state(self) -> dict[str, Any]:
        return {
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step,
        }

    def rank_state(self) -> dict[str, Any]:
        return {"pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict(), **super().rank_state()}

    def load(self, nets: dict[str, Any], train_state: dict[str, Any] | None,
             rank_state: dict[str, Any] | None) -> None:
        for name in ("g_ab", "g_ba", "d_a", "d_b"):
            getattr(self, name).load_state_dict(nets[name])
        if self.ema:  # a checkpoint written without the average starts it from its weights
            self.g_ab_ema.load_state_dict(generator_state(nets, "ab"))
            self.g_ba_ema.load_state_dict(generator_state(nets, "ba"))
        if train_state is not None:
            self.opt_g.load_state_dict(train_state["opt_g"])
            self.opt_d.load_state_dict(train_state["opt_d"])
            self.sched_g.load_state_dict(train_state["sched_g"])
            self.sched_d.load_state_dict(train_state["sched_d"])
            self.scaler.load_state_dict(train_state["scaler"])
            self.step, self.epoch = train_state["step"], train_state["epoch"]
            self.epoch_step = train_state["epoch_step"]
        if rank_state is not None:
            self.pool_a.load_state_dict(rank_state["pool_a"], self.device)
            self.pool_b.load_state_dict(rank_state["pool_b"], self.device)
            self.load_rng(rank_state)
