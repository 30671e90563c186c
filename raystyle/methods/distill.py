"""Distil a trained generator (the teacher) into a smaller one (the student); pure torch.

After GAN Compression (Li et al., CVPR 2020; mit-han-lab/gan-compression,
``distillers/resnet_distiller.py``), without its architecture search:

- the teacher (a checkpoint's generator, its weight average where it has one) is frozen and
  runs in the same process on the same batch: no second copy of the data;
- L1 from the student's output to the teacher's (``distill.lambda_recon``, 10 there);
- the student starts as a slice of the teacher: the channels with the largest weights
  (``transfer_weights``, after gan-compression's ``utils/weight_transfer.py``);
- feature distillation: at the input of the residual blocks and after each third of them, a
  learned 1x1 conv (an adapter, trained with the student) maps the student's activation to
  the teacher's width; MSE to the teacher's activation (``distill.lambda_feature``, 0.01);
- an adversarial term (the teacher's gan_mode, LSGAN by default) against real images of the
  target domain, the discriminator warm-started from the teacher's own
  (``distill.lambda_gan``, 1 there; 0.1 here, see config.DistillConfig).

``Distiller`` is a training method like ``CycleGAN`` (the interface train.py runs, see
raystyle.methods). Its checkpoints store the student as ``g_ab`` (or ``g_ba``, after the
distilled direction), so export, evaluate, stylize and serve read it like any generator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raystyle.config import Config, ConfigError, DistillConfig, ModelConfig
from raystyle.core.losses import discriminator_loss, gan_loss
from raystyle.core.nets import ResidualBlock, build_discriminator, build_generator
from raystyle.errors import RaystyleError
from raystyle.methods.base import GANMethod, linear_decay, register_method, resolve_amp
from raystyle.methods.cyclegan import generator_state


class DistillError(RaystyleError):
    """The teacher and student cannot be paired as asked."""


def tap_points(n_blocks: int) -> list[int]:
    """Which activations are matched: -1 is the input of the first residual block, k >= 0 the
    output of block k; the input and the ends of each third of the blocks: always four, so a
    student with fewer blocks than its teacher pairs up (a short student repeats a block)."""
    if n_blocks < 1:
        raise DistillError("feature distillation needs at least one residual block")
    return [-1] + [max(0, round(j * n_blocks / 3) - 1) for j in (1, 2, 3)]


class _Taps:
    """Forward hooks that keep a generator's activations at ``tap_points`` while recording."""

    def __init__(self, gen: nn.Module):
        blocks = [m for m in gen.modules() if isinstance(m, ResidualBlock)]
        self.points = tap_points(len(blocks))
        self.acts: list[torch.Tensor] | None = None  # None: not recording
        blocks[0].register_forward_pre_hook(lambda m, inp: self._keep(inp[0]))
        for k in self.points[1:]:
            blocks[k].register_forward_hook(lambda m, inp, out: self._keep(out))

    def _keep(self, act: torch.Tensor) -> None:
        if self.acts is not None:
            self.acts.append(act)

    def run(self, gen: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``gen(x)`` and the activations at the tap points, in order."""
        self.acts = []
        try:
            out = gen(x)
            return out, self.acts
        finally:
            self.acts = None


def _width(gen: nn.Module) -> int:
    return next(m for m in gen.modules() if isinstance(m, ResidualBlock)).block[1].in_channels


class StudentWithAdapters(nn.Module):
    """The student and its adapters in one module: one DDP wrapper, every parameter used
    once per backward. Returns (output, adapted activations at the tap points)."""

    def __init__(self, student: nn.Module, teacher_width: int):
        super().__init__()
        self.student = student
        self.taps = _Taps(student)
        self.adapters = nn.ModuleList(nn.Conv2d(_width(student), teacher_width, 1) for _ in self.taps.points)
        for a in self.adapters:
            nn.init.normal_(a.weight, 0.0, 0.02)
            nn.init.zeros_(a.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out, acts = self.taps.run(self.student, x)
        return out, [a(s) for a, s in zip(self.adapters, acts, strict=True)]


def _stages(gen: nn.Module) -> tuple[list[nn.Module], list[ResidualBlock], list[nn.Module]]:
    """(convs before the residual blocks, the blocks, convs after them), in forward order."""
    head: list[nn.Module] = []
    blocks: list[ResidualBlock] = []
    tail: list[nn.Module] = []
    for m in gen.model:
        if isinstance(m, ResidualBlock):
            blocks.append(m)
        elif isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            (tail if blocks else head).append(m)
    return head, blocks, tail


@torch.no_grad()
def transfer_weights(teacher: nn.Module, student: nn.Module) -> bool:
    """Start the student from the teacher (GAN Compression's ``load_pretrained_weight``): every
    conv keeps the teacher's output channels with the largest L1 weight norm, its input
    channels being the ones the layer before kept; a residual block's output keeps its input's
    channels (the skip adds them), and a student with fewer blocks takes evenly spaced ones.
    Returns False (student left as initialised) where the layouts differ: another upsampling,
    or norms with parameters (batch norm).
    """
    t_head, t_blocks, t_tail = _stages(teacher)
    s_head, s_blocks, s_tail = _stages(student)
    layers = [*zip(t_head, s_head, strict=False), *zip(t_tail, s_tail, strict=False)]
    if (len(t_head), len(t_tail)) != (len(s_head), len(s_tail)) or not s_blocks or any(
            type(t) is not type(s) for t, s in layers) or any(
            isinstance(m, nn.BatchNorm2d) for m in (*teacher.modules(), *student.modules())):
        return False

    def copy(t: nn.Module, s: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor | None) -> torch.Tensor:
        deconv = isinstance(t, nn.ConvTranspose2d)  # weight (in, out, k, k), else (out, in, k, k)
        w = t.weight.transpose(0, 1) if deconv else t.weight
        w = w[:, inputs]
        if outputs is None:  # the strongest output channels, in their original order
            n_out = s.weight.shape[1] if deconv else s.weight.shape[0]
            outputs = w.abs().sum(dim=(1, 2, 3)).topk(n_out).indices.sort().values
        picked = w[outputs]
        s.weight.copy_(picked.transpose(0, 1) if deconv else picked)
        if s.bias is not None:
            s.bias.copy_(t.bias[outputs])
        return outputs

    idx = torch.arange(3)
    for t, s in zip(t_head, s_head, strict=True):
        idx = copy(t, s, idx, None)
    picks = torch.linspace(0, len(t_blocks) - 1, len(s_blocks)).round().long()
    for s_block, k in zip(s_blocks, picks.tolist(), strict=True):
        t_convs = [m for m in t_blocks[k].block if isinstance(m, nn.Conv2d)]
        s_convs = [m for m in s_block.block if isinstance(m, nn.Conv2d)]
        hidden = copy(t_convs[0], s_convs[0], idx, None)
        copy(t_convs[1], s_convs[1], hidden, idx)  # the block's output: its input's channels
    for n, (t, s) in enumerate(zip(t_tail, s_tail, strict=True)):
        idx = copy(t, s, idx, torch.arange(3) if n == len(t_tail) - 1 else None)
    if getattr(teacher, "skip", None) is not None and getattr(student, "skip", None) is not None:
        student.skip.load_state_dict(teacher.skip.state_dict())
    return True


def check_pair(teacher: ModelConfig, student: ModelConfig) -> None:
    """A student must be no wider and no deeper than its teacher, and able to share its D."""
    if student.ngf > teacher.ngf or student.n_blocks > teacher.n_blocks:
        raise DistillError(f"the student (ngf {student.ngf}, {student.n_blocks} blocks) is wider or "
                           f"deeper than its teacher (ngf {teacher.ngf}, {teacher.n_blocks} blocks); "
                           f"pick a smaller --student or --set model.ngf/model.n_blocks")
    if student.n_blocks < 1:
        raise DistillError("the student needs at least one residual block (model.n_blocks >= 1)")
    d_keys = ("ndf", "d_layers", "d_norm")
    if any(getattr(student, k) != getattr(teacher, k) for k in d_keys) or (student.d_norm is None
                                                                           and student.norm != teacher.norm):
        raise DistillError("the student's discriminator settings (model.ndf, d_layers, d_norm, norm) must "
                           "match the teacher's: its discriminator starts as the teacher's")


@register_method("distill", section=DistillConfig)
class Distiller(GANMethod):
    """A student, its adapters and a discriminator, trained against a frozen teacher."""

    uses_classifier = False  # validation compares with the teacher, not with a domain
    verb = "distilling"
    command = "distill"  # `raystyle distill TEACHER ...` (plan() below), not `raystyle train`

    @classmethod
    def check_resume(cls, old: Config, new: Config, run: Any) -> None:
        """A student run resumes only against the teacher checkpoint it started from."""
        a, b = old.distill, new.distill
        if (a.teacher, a.teacher_step) != (b.teacher, b.teacher_step):
            raise ConfigError(f"run {run} distils {a.teacher} (step {a.teacher_step}), not {b.teacher} "
                              f"(step {b.teacher_step}); resume it with that teacher checkpoint or pick a "
                              "new --style name")

    @classmethod
    def export_direction(cls, config: Config) -> str:
        return config.distill.direction  # the student's own

    @classmethod
    def export_record(cls, config: Config, checkpoint: Path, manifest: dict[str, Any], work: Path) -> dict[str, Any]:
        """``distillation``: the student's teacher (checkpoint, run, step) and its agreement with
        the teacher on held-out images at this checkpoint's step (PSNR/SSIM from the run's
        metrics log)."""
        from raystyle.runlog import read_metrics, read_validation

        d, step = config.distill, manifest["step"]
        teacher = str(d.teacher)
        record: dict[str, Any] = {"teacher": {"checkpoint": teacher, "run": teacher.rstrip("/").rsplit("/", 1)[0],
                                              "step": d.teacher_step, "direction": d.direction}}
        found = [r for r in read_metrics(checkpoint.parent) if r.get("step") == step and "val_teacher_psnr" in r]
        if found:
            info = read_validation(checkpoint.parent)
            held = (info.get("selection") or info.get("held_out") or [config.train.val_images] * 2
                    )[0 if d.direction == "ab" else 1]
            record["vs_teacher"] = {"psnr_db": found[-1]["val_teacher_psnr"], "ssim": found[-1]["val_teacher_ssim"],
                                    "kid_el0": found[-1].get("val_kid_el0"),  # realism beside agreement
                                    "step": step, "held_out_images": min(config.train.val_images, held),
                                    "split": info.get("split"), "side": config.data.crop_size}
        else:
            record["vs_teacher"] = None  # the run validated nothing at this step (validation off)
        return {"distillation": record}

    def __init__(self, cfg: Config, teacher_cfg: Config, teacher_g: dict[str, Any],
                 teacher_d: dict[str, Any], device: torch.device | str = "cpu", rank: int = 0):
        if cfg.distill is None:
            raise ConfigError("a distillation run needs a distill section")
        check_pair(teacher_cfg.model, cfg.model)
        self.device = torch.device(device)
        self.dc, self.train_cfg, self.gan_mode = cfg.distill, cfg.train, cfg.loss.gan_mode
        self.direction = cfg.distill.direction
        self.source, self.target = ("a", "b") if self.direction == "ab" else ("b", "a")
        teacher = build_generator(teacher_cfg.model)
        teacher.load_state_dict(teacher_g)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.t_taps = _Taps(self.teacher)
        torch.manual_seed(cfg.train.seed)  # same init on every rank (DDP also broadcasts)
        self.student = build_generator(cfg.model)
        # the student starts as a slice of the teacher (distill.init teacher), else as trained nets start
        self.transferred = cfg.distill.init == "teacher" and transfer_weights(self.teacher, self.student)
        self.net = StudentWithAdapters(self.student, _width(self.teacher)).to(self.device)
        self.adapters = self.net.adapters
        self.d = build_discriminator(teacher_cfg.model)
        self.d.load_state_dict(teacher_d)  # warm start: it already knows the target domain
        self.d.to(self.device)
        torch.manual_seed(cfg.train.seed + 1000 * (rank + 1))  # dropout differs per rank
        self.net_fwd: nn.Module = self.net  # replaced by DDP wrappers in ``wrap``
        self.d_fwd: nn.Module = self.d
        tc = cfg.train
        betas = (tc.beta1, tc.beta2)
        self.opt_g = torch.optim.Adam(self.net.parameters(), lr=tc.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=tc.lr, betas=betas)
        rule = linear_decay(tc.epochs, tc.epochs_decay)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, rule)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, rule)
        self.amp_dtype = resolve_amp(tc.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.net_names = ("student", "d", "adapters")  # compared across ranks (DDP check)
        self.step = self.epoch = self.epoch_step = 0
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # input, teacher, student

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device, rank: int, extra: dict[str, Any]) -> Distiller:
        """``extra`` (from the driver, see ``load_teacher``): the teacher's config and weights."""
        teacher = extra["teacher"]
        return cls(cfg, Config.from_dict(teacher["config"]), teacher["g"], teacher["d"], device, rank)

    # -- distributed wiring -------------------------------------------------------------
    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        self.net_fwd, self.d_fwd = wrapper(self.net), wrapper(self.d)

    # -- the step -------------------------------------------------------------------------
    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        dc = self.dc
        x, real = (real_a, real_b) if self.direction == "ab" else (real_b, real_a)
        x, real = x.to(self.device, non_blocking=True), real.to(self.device, non_blocking=True)
        with torch.no_grad(), self._autocast():
            target, t_acts = self.t_taps.run(self.teacher, x)
        self.d.requires_grad_(False)  # G step: D's parameters collect no gradient
        with self._autocast():
            fake, adapted = self.net_fwd(x)
            g_gan = gan_loss(self.d(fake), True, self.gan_mode)
        recon = F.l1_loss(fake.float(), target.float())
        feature = sum(F.mse_loss(s.float(), t.float()) for s, t in zip(adapted, t_acts, strict=True))
        loss_g = dc.lambda_recon * recon + dc.lambda_feature * feature + dc.lambda_gan * g_gan
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.step(self.opt_g)

        self.d.requires_grad_(True)
        n = real.shape[0]
        with self._autocast():
            pred = self.d_fwd(torch.cat([real, fake.detach()]))  # real | fake in one forward
            loss_d = discriminator_loss(pred[:n], pred[n:], self.gan_mode)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d).backward()
        self.scaler.step(self.opt_d)
        self.scaler.update()
        self.step += 1
        self.last = (x.detach(), target.detach(), fake.detach())
        out = {"recon_l1": recon, "feature_mse": feature, "g_gan": g_gan, "g_total": loss_g, "d": loss_d}
        return {k: v.detach() for k, v in out.items()}

    # -- what train.py shows and measures ----------------------------------------------------
    def sample_rows(self) -> list[list[torch.Tensor]]:
        """The last batch's first image: input photo | teacher | student."""
        return [list(self.last)] if self.last is not None else []

    @staticmethod
    def progress_text(m: dict[str, Any]) -> str:
        return (f"G {m['g_total']:.3f} D {m['d']:.3f} | L1 to teacher {m['recon_l1']:.4f} "
                f"feature {m['feature_mse']:.4f}")

    def validate(self, validator: Any) -> dict[str, float]:
        return validator.agreement(self.student, self.teacher, self.source)

    @staticmethod
    def validation_metrics(paired: bool, classifier: Any) -> list[str]:
        return ["val_teacher_psnr", "val_teacher_ssim", "val_kid_el0", "val_fid_el0"]

    @staticmethod
    def auto_metric(paired: bool, classifier: Any) -> str:
        return "val_teacher_psnr"

    @staticmethod
    def loss_keys(cfg: Config) -> list[str]:
        return ["g_total", "recon_l1", "feature_mse", "g_gan", "d"]

    # -- state ----------------------------------------------------------------------------
    def nets_state(self) -> dict[str, Any]:
        """The student under its generator's name (g_ab or g_ba), so every reader of a
        CycleGAN checkpoint reads it; the discriminator under d_<target>; the adapters."""
        return {f"g_{self.direction}": self.student.state_dict(),
                f"d_{self.target}": self.d.state_dict(), "adapters": self.adapters.state_dict()}

    def train_state(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step}

    def load(self, nets: dict[str, Any], train_state: dict[str, Any] | None,
             rank_state: dict[str, Any] | None) -> None:
        self.student.load_state_dict(nets[f"g_{self.direction}"])
        self.d.load_state_dict(nets[f"d_{self.target}"])
        self.adapters.load_state_dict(nets["adapters"])
        if train_state is not None:
            for name in ("opt_g", "opt_d", "sched_g", "sched_d", "scaler"):
                getattr(self, name).load_state_dict(train_state[name])
            self.step, self.epoch = train_state["step"], train_state["epoch"]
            self.epoch_step = train_state["epoch_step"]
        if rank_state is not None:
            self.load_rng(rank_state)


# ---------------------------------------------------------------------------------------
# The run's configuration and its teacher (driver side; still no Ray)


def load_teacher(source: str | Path, direction: str) -> dict[str, Any]:
    """The teacher a distillation run needs, from a checkpoint or a run (its latest checkpoint):
    ``{"config", "g", "d", "checkpoint", "step", "data_dir"}``, the generator ``g_<direction>``
    (its weight average where the checkpoint has one) and the discriminator of its target
    domain. CheckpointError / UnsafeCheckpoint for anything but a complete, safe checkpoint
    (``load_nets`` reads nets.pt with weights_only; nothing else of the teacher is loaded).
    """
    from raystyle import checkpoint as ckpt

    found = ckpt.resolve(source)
    config, nets = ckpt.load_nets(found)
    manifest = ckpt.read_manifest(found)
    target = "b" if direction == "ab" else "a"
    if f"g_{direction}" not in nets or f"d_{target}" not in nets:
        raise DistillError(f"{found} has no {direction} generator and d_{target} discriminator to distil "
                           f"(it holds {', '.join(sorted(nets))}); use --set distill.direction=...")
    return {"config": config.to_dict(), "g": generator_state(nets, direction), "d": nets[f"d_{target}"],
            "checkpoint": str(found), "step": int(manifest["step"]), "data_dir": manifest.get("data_dir")}


# The presets a default student is picked from: the smallest that comes out smaller than the teacher.
STUDENT_PRESETS = ("student-16", "student-8")


def generator_params(model: ModelConfig) -> int:
    """Parameters of the generator ``model`` describes (built on the meta device: no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_generator(model).parameters())


def _size(model: ModelConfig, params: int) -> str:
    return f"ngf {model.ngf}, {model.n_blocks} blocks, {params:,} parameters"


def plan(teacher: str | Path, student: str | Path | None = None, config: str | Path | None = None,
         overrides: list[str] | None = None, settings: dict[str, dict[str, Any]] | None = None,
         say: Callable[[str], None] = lambda text: None) -> tuple[Config, dict[str, Any]]:
    """(the run's config, the workers' ``extra``: the teacher) for ``raystyle distill``.

    ``student`` is a preset name or YAML (its ``model`` keys); None: the smallest of
    ``STUDENT_PRESETS`` (by the generator it gives, in parameters) that comes out smaller than
    the teacher. ``config`` a YAML whose sections go over the teacher's; ``overrides`` ``--set``
    items; ``settings`` sections set last (the CLI's --workers, --storage ...). A student that
    is not smaller than its teacher (in parameters; the same model included) is a DistillError.
    Everything is checked here: errors before any work.
    """
    from raystyle.config import parse_overrides, read_yaml

    presets: dict[str, dict[str, Any]] = {}
    for name in (str(student),) if student is not None else STUDENT_PRESETS:
        preset = read_yaml(name)
        unknown = sorted(set(preset) - {"model", "distill"})
        if unknown:
            raise ConfigError(f"student preset {name}: only model and distill sections, not {unknown[0]!r}")
        presets[name] = preset
    extra_yaml = read_yaml(config) if config is not None else {}
    sets = parse_overrides(overrides)
    for layer in (sets, settings or {}):  # the CLI's flags win over --set, as for `train`
        for section, values in layer.items():
            extra_yaml[section] = {**(extra_yaml.get(section) or {}), **values}
    teachers: dict[str, dict[str, Any]] = {}  # by direction
    candidates = []  # (student params, name, config, teacher's config, teacher, notes)
    for name, preset in presets.items():
        direction = {**(preset.get("distill") or {}), **(extra_yaml.get("distill") or {})}.get("direction", "ab")
        if direction not in ("ab", "ba"):
            raise ConfigError(f"distill.direction: {direction!r} is not one of ['ab', 'ba']")
        if direction not in teachers:
            teachers[direction] = load_teacher(teacher, direction)
        found = teachers[direction]
        teacher_cfg = Config.from_dict(found["config"])
        model = dict(preset.get("model") or {})
        blocks = teacher_cfg.model.n_blocks
        notes = []
        if model.get("n_blocks", 0) > blocks and "n_blocks" not in (extra_yaml.get("model") or {}):
            notes.append(f"student: {blocks} residual blocks (the preset's {model['n_blocks']} are more than the teacher's)")
            model["n_blocks"] = blocks
        distill = {**(extra_yaml.get("distill") or {}), "teacher": found["checkpoint"], "teacher_step": found["step"]}
        cfg = run_config(teacher_cfg, {"model": model, "distill": preset.get("distill") or {}},
                         {**extra_yaml, "distill": distill})
        candidates.append((generator_params(cfg.model), name, cfg, teacher_cfg, found, notes))

    def refusal(candidate) -> DistillError | None:
        params, name, cfg, teacher_cfg, _, _ = candidate
        try:
            check_pair(teacher_cfg.model, cfg.model)
        except DistillError as exc:
            return exc
        teacher_params = generator_params(teacher_cfg.model)
        if params < teacher_params:
            return None
        sizes = (f"the teacher ({_size(teacher_cfg.model, teacher_params)}), the student "
                 f"({_size(cfg.model, params)})")
        if student is not None:
            return DistillError(f"the student is not smaller than its teacher: {sizes}; pick a smaller "
                                f"--student or --set model.ngf/model.n_blocks")
        return DistillError(f"no student preset ({', '.join(STUDENT_PRESETS)}) is smaller than the teacher: "
                            f"{sizes} with the smallest, {name}; give --student YAML or --set "
                            f"model.ngf/model.n_blocks")

    fitting = [c for c in candidates if refusal(c) is None]
    if not fitting:
        raise refusal(min(candidates, key=lambda c: c[0]))
    params, name, cfg, teacher_cfg, found, notes = min(fitting, key=lambda c: c[0])
    if student is None:
        say(f"student: {name}, the smallest student preset smaller than the teacher "
            f"({params:,} parameters against {generator_params(teacher_cfg.model):,})")
    for note in notes:
        say(note)
    return cfg, {"teacher": {k: found[k] for k in ("config", "g", "d")}}


def run_config(teacher_cfg: Config, student: dict[str, Any], extra: dict[str, Any]) -> Config:
    """The student run's config: the teacher's data, loss and train sections (its schedule),
    the student preset's ``model`` keys over the teacher's (so the discriminator's settings
    carry over), then ``extra`` (a --config YAML's sections with the --set overrides over
    them). ``train.ema`` starts at 0 (the distiller keeps no average), ``train.max_steps`` at
    none and ``train.best_metric`` at auto (agreement with the teacher)."""
    merged = teacher_cfg.to_dict()
    # the teacher's limit, average and ranking metric are not the student's
    merged["train"].update(ema=0.0, max_steps=None, best_metric="auto")
    merged["distill"] = {}
    for layer in (student, extra):
        for section, values in layer.items():
            if values is None:  # `fast:` left empty in a YAML: no section
                continue
            if section not in merged:
                raise ConfigError(f"unknown config section {section!r}")
            if not isinstance(values, dict):
                raise ConfigError(f"{section}: must be a mapping")
            merged[section] = {**(merged[section] or {}), **values}
    cfg = Config.from_dict(merged)
    if cfg.train.ema:
        raise ConfigError("train.ema: a distillation run keeps no weight average (leave it 0)")
    return cfg
