"""The training-method seam: the Method protocol, the registry, and the base classes. Pure torch.

A training method is one module ``raystyle/methods/<name>.py`` whose class is decorated
``@register_method("<name>", section=ItsConfig)``; ``method_class(name)`` (raystyle.methods)
imports that module and returns the class, so raystyle.train, the CLI and export never name a
method. (The pattern of junyanz's CycleGAN ``models/<name>_model.py``, whose
``modify_commandline_options`` adds a model's own flags, with a registry instead of string maps.)
What a method brings besides its training step, each with a default in ``GANMethod``:

  section          its config section (a frozen dataclass; ``cfg.<name>``), registered with it
  default_preset   the preset a run starts from without --config
  options          its own ``raystyle train`` flags (``Option``: a flag that sets a section key)
  plan(...)        the run's config and the workers' ``extra``, checked before Ray starts
  check_resume     what must match before a run resumes, beyond its config sections
  export_direction / export_record / one_folder
                   what the generator exporter asks (direction, model.json entries, calibration)
  style_kind       the kind of registry style its export produces (raystyle.infer.kinds,
                   raystyle.export): ``generator`` or ``arbitrary``
  command          the command that starts its runs (``train``; a distillation: ``distill``)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from raystyle.config import FEATURE_ARCHS

_REGISTRY: dict[str, type] = {}


@runtime_checkable
class Method(Protocol):
    """What raystyle.train.loop runs (CycleGAN, Distiller, FastStyle, AdaINMethod).

      from_config(cfg, device, rank, extra)   build it (``extra``: what the driver prepared, e.g.
                                               a distillation's teacher weights)
      wrap(wrapper)                            wrap its trained modules (DDP)
      train_step(real_a, real_b) -> losses     one optimisation step (0-d tensors)
      end_epoch(), lr(), step / epoch / epoch_step
      nets_state() / train_state() / rank_state() / load(nets, train_state, rank_state)
      net_names                                attributes compared across ranks (DDP check)
      train_cfg                                the config's train section (batch size in throughput)
      sample_rows()                            the last batch's images for a sample grid
      progress_text(metrics)                   its losses in a progress line
      validate(quality.Validator) -> figures   held-out figures at a validation step
      validation_metrics(paired, classifier), auto_metric(paired, classifier), loss_keys(cfg),
      uses_classifier, validates               what it can be ranked by, and what it needs
      check_data(data_dir, crop) -> (A, B)     the images it trains on (B empty: one domain)
      data_text(n_a, n_b), verb                 them, and what it does, in the run's first line
      style_kind                               the registry style kind its export produces
      plan, check_resume, export_direction, export_record, default_preset, options, command,
      one_folder                               see the module's docstring (defaults: GANMethod)
    """

    name: ClassVar[str]
    style_kind: ClassVar[str]
    validates: ClassVar[bool]
    verb: ClassVar[str]
    step: int
    epoch: int
    epoch_step: int

    @classmethod
    def from_config(cls, cfg: Any, device: torch.device, rank: int, extra: dict[str, Any] | None) -> Method: ...

    def wrap(self, wrapper: Callable[[torch.nn.Module], torch.nn.Module]) -> None: ...

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def end_epoch(self) -> None: ...

    def lr(self) -> float: ...

    def nets_state(self) -> dict[str, Any]: ...

    def train_state(self) -> dict[str, Any]: ...

    def rank_state(self) -> dict[str, Any]: ...

    def load(self, nets: dict[str, Any], train_state: dict[str, Any] | None,
             rank_state: dict[str, Any] | None) -> None: ...


def register_method(name: str, section: type | None = None) -> Callable[[type], type]:
    """Class decorator: the training method ``name`` (``Config.method``, ``--method``), with its
    config section ``section`` (a frozen dataclass, the file's ``NAME:`` mapping; None: CycleGAN's
    core sections only)."""
    from raystyle.config import register_section, registered_section

    def add(cls: type) -> type:
        if _REGISTRY.get(name, cls) is not cls:
            raise ValueError(f"training method {name!r} is registered twice")
        if section is None and name != "cyclegan":  # a file names its method by its section
            raise ValueError(f"training method {name!r} needs its config section (a dataclass, "
                             "empty when it has no settings)")
        if section is not None and registered_section(name) is not section:
            register_section(name, section)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def registered(name: str) -> type | None:
    """The class registered as ``name`` (None: none is, yet)."""
    return _REGISTRY.get(name)


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


@dataclass(frozen=True)
class Option:
    """A method's own ``raystyle train`` flag: ``--flag VALUE`` sets ``<method>.<key>``."""

    flag: str  # "--style-image"
    key: str  # the key of the method's section it sets: "style_image"
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    path: bool = False  # a local file: made absolute before it goes into the config
    type: Callable[[str], Any] | None = None  # argparse's: int, float ... (None: the string)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


FEATURE_OPTIONS = (  # the perceptual methods' (fast, adain): the feature network and its weights
    Option("--features", "features", "the feature network (fast.features: vgg16, adain.features: vgg19 in "
           "the presets). random needs no download; see docs/training.md for how it compares",
           choices=FEATURE_ARCHS),
    Option("--vgg-weights", "vgg_weights", "a VGG weights file (default: $RAYSTYLE_VGG_WEIGHTS, else "
           "torchvision's cache under $TORCH_HOME, downloaded when missing)", metavar="PATH", path=True),
)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None = full fp32)."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "off":
        return None
    from raystyle.config import ConfigError

    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs a CUDA device; use bf16 or off on CPU")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def linear_decay(epochs: int, epochs_decay: int) -> Callable[[int], float]:
    """lr factor: 1 for ``epochs`` epochs, then linearly towards 0 over ``epochs_decay``."""
    return lambda epoch: 1.0 - max(0, epoch + 1 - epochs) / float(epochs_decay + 1)


class GANMethod:
    """What the GAN training methods share (CycleGAN, distill.Distiller): autocast, the
    learning rate, the per-epoch schedulers ``sched_g``/``sched_d`` and epoch counting."""

    amp_dtype: torch.dtype | None
    device: torch.device
    opt_g: torch.optim.Optimizer

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def lr(self) -> float:
        return self.opt_g.param_groups[0]["lr"]

    def end_epoch(self) -> None:
        self.sched_g.step()
        self.sched_d.step()
        self.epoch += 1
        self.epoch_step = 0

    def rank_state(self) -> dict[str, Any]:
        """This rank's random-number state (dropout, pools): resumed runs draw what they would have."""
        state = {"torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_rng(self, rank_state: dict[str, Any]) -> None:
        torch.set_rng_state(rank_state["torch_rng"])
        if "cuda_rng" in rank_state and self.device.type == "cuda":
            torch.cuda.set_rng_state(rank_state["cuda_rng"], self.device)

    name: ClassVar[str] = ""
    style_kind: ClassVar[str] = "generator"  # raystyle.infer.kinds: its export is one generator
    validates = True  # held-out figures at validation steps (raystyle.methods.quality)
    verb = "training"  # in the run's first line
    default_preset: ClassVar[str | None] = None  # without --config (None: the config's defaults)
    options: ClassVar[tuple[Option, ...]] = ()  # its own `raystyle train` flags
    refuses: ClassVar[dict[str, str]] = {}  # another method's flag -> why this one takes none
    command: ClassVar[str] = "train"  # the command that starts its runs
    one_folder: ClassVar[bool] = False  # trains on one folder of photos (export calibrates on it)

    @classmethod
    def plan(cls, config: str | Path | None, overrides: list[str] | None,
             settings: dict[str, dict[str, Any]] | None) -> tuple[Any, dict[str, Any]]:
        """(the run's config, the workers' ``extra``): ``config`` (a preset or YAML; default
        ``default_preset``), ``overrides`` (--set), then ``settings`` (the CLI's flags, by
        section). Everything a run needs is checked here, before Ray starts."""
        from raystyle.config import Config

        data = run_data(config, cls.default_preset, overrides, settings)
        if cls.name != "cyclegan":
            data[cls.name] = data.get(cls.name) or {}
        return Config.from_dict(data), {}

    @classmethod
    def check_resume(cls, old: Any, new: Any, run: Any) -> None:
        """Refuse (ConfigError) to resume ``run`` (config ``old``) with ``new`` beyond what the
        config sections compare; nothing by default."""

    @classmethod
    def export_direction(cls, config: Any) -> str:
        """The generator an export takes without --direction."""
        return "ab"

    @classmethod
    def export_record(cls, config: Any, checkpoint: Path, manifest: dict[str, Any], work: Path) -> dict[str, Any]:
        """Entries the method adds to an export's model.json (files it writes go in ``work``)."""
        return {}

    @staticmethod
    def check_data(data_dir: Any, crop_size: int) -> tuple[Any, Any]:
        """Both domains: DATA/trainA and DATA/trainB."""
        from raystyle.data.datasets import check_dataset

        return check_dataset(data_dir, crop_size)

    @staticmethod
    def data_text(n_a: int, n_b: int) -> str:
        return f"|A|={n_a} |B|={n_b}"


class PerceptualMethod(GANMethod):
    """What the methods trained on fixed features share (FastStyle here, adain.AdaINMethod):
    one trained net (``net_names[0]``) with one optimiser, schedule and scaler, no
    discriminator, and no held-out figure yet: checkpoints are kept by age (or a loss, --best)."""

    uses_classifier = False
    validates = False
    net_names: tuple[str, ...]
    sched_g: Any
    scaler: Any

    def end_epoch(self) -> None:
        self.sched_g.step()
        self.epoch += 1
        self.epoch_step = 0

    def validate(self, validator: Any) -> dict[str, float]:  # pragma: no cover - validates is False
        return {}

    @staticmethod
    def validation_metrics(paired: bool, classifier: Any) -> list[str]:
        return []

    @staticmethod
    def auto_metric(paired: bool, classifier: Any) -> str | None:
        return None

    # the content loss's fixed normaliser (per layer), measured once and kept by checkpoints
    content_norm: dict[str, float] | None = None

    def train_state(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g.state_dict(), "sched_g": self.sched_g.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step,
                "content_norm": self.content_norm}

    def load(self, nets: dict[str, Any], train_state: dict[str, Any] | None,
             rank_state: dict[str, Any] | None) -> None:
        name = self.net_names[0]
        getattr(self, name).load_state_dict(nets[name])
        if train_state is not None:
            for key in ("opt_g", "sched_g", "scaler"):
                getattr(self, key).load_state_dict(train_state[key])
            self.step, self.epoch = train_state["step"], train_state["epoch"]
            self.epoch_step = train_state["epoch_step"]
            if train_state.get("content_norm") is not None:  # older checkpoints: the next batch's
                self.content_norm = dict(train_state["content_norm"])
        if rank_state is not None:
            self.load_rng(rank_state)


# -- what the perceptual methods' plans share (driver side, before Ray starts) -----------------
def run_data(config: Any, default_preset: str | None, overrides: list[str] | None,
             settings: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """The run's config as a dict: ``config`` (a preset or YAML; default ``default_preset``),
    then ``overrides`` (--set), then ``settings`` (the CLI's flags, by section)."""
    from raystyle.config import parse_overrides, read_yaml

    data = read_yaml(config or default_preset) if (config or default_preset) else {}
    parse_overrides(overrides, data)
    for section, values in (settings or {}).items():
        data[section] = {**(data.get(section) or {}), **values}
    return data


def refuse_unused_train_settings(cfg: Any, what: str) -> None:
    """A run on fixed features keeps no average and ranks checkpoints by age: refuse the
    train settings it would silently ignore."""
    from raystyle.config import ConfigError

    tc = cfg.train
    if tc.ema or tc.channels_last or tc.best_metric not in ("auto", "none"):
        raise ConfigError(f"train.ema, train.channels_last and train.best_metric are not used by {what} "
                          "run (checkpoints are kept by age; `export --best total` picks by the loss)")


def feature_weights(cfg: Any, section: str) -> tuple[Any, dict[str, Any] | None]:
    """(config with ``SECTION.features_sha256`` recorded, the VGG state or None for random
    features); a missing or wrong weights file fails here, before Ray starts."""
    from raystyle.core.perceptual import vgg_state

    sc = getattr(cfg, section)
    if sc.features == "random":
        return cfg, None
    state, info = vgg_state(sc.features, sc.vgg_weights)
    return cfg.replace(**{section: {"features_sha256": info["sha256"]}}), state
