"""Typed run configuration: ``data``, ``model``, ``train`` and a ``seed`` (docs/architecture.md).

Config is validated once, at the edge: YAML (or a dict) goes in, frozen pydantic models come
out, and code inside the package never sees a raw dict. Every user mistake becomes a
:class:`ConfigError` whose message names the file, the key path, the value and what is
allowed, so the CLI can print it on one line instead of a traceback.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from glow_repro.core.registry import CONV1X1_FORMS, COUPLINGS, DATASETS, OBJECTIVES, PERMUTATIONS, SCALES

# Names whose allowed values are read from the registries when a config is validated.
DatasetName = Annotated[str, BeforeValidator(DATASETS.validate)]
PermutationName = Annotated[str, BeforeValidator(PERMUTATIONS.validate)]
Conv1x1Form = Annotated[str, BeforeValidator(CONV1X1_FORMS.validate)]
CouplingName = Annotated[str, BeforeValidator(COUPLINGS.validate)]
ScaleName = Annotated[str, BeforeValidator(SCALES.validate)]
ObjectiveName = Annotated[str, BeforeValidator(OBJECTIVES.validate)]

#: The paper's sampling temperatures (Glow, section 5, Figure 8).
PAPER_TEMPERATURES = (0.0, 0.25, 0.6, 0.7, 0.8, 0.9, 1.0)

#: Largest seed: seeds fit a signed 32-bit integer, which every generator here (torch, numpy,
#: Python's random) accepts as it is.
MAX_SEED = 2**31 - 1

#: Caps on sizes, far above any study here (the paper's largest model has K=48, width 512),
#: so that a typo (an extra zero or three) fails at once instead of allocating the machine away.
MAX_WIDTH = 8192
MAX_DEPTH = 512
MAX_LEVELS = 10
MAX_IMAGE_SIZE = 4096
MAX_BATCH = 65536
MAX_IMAGES = 10_000_000
#: The paper's longest runs are a few million steps (CIFAR-10: thousands of epochs at batch 64).
MAX_STEPS = 100_000_000


def _numbers_only(annotation: Any) -> bool:
    """Whether a field holds numbers only: ``int``, ``float`` or a ``Literal`` of numbers, or None."""
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    numeric = [
        option in (int, float)
        or (get_origin(option) is Literal and not any(isinstance(v, (bool, str)) for v in get_args(option)))
        for option in options
        if option is not type(None)
    ]
    return bool(numeric) and all(numeric)


def _true_or_false(value: Any) -> Any:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


#: A boolean that must be written as true/false: ``1``, ``0`` or ``"yes"`` are refused
#: (a table's numpy booleans pass).
Flag = Annotated[bool, BeforeValidator(_true_or_false)]
Temperature = Annotated[float, Field(ge=0)]


class ConfigError(ValueError):
    """A user's configuration mistake; ``str(err)`` is a complete one-line message."""


class _IdentityMark:
    """How a field enters a run's identity (:func:`run_identity`), written beside the field as
    ``Annotated[type, EXECUTION_ONLY]`` or ``Annotated[type, ADDED_LATER]``."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: A key that changes how or where a run executes but not what it computes (beyond float
#: rounding, as a thread count does; tests/test_scale_options.py bounds it): never part of a
#: run's identity (its run id, and the check that a directory holds the same run).
EXECUTION_ONLY = _IdentityMark("EXECUTION_ONLY")
#: A key added after runs were made, whose default is what every earlier run did: part of a
#: run's identity only when it holds another value, so existing configs keep their run ids.
ADDED_LATER = _IdentityMark("ADDED_LATER")


class _Section(BaseModel):
    """Unknown keys, infinities and NaN are refused in every section, and so is true or false
    for a number (which pydantic would read as 1 or 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_flag_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name  # always set for a field validator
        if isinstance(value, bool) and name is not None and _numbers_only(cls.model_fields[name].annotation):
            raise ValueError("must be a number, not true or false")
        return value


class DataConfig(_Section):
    """What the model sees: dataset, geometry and quantisation (Glow, section 5)."""

    dataset: DatasetName = "fashion-mnist"
    root: Annotated[Path | None, EXECUTION_ONLY] = Field(None, description="directory that holds the dataset's files")
    image_size: int | None = Field(None, ge=2, le=MAX_IMAGE_SIZE, description="side length; None keeps the native size")
    resize: Literal["pad", "resize"] = "pad"
    channels: Literal[1, 3] | None = Field(None, description="None keeps native; 3 tiles gray images")
    n_bits: int = Field(8, ge=1, le=8)
    download: Annotated[Flag, EXECUTION_ONLY] = False
    train_limit: int | None = Field(None, ge=1, description="use only the first N training images")
    test_limit: int | None = Field(None, ge=1, description="use only the first N test images")
    synthetic_size: int = Field(512, ge=8, le=MAX_IMAGES, description="images per split of the synthetic dataset")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the preprocessed images."""
        c, h, w = DATASETS[self.dataset].shape
        if self.image_size is not None:
            h = w = self.image_size
        return (self.channels or c, h, w)


class ModelConfig(_Section):
    """Glow architecture (Glow, section 3 and Table 1; official-code choices in docs/fidelity.md)."""

    depth: int = Field(8, ge=1, le=MAX_DEPTH, description="K: flow steps per level")
    levels: int = Field(2, ge=1, le=MAX_LEVELS, description="L: multi-scale levels (the paper uses 3 at 32x32)")
    width: int = Field(128, ge=1, le=MAX_WIDTH, description="hidden channels of the coupling networks")
    permutation: PermutationName = "conv1x1"
    conv1x1_form: Conv1x1Form = "lu"
    coupling: CouplingName = "affine"
    scale: ScaleName = "sigmoid"
    learn_top: Flag = True
    actnorm_logscale_factor: float = Field(1.0, gt=0)
    zero_conv_logscale_factor: float = Field(3.0, gt=0)
    coupling_actnorm: Flag = Field(True, description="ActNorm instead of bias in the coupling NN")
    conditioning: Annotated[ObjectiveName, ADDED_LATER] = Field(
        "none",
        description="the objective: none, or class (class-conditional priors and a classifier on the top latent)",
    )
    class_weight: Annotated[float, ADDED_LATER] = Field(
        0.01, ge=0, description="weight of the classifier's bits (official weight_y)"
    )
    conditional_splits: Annotated[Flag, ADDED_LATER] = Field(
        False, description="condition the split priors on the class too"
    )


class TrainConfig(_Section):
    """Optimisation, evaluation and bookkeeping of one run (Glow, section 5)."""

    optimizer: Literal["adam", "adamax"] = "adam"
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(0, ge=0)
    warmup_epochs: float | None = Field(None, gt=0, description="warmup in epochs; replaces warmup_steps")
    steps: int | None = Field(1000, ge=1, le=MAX_STEPS, description="budget in optimisation steps")
    epochs: float | None = Field(None, gt=0, description="budget in passes over the training set; replaces steps")
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    grad_clip: float | None = Field(None, gt=0, description="max global grad norm; None disables")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="Polyak/EMA weights for eval")
    augment_shift: Flag = Field(False, description="random translation by up to 10% of the size, per image")
    init_images: int = Field(256, ge=1, le=MAX_IMAGES, description="images for ActNorm data-dependent init")
    eval_every: int | None = Field(200, ge=1, description="steps between evaluations")
    eval_every_epochs: Annotated[float | None, ADDED_LATER] = Field(
        None, gt=0, description="evaluation cadence in epochs; replaces eval_every"
    )
    eval_limit: int | None = Field(None, ge=1, description="cap on test images per evaluation")
    eval_batch_size: int = Field(256, ge=1, le=MAX_BATCH)
    log_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    checkpoint_every_minutes: Annotated[float | None, EXECUTION_ONLY] = Field(
        None, gt=0, description="also checkpoint once this many wall minutes passed since the last one"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Annotated[int | None, EXECUTION_ONLY] = Field(None, ge=1, le=4096)
    precision: Literal["float32", "bf16"] = Field(
        "float32", description="bf16 autocasts the coupling and prior convolutions only"
    )
    tf32: Flag = Field(False, description="TF32 matmuls and convolutions on CUDA; false is IEEE float32")
    deterministic: Annotated[Flag, EXECUTION_ONLY] = Field(
        False, description="cuDNN deterministic algorithms (exact resume on CUDA)"
    )
    channels_last: Annotated[Flag, EXECUTION_ONLY] = Field(
        True, description="NHWC activations (+11 % images/s on CPU, benchmarks/README.md)"
    )
    compile: Annotated[Literal[False, True, "default", "reduce-overhead", "max-autotune"], EXECUTION_ONLY] = Field(
        False,
        description="torch.compile the training forward: true is the default mode; "
        "reduce-overhead adds CUDA graphs, max-autotune also searches kernels",
    )
    grad_checkpointing: Annotated[Flag, EXECUTION_ONLY] = Field(
        False, description="recompute each flow step in backward"
    )
    on_nonfinite: Literal["stop", "skip", "rollback"] = "stop"
    max_skips: int = Field(20, ge=0, description="skip: give up (diverged) after this many")
    max_rollbacks: int = Field(3, ge=0, description="rollback: give up after this many")
    rollback_lr_factor: float = Field(0.5, gt=0, le=1, description="lr multiplier per rollback")
    sample_temperatures: tuple[Temperature, ...] = Field(
        PAPER_TEMPERATURES, min_length=1, description="temperatures of the final sample grid"
    )
    n_samples: int = Field(16, ge=1, le=1024, description="samples per temperature in the final grid")
    progress: Annotated[Flag, EXECUTION_ONLY] = True
    tensorboard: Annotated[Flag, EXECUTION_ONLY] = Field(
        False, description="mirror the logs into TensorBoard event files (optional extra)"
    )

    @model_validator(mode="before")
    @classmethod
    def _epochs_replace_steps(cls, raw: Any) -> Any:
        """A budget (an evaluation cadence) in epochs leaves ``steps`` (``eval_every``) unset
        (null) unless both were given."""
        if isinstance(raw, dict) and raw.get("epochs") is not None and "steps" not in raw:
            raw = {**raw, "steps": None}
        if isinstance(raw, dict) and raw.get("eval_every_epochs") is not None and "eval_every" not in raw:
            raw = {**raw, "eval_every": None}
        return raw

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        if self.steps is None and self.epochs is None:
            raise ValueError("no budget: give train.steps or train.epochs (both are null)")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give the budget as train.steps or as train.epochs, not both (set the other to null)")
        if self.warmup_epochs is not None and self.warmup_steps:
            raise ValueError("give the warmup as train.warmup_steps or as train.warmup_epochs, not both")
        if self.eval_every is None and self.eval_every_epochs is None:
            raise ValueError("no evaluation cadence: give train.eval_every or train.eval_every_epochs (both are null)")
        if self.eval_every is not None and self.eval_every_epochs is not None:
            raise ValueError(
                "give the evaluation cadence as train.eval_every or as train.eval_every_epochs, "
                "not both (set the other to null)"
            )
        if self.checkpoint_every_minutes is not None and self.on_nonfinite == "rollback":
            raise ValueError(
                "train.checkpoint_every_minutes cannot go with train.on_nonfinite=rollback: the step a "
                "rollback returns to would depend on wall time; checkpoint by train.checkpoint_every only"
            )
        return self

    def budget_steps(self, per_epoch: int) -> int:
        """The run's training steps: ``steps``, or ``epochs`` passes of ``per_epoch`` drop-last
        batches, rounded up."""
        if self.steps:
            return self.steps
        assert self.epochs is not None, "checked by _one_budget"
        return math.ceil(self.epochs * per_epoch)


class MonitorConfig(_Section):
    """Thresholds of the stability monitor; see glow_repro/run/stability.py."""

    spike_window: int = Field(100, ge=5, description="steps of history for median and MAD")
    spike_warmup: int = Field(20, ge=5, description="history needed before spikes are judged")
    loss_spike_mads: float = Field(10.0, gt=0)
    loss_spike_relative: float = Field(0.1, ge=0, description="and at least this fraction above the median")
    # Glow's gradient norms are heavy-tailed: healthy Fashion-MNIST runs (permutation study,
    # 400 steps) reached 13-19x their running median and 41 MADs, so a spike is 50x and 50 MADs.
    grad_spike_mads: float = Field(50.0, gt=0)
    grad_spike_relative: float = Field(49.0, ge=0, description="and more than (1 + this) x the median")
    health_every: int = Field(10, ge=0, description="steps between health checks; 0 disables")
    min_affine_scale: float = Field(1e-4, ge=0)
    max_affine_scale: float = Field(1e4, gt=0)
    max_conv1x1_condition: float = Field(1e4, gt=1)
    min_conv1x1_logabsdet: float = Field(-20.0)
    min_actnorm_scale: float = Field(1e-4, ge=0)
    max_bpd: float = Field(64.0, gt=0, description="a training bpd above this counts as diverged, like NaN")


class RunConfig(_Section):
    """One run: everything needed to reproduce it exactly."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    monitor: MonitorConfig = MonitorConfig()
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _image_fits_levels(self) -> RunConfig:
        _, h, w = self.data.shape
        factor = 2**self.model.levels
        if h % factor or w % factor:
            raise ValueError(
                f"image size {h}x{w} is not divisible by 2^levels = {factor} "
                f"(model.levels={self.model.levels}); set data.image_size to a multiple of "
                f"{factor} or lower model.levels"
            )
        return self

    @model_validator(mode="after")
    def _classes_to_condition_on(self) -> RunConfig:
        dataset = DATASETS[self.data.dataset]
        if self.model.conditioning == "class" and not dataset.has_classes:
            has = f"{dataset.labels}, not classes" if dataset.labels else "no labels"
            raise ValueError(f"model.conditioning=class needs a dataset with classes; {self.data.dataset} has {has}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-safe dict of every resolved value."""
        return self.model_dump(mode="json")


def _marked(mark: _IdentityMark) -> dict[str, Any]:
    """``section.key`` -> default of every field of a run config's sections marked ``mark``."""
    return {
        f"{section}.{key}": field.default
        for section, part in RunConfig.model_fields.items()
        if isinstance(part.annotation, type) and issubclass(part.annotation, _Section)
        for key, field in part.annotation.model_fields.items()
        if mark in field.metadata
    }


#: The fields marked :data:`EXECUTION_ONLY`: left out of a run's identity and of a study's swept keys.
EXECUTION_ONLY_KEYS = tuple(_marked(EXECUTION_ONLY))
#: The fields marked :data:`ADDED_LATER`, with the default every earlier run had.
LATER_KEYS = _marked(ADDED_LATER)


def run_identity(config: RunConfig | dict[str, Any]) -> dict[str, Any]:
    """The resolved config as a plain dict without its :data:`EXECUTION_ONLY` keys, and
    without the :data:`ADDED_LATER` keys that hold their default (docs/architecture.md,
    "Where a run's identity is declared")."""
    record = copy.deepcopy(config.to_dict() if isinstance(config, RunConfig) else config)
    for dotted in EXECUTION_ONLY_KEYS:
        section, key = dotted.split(".")
        record.get(section, {}).pop(key, None)
    for dotted, original in LATER_KEYS.items():
        section, key = dotted.split(".")
        if record.get(section, {}).get(key, original) == original:
            record.get(section, {}).pop(key, None)
    return record


def _describe_location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-"))


def _format_validation_error(err: ValidationError, source: str) -> str:
    problems = []
    for item in err.errors():
        key = _describe_location(item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif "literal" in item["type"]:
            allowed = item.get("ctx", {}).get("expected", "")
            message = f"must be one of {allowed}"
        value = item.get("input")
        shown = "" if isinstance(value, dict) or item["type"] == "missing" else f" (got {value!r})"
        problems.append(f"{key}: {message}{shown}")
    return f"{source}: " + "; ".join(problems)


def validate_model(cls: type[BaseModel], raw: Any, source: str) -> Any:
    """Validate ``raw`` into ``cls`` or raise :class:`ConfigError` that names ``source``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key written twice in one mapping (plain YAML keeps
    the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key]}); keep one", key_node.start_mark
                )
            try:
                seen[key] = line
            except TypeError:  # an unhashable key: the base class says so
                break
        return super().construct_mapping(node, deep=deep)


def decode_utf8(data: bytes, path: str | Path) -> str:
    """``data`` as UTF-8 text, or a ConfigError naming ``path`` and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file strictly: a missing or empty file, bytes that are not UTF-8, a
    syntax error or a key written twice is a ConfigError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    text = decode_utf8(data, path)
    try:
        parsed = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        kind = "YAML error" if "duplicate key" in problem else "YAML syntax error"
        raise ConfigError(f"{path}: {kind}{where}: {problem}") from None
    if parsed is None:
        raise ConfigError(f"{path}: the file is empty (no YAML in it); write the settings it should hold")
    return parsed


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value``; the value is parsed as YAML (so ``1e-3``, ``true``, ``[1, 2]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key.path=value")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Return a deep copy of ``tree`` with ``dotted`` (``train.lr``) set to ``value``."""
    out = copy.deepcopy(tree)
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``--set key.path=value`` strings to a raw config dict."""
    for text in overrides:
        key, value = parse_override(text)
        raw = set_path(raw, key, value)
    return raw


def load_run_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read, override and validate a run config file."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with data/model/train/seed keys")
    return validate_model(RunConfig, apply_overrides(raw, overrides), str(path))


def dump_run_config(config: RunConfig) -> str:
    """YAML text of the resolved config; ``load`` of it gives back an equal config."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
