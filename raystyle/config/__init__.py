"""Typed configuration: frozen dataclasses that load from YAML and ``--set a.b=value``.

A ``Config`` has one section per concern (data, model, loss, train, cluster, export) and
at most one training method's own section, registered by name (``register_section``; the
built-in ones: distill, whose presence makes a run a distillation and its ``model`` section
the student's; fast; adain). Each function receives only the section it needs. Ray workers receive ``config.to_dict()``
and rebuild the dataclass with ``Config.from_dict`` on their first line.

Unknown keys and values of the wrong type are ``ConfigError``s that name the key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from raystyle.errors import RaystyleError


class ConfigError(RaystyleError):
    """A configuration key or value is not allowed; the message names the key."""


# -- default locations: one resolution, used by every command ---------------------------
HOME_ENV, MODELS_ENV = "RAYSTYLE_HOME", "RAYSTYLE_MODELS"


def home() -> Path:
    """Where raystyle keeps the demo, runs and styles by default: $RAYSTYLE_HOME or ~/raystyle."""
    return Path(os.environ.get(HOME_ENV) or "~/raystyle").expanduser()


def default_storage() -> str:
    """Where training runs go when ``cluster.storage`` is not set: HOME/runs."""
    return str(home() / "runs")


def default_models_dir() -> Path:
    """The styles registry when no ``--models-dir`` is given: $RAYSTYLE_MODELS, else HOME/models."""
    env = os.environ.get(MODELS_ENV)
    return Path(env).expanduser() if env else home() / "models"


# -- perceptual features (raystyle.core.perceptual): here, so the CLI knows them without torch ---
FEATURE_ARCHS = ("vgg19", "vgg16", "random")
VGG_WEIGHTS_ENV = "RAYSTYLE_VGG_WEIGHTS"
VERBOSE_ENV = "RAYSTYLE_VERBOSE"  # `--verbose`: Ray's own INFO lines on the console too (raystyle.cluster)
FEATURE_LAYERS: dict[str, dict[str, tuple[str, ...]]] = {
    # Gatys, Ecker & Bethge 2016
    "vgg19": {"content": ("relu4_2",),
              "style": ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")},
    # Johnson, Alahi & Fei-Fei 2016
    "vgg16": {"content": ("relu2_2",),
              "style": ("relu1_2", "relu2_2", "relu3_3", "relu4_3")},
}
FEATURE_LAYERS["random"] = FEATURE_LAYERS["vgg19"]  # random features are VGG-19-shaped


@dataclass(frozen=True)
class DataConfig:
    load_size: int = 286  # shorter side is resized to this before cropping
    crop_size: int = 256  # random square crop fed to the nets
    flip: bool = True  # random horizontal flip
    loader_workers: int = 2  # DataLoader processes per training worker (0 = in-process)

    def __post_init__(self) -> None:
        positive(self, "data", "load_size", "crop_size")
        if self.crop_size > self.load_size:
            raise ConfigError(f"data.crop_size ({self.crop_size}) must be <= data.load_size ({self.load_size})")
        if self.crop_size % 4:
            raise ConfigError(f"data.crop_size must be a multiple of 4, got {self.crop_size}")
        if self.loader_workers < 0:
            raise ConfigError("data.loader_workers must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    ngf: int = 64  # generator width (channels of the first conv)
    n_blocks: int = 9  # residual blocks in the generator (9 for 256 px, 6 for 128 px)
    ndf: int = 64  # discriminator width
    d_layers: int = 3  # PatchGAN depth; 3 gives the paper's 70x70 receptive field
    norm: Literal["instance", "batch", "none"] = "instance"
    # the discriminators' normalisation when it differs from the generators' (None: ``norm``);
    # "none" lets them see global colour casts that instance norm divides away
    d_norm: Literal["instance", "batch", "none"] | None = None
    upsample: Literal["deconv", "resize"] = "deconv"  # resize = nearest x2 + conv (no checkerboard)
    dropout: float = 0.0  # dropout inside residual blocks
    # output = clamp(input + net(input)): a global skip, so the generator starts near the
    # identity and learns the change (the `cpu` recipe; the paper's generator has none)
    residual: bool = False
    # with residual: the skip is a learned colour map (1x1 conv, the identity at start), so
    # global colour changes (tint, saturation, contrast) are easy despite instance norm
    colour_skip: bool = False
    # the kernel of the first and last convs: 7 (CycleGAN's ResNet) or 9 (Johnson et al.'s
    # fast style transfer network, the ``fast`` presets)
    edge_kernel: Literal[7, 9] = 7
    # the generators' instance norms learn a per-channel scale and shift (pytorch/examples'
    # TransformerNet: the ``fast`` presets); CycleGAN's paper generator has none (the default,
    # which older checkpoints without this key load as)
    norm_affine: bool = False

    def __post_init__(self) -> None:
        positive(self, "model", "ngf", "ndf", "d_layers")
        if self.norm_affine and self.norm != "instance":
            raise ConfigError(f"model.norm_affine is for model.norm: instance (batch norm is always "
                              f"affine; none has nothing to scale), got model.norm: {self.norm}")
        if self.colour_skip and not self.residual:
            raise ConfigError("model.colour_skip needs model.residual: true (it is the residual's skip)")
        if self.n_blocks < 0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.n_blocks must be >= 0 and model.dropout in [0, 1)")


@dataclass(frozen=True)
class LossConfig:
    gan_mode: Literal["lsgan", "vanilla"] = "lsgan"
    lambda_cycle: float = 10.0
    # As in the paper's code: the identity term is weighted lambda_identity * lambda_cycle.
    lambda_identity: float = 0.5


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 1  # per worker
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    epochs: int = 100  # epochs at the initial learning rate
    epochs_decay: int = 100  # epochs of linear decay to zero after that
    max_steps: int | None = None  # stop after this many optimisation steps (None: all epochs)
    pool_size: int = 50  # image history for the discriminators (0 disables the pool)
    # Exponential moving average of the generators' weights (0: off). With e.g. 0.995 the
    # average is what validation, evaluate and export use (sample grids show the training
    # step's own outputs); it smooths the GAN's step-to-step oscillation. Checkpoints keep
    # both the trained and the averaged weights.
    ema: float = 0.0
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16/fp16 on CUDA, off on CPU
    channels_last: bool = False
    seed: int = 0
    log_every: int = 10  # steps between metrics-log lines and progress reports
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    sample_every: int = 500  # steps between sample grids (real A | fake B | rec A)
    # Checkpoints kept by Ray Train: the best ones by best_metric, and always the newest (the
    # newest ones when there is no best_metric).
    keep_checkpoints: int = 3
    validate: bool = True  # held-out figures (raystyle.methods.quality) at every checkpoint
    validate_every: int = 0  # ... and every N steps besides (0: at checkpoints only)
    val_images: int = 16  # held-out images per domain
    val_holdout: float = 0.1  # share of train held back for validation when there is no testA/testB
    # The validation figure that ranks checkpoints (retention, `export --best auto`): auto =
    # val_gt_psnr where the test split is paired, else val_domain_content where the domain
    # classifier is good enough, else none (newest kept). Or a name such as val_cycle_psnr.
    best_metric: str = "auto"

    def __post_init__(self) -> None:
        positive(self, "train", "batch_size", "lr", "log_every", "checkpoint_every",
                  "sample_every", "keep_checkpoints", "val_images")
        if self.validate_every < 0 or not 0.0 <= self.val_holdout < 1.0:
            raise ConfigError("train.validate_every must be >= 0 and train.val_holdout in [0, 1)")
        if self.epochs < 0 or self.epochs_decay < 0 or self.epochs + self.epochs_decay == 0:
            raise ConfigError("train.epochs + train.epochs_decay must be > 0 (both >= 0)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1, got {self.max_steps}")
        if self.pool_size < 0:
            raise ConfigError("train.pool_size must be >= 0")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError(f"train.ema must be in [0, 1) (0: off), got {self.ema}")


@dataclass(frozen=True)
class DistillConfig:
    """A distillation run (``raystyle distill``): the ``model`` section is the student's.

    Losses after GAN Compression (Li et al. 2020): L1 from the student's output to the
    teacher's, MSE between adapted student and teacher activations at four points of the
    residual blocks, LSGAN (or the teacher's gan_mode) with the teacher's discriminator as a
    warm start. ``teacher`` and ``teacher_step`` are filled in by ``raystyle distill``.
    """

    teacher: str = ""  # the teacher checkpoint (a local path or a URI)
    teacher_step: int = 0  # the teacher's training step at that checkpoint
    direction: Literal["ab", "ba"] = "ab"  # which of the teacher's generators is distilled
    # teacher: the student starts as a slice of the teacher (its strongest channels, as GAN
    # Compression does); random: as a trained generator starts
    init: Literal["teacher", "random"] = "teacher"
    lambda_recon: float = 10.0  # L1 student output -> teacher output
    lambda_feature: float = 0.01  # MSE adapted student activations -> teacher activations
    # adversarial term against real target-domain images. GAN Compression uses 1 (it aims at
    # FID); that costs agreement with the teacher: student-8 of the paper-size bench teacher,
    # 600 steps at lr 1e-3, held-out PSNR vs teacher 22.4 dB at 1, 24.1 dB at 0.1, 24.4 dB at 0
    lambda_gan: float = 0.1

    def __post_init__(self) -> None:
        for name in ("lambda_recon", "lambda_feature", "lambda_gan"):
            if getattr(self, name) < 0:
                raise ConfigError(f"distill.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.lambda_recon + self.lambda_feature + self.lambda_gan == 0:
            raise ConfigError("distill: at least one of lambda_recon, lambda_feature, lambda_gan must be > 0")


@dataclass(frozen=True)
class FastConfig:
    """A fast per-style network run (``raystyle train --method fast``; Johnson et al. 2016): the
    ``model`` section is the transformer net's, trained on photos against one style image with
    content, style (Gram) and total-variation losses on fixed features (raystyle.core.perceptual).

    Losses are scale-free (each layer's error relative to its target's mean square, see
    perceptual.content_loss / style_loss), so the same weights suit VGG and random features.
    ``style_image`` and ``style_sha256`` are filled in by ``raystyle train --style-image``.
    """

    style_image: str = ""  # the painting (absolute path when the run started)
    style_sha256: str = ""  # of the style image file: a rerun with another image is refused
    style_size: int = 256  # the style image's shorter side for its Gram targets, in px
    features: Literal["vgg16", "vgg19", "random"] = "vgg16"  # vgg16: Johnson et al.'s choice
    vgg_weights: str | None = None  # a VGG weights file; None: $RAYSTYLE_VGG_WEIGHTS or torchvision's cache
    features_sha256: str = ""  # of the VGG weights trained with (filled in; "" for random features)
    content_layers: tuple[str, ...] = ()  # () = perceptual.DEFAULT_LAYERS[features]["content"]
    style_layers: tuple[str, ...] = ()  # () = perceptual.DEFAULT_LAYERS[features]["style"]
    content_weight: float = 1.0
    style_weight: float = 5.0
    tv_weight: float = 0.0

    def __post_init__(self) -> None:
        positive(self, "fast", "style_size")
        for name in ("content_weight", "style_weight", "tv_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"fast.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.style_weight == 0:
            raise ConfigError("fast.style_weight must be > 0 (without it the net learns the identity)")
        if self.vgg_weights is not None and self.features == "random":
            raise ConfigError("fast.vgg_weights is for VGG features; random features need no file")

    def identity(self) -> FastConfig:
        """What makes two runs the same (a resume compares this): the painting's and the
        weights' hashes, not where the files were found."""
        return dataclasses.replace(self, style_image="", vgg_weights=None)


@dataclass(frozen=True)
class AdaINConfig:
    """An arbitrary-style run (``raystyle train --method adain``; Huang & Belongie 2017): a fixed
    encoder (the features up to relu4_1), adaptive instance normalisation of the content's
    features to the style's channel means and standard deviations, and a trained decoder.
    Trained on DATA/trainA (content photos) and DATA/trainB (paintings); the ``model`` section
    is not used. Losses are scale-free like the fast nets' (raystyle.methods.adain), so the same
    weights suit VGG and random features.
    """

    features: Literal["vgg19", "vgg16", "random"] = "vgg19"  # vgg19: the paper's encoder
    vgg_weights: str | None = None  # a VGG weights file; None: $RAYSTYLE_VGG_WEIGHTS or torchvision's cache
    features_sha256: str = ""  # of the VGG weights trained with (filled in; "" for random features)
    content_weight: float = 1.0  # relu4_1 of the output vs the AdaIN target
    style_weight: float = 1.0  # means and stds of relu1_1 .. relu4_1 vs the style image's
    # Park & Lee's identity loss (SANet, CVPR 2019): L1 between D(E(c)) and the photo c itself, so
    # the decoder learns to invert the encoder in pixels too (0: the AdaIN paper's losses only).
    # Random features need it: without it the decoder finds striped images that match them.
    identity_weight: float = 0.0
    decoder_width: float = 1.0  # the decoder's channels relative to the paper's (256-128-64)
    # a style image's shorter side when its statistics are taken at stylize time; None: the
    # training's data.load_size (the scale the decoder saw paintings at before cropping)
    style_size: int | None = None

    def __post_init__(self) -> None:
        positive(self, "adain", "decoder_width", "style_weight")
        if self.style_size is not None and (self.style_size < 16 or self.style_size % 8):
            raise ConfigError(f"adain.style_size must be a multiple of 8 and at least 16 px, got {self.style_size!r}")
        for name in ("content_weight", "identity_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"adain.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.vgg_weights is not None and self.features == "random":
            raise ConfigError("adain.vgg_weights is for VGG features; random features need no file")

    def identity(self) -> AdaINConfig:
        """What makes two runs the same (a resume compares this): the weights' hash, not their path."""
        return dataclasses.replace(self, vgg_weights=None)


@dataclass(frozen=True)
class ClusterConfig:
    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    address: str | None = None  # Ray address; None: RAY_ADDRESS or a local Ray started for you
    storage: str | None = None  # runs are written to STORAGE/NAME; None: $RAYSTYLE_HOME/runs
    max_failures: int = 2  # worker-group restarts from the last checkpoint before giving up

    def __post_init__(self) -> None:
        positive(self, "cluster", "workers", "cpus_per_worker")


@dataclass(frozen=True)
class ExportConfig:
    """The gates an export must pass before anything is registered (raystyle.export.generator).

    Defaults from measurements (held-out images; tiny = the tests' and the `tiny` preset's
    generators, 0 to 150 training steps; paper = the ResNet-9 with random weights):
    fp32 vs torch 3e-6 (tiny) / 2.3e-4 (paper); exact tiling vs whole 90-99 dB; streamed
    statistics 3e-7 / 7e-5 std; int8 model and tile graph 31.1-40.8 dB (tiny) / 19.2 dB
    (paper, refused); fp16 51-88 dB.
    """

    max_abs_error: float = 1e-3  # fp32 model.onnx and tile(x, stats(x)) vs torch, values in [-1, 1]
    stats_max_rel_error: float = 1e-3  # streamed statistics vs stats.onnx, in stds of each norm's input
    tile_min_psnr_db: float = 60.0  # exact tiling vs the whole image (a halo 1/2 too small gives ~55)
    int8_min_psnr_db: float = 28.0  # int8 model and tile graph vs fp32 (28 dB: ~10 grey levels RMS)
    fp16_min_psnr_db: float = 45.0  # fp16 model and tile graph vs fp32

    def __post_init__(self) -> None:
        positive(self, "export", "max_abs_error", "stats_max_rel_error")


# -- training methods' own sections ---------------------------------------------------------
# A training method beyond CycleGAN keeps its settings in a section of its own, named after it
# (``fast:``, ``adain:``, ``distill:``): a frozen dataclass registered here by name. The built-in
# methods' sections are registered below (so a config reads without torch); a new method
# registers its section from its own module (raystyle.methods.base.register_method(name,
# section=...)). A section named in a file but not registered yet is looked up through the
# finders the upper layers install (raystyle.methods installs one that imports the method's module).
_SECTIONS: dict[str, type] = {}
_FINDERS: list[Any] = []


def register_section(name: str, cls: type) -> None:
    """``cls`` (a frozen dataclass) is training method ``name``'s config section."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"the config section of method {name!r} must be a dataclass, not {cls!r}")
    if name in CORE_SECTIONS or _SECTIONS.get(name, cls) is not cls:
        raise ValueError(f"config section {name!r} is registered twice")
    _SECTIONS[name] = cls


def add_section_finder(finder: Any) -> None:
    """``finder(name)`` is called for a section name not registered yet (it may register it)."""
    if finder not in _FINDERS:
        _FINDERS.append(finder)


def section_class(name: str) -> type | None:
    """The dataclass of method ``name``'s section; None when no method has that name."""
    if name not in _SECTIONS and isinstance(name, str) and name.isidentifier() and not name.startswith("_"):
        for finder in _FINDERS:
            with contextlib.suppress(RaystyleError):
                finder(name)
            if name in _SECTIONS:
                break
    return _SECTIONS.get(name)


def registered_section(name: str) -> type | None:
    """The section registered as ``name`` so far (no finder is asked)."""
    return _SECTIONS.get(name)


def section_names() -> list[str]:
    """The method sections registered so far."""
    return sorted(_SECTIONS)


CORE_SECTIONS = ("data", "model", "loss", "train", "cluster", "export")


@dataclass(frozen=True)
class Config:
    """The core sections, and at most one training method's own (``method``, ``section``).

    In a file (YAML, config.json) the method's section sits beside the core ones under the
    method's name (``fast: {...}``); no method section means CycleGAN. ``cfg.fast`` (any
    registered method's name) is that section when it is this run's method, else None.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    method: str = "cyclegan"  # the training method (recorded in checkpoints and model.json)
    section: Any = None  # its own section: an instance of section_class(method); None for CycleGAN

    def __post_init__(self) -> None:
        cls = _SECTIONS.get(self.method)
        if cls is None and self.method != "cyclegan":
            raise ConfigError(f"training method {self.method!r} has no registered config section")
        if (self.section is None) != (cls is None) or (cls is not None and type(self.section) is not cls):
            raise ConfigError(f"a {self.method} config needs its {self.method!r} section "
                              f"({cls.__name__ if cls else 'none'}), got {type(self.section).__name__}")

    def __getattr__(self, name: str) -> Any:
        """``cfg.fast``, ``cfg.adain``, ``cfg.distill`` ...: the section, or None for another method."""
        if name.startswith("_") or name not in _SECTIONS:
            raise AttributeError(name)
        return self.section if self.method == name else None

    def to_dict(self) -> dict[str, Any]:
        data = {name: dataclasses.asdict(getattr(self, name)) for name in CORE_SECTIONS}
        if self.section is not None:
            data[self.method] = dataclasses.asdict(self.section)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a mapping, got {type(data).__name__}")
        core = {k: v for k, v in data.items() if k in CORE_SECTIONS}
        extra = {k: v for k, v in data.items() if k not in CORE_SECTIONS}
        for key in extra:
            if section_class(key) is None:
                allowed = ", ".join(sorted([*CORE_SECTIONS, *section_names()]))
                raise ConfigError(f"unknown config key {key!r}; allowed: {allowed}")
        present = [k for k, v in extra.items() if v is not None]  # older files: `fast: null` ...
        if len(present) > 1:
            raise ConfigError(f"a config has at most one training method's section, not {' and '.join(present)}")
        config = _build(cls, core, prefix="")
        if not present:
            return config
        method = present[0]
        return dataclasses.replace(config, method=method, section=_build(_SECTIONS[method], data[method], method))

    def replace(self, **sections: Any) -> Config:
        """Return a copy with nested overrides, e.g. ``replace(train={"max_steps": 5})``."""
        merged = self.to_dict()
        for name, values in sections.items():
            if name not in merged and section_class(name) is None:
                raise ConfigError(f"unknown config section {name!r}")
            merged[name] = {**(merged.get(name) or {}), **values}
        return Config.from_dict(merged)


for _name, _cls in (("distill", DistillConfig), ("fast", FastConfig), ("adain", AdaINConfig)):
    register_section(_name, _cls)


# Shipped inside the package, so a wheel has them too; jobs/configs in a clone is a link here
# (tests/test_config.py checks it shows the same files).
PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def preset_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a preset in raystyle/presets (``paper``, ``tiny``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    candidate = PRESETS_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor a preset {known}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The sections of a YAML file (a path or a preset name), as plain dicts."""
    file = preset_path(path)
    try:
        loaded = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{file}: top level must be a mapping of sections")
    return loaded


def parse_overrides(items: list[str] | None, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """``["a.b=value", ...]`` -> ``{"a": {"b": value}}`` (values read as YAML), merged ``into``."""
    data: dict[str, Any] = into if into is not None else {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        section, _, name = key.strip().partition(".")
        if data.get(section) is None:
            data[section] = {}
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section}: must be a mapping")
        data[section][name] = yaml.safe_load(raw) if raw.strip() else None
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (a path or a preset name), then ``a.b=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    return Config.from_dict(parse_overrides(overrides, data))


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """A frozen dataclass ``cls`` from a mapping (YAML, JSON, a Serve config's ``args:``): each
    value checked against its field's type; unknown keys and wrong types are ConfigErrors that
    name ``where.key``. The one way raystyle reads typed settings (config, Serve arguments)."""
    return _build(cls, data, prefix=where)


def positive(obj: Any, section: str, *names: str) -> None:
    """ConfigError unless each field ``names`` of ``obj`` is > 0."""
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {value!r}")


def at_least_zero(obj: Any, section: str, *names: str) -> None:
    """ConfigError unless each field ``names`` of ``obj`` is >= 0."""
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            raise ConfigError(f"{section}.{name} must be >= 0, got {value!r}")



def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where + unknown[0]!r}; allowed: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, key)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(inner[0], value, key)
    if hint is Any:
        return value
    if origin is tuple:  # tuple[X, ...]: a YAML list (or one item)
        item = typing.get_args(hint)[0]
        values = value if isinstance(value, list | tuple) else [value]
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(values))
    if origin is list:  # list[X]: a YAML list
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:  # dict[str, X]: a YAML mapping
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        item = typing.get_args(hint)[1]
        return {k: _coerce(item, v, f"{key}.{k}") for k, v in value.items()}
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - programming error
