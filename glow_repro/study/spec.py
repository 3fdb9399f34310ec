"""Study specs: a base run config and the changes this study makes to it, grid axes and
explicit variants, seeds, and the paper claims the study tests (docs/verdicts.md).

A study is a delta of a shared config (docs/architecture.md, "Adding a study"): ``base:`` names
a run config file (or inlines one) and ``set:`` changes keys of it, as ``--set`` does, before
the grid and variants are applied. Only the resolved configs matter, so moving settings between
a base file and ``set:`` keeps every run id.

A study file (``studies/*.yaml``) is validated as strictly as a run config: unknown keys,
empty axes, bad seed lists, claims about keys or values the study does not sweep, attributes
(``manipulations:``) its dataset does not have and invalid combined configs are
:class:`ConfigError` messages that name the file and the key. Claims and manipulations are not
part of any run's config, so they never change run ids. :func:`expand` turns a spec into one
:class:`RunSpec` per variant x seed; each run's id is a hash of its resolved config (seed
included, pure execution settings excluded), so the same spec always maps to the same run
directories and reordering YAML keys changes nothing; :func:`spec_hash` names the study
itself, so that a results directory holds one study.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from glow_repro.core.attributes import dataset_attribute
from glow_repro.core.config import (
    MAX_SEED,
    ConfigError,
    RunConfig,
    apply_overrides,
    parse_override,
    read_yaml,
    run_identity,
    set_path,
    validate_model,
)
from glow_repro.errors import UserFacingError
from glow_repro.study.labels import format_value, variant_name
from glow_repro.study.launchers.slurm import SlurmResources

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


#: Per-run estimators a claim can compare (docs/verdicts.md, "Metrics"): the test bpd of the
#: last evaluation, the lowest test bpd of any evaluation, or the mean test bpd of the last
#: ``last_evals`` evaluations. Evaluations use the Polyak (EMA) weights when the runs set
#: ``train.ema_decay``.
CLAIM_METRICS = ("final_test_bpd", "best_test_bpd", "mean_test_bpd_of_last_evals")
#: Earlier names of metrics, still accepted in study files.
METRIC_ALIASES = {"mean_last_evals": "mean_test_bpd_of_last_evals"}
#: A claim's tests: the paired t-test for order claims; for divergence claims the exact
#: sign-flip test on the per-seed scores, or the same on their signed ranks (Wilcoxon).
CLAIM_TESTS = {"order": ("t",), "divergence": ("sign-flip", "wilcoxon")}
#: The smallest effect of interest when a claim declares none: bpd for order claims, share of
#: the pooled settings for divergence claims (docs/verdicts.md, "The smallest effect of interest").
DEFAULT_MIN_EFFECT = {"order": 0.05, "divergence": 0.25}
#: Seeds from here on belong to pilots; a study's seeds stay below (docs/pilot.md).
PILOT_SEEDS_START = 1000


class ClaimSpec(BaseModel):
    """One claim of a paper the study tests: the values of ``key`` in ``order``.

    ``kind: order`` claims the metric (test bpd) is lower for earlier values; with a
    ``margin`` (bpd) it claims instead that earlier values are not worse by more than the
    margin (a non-inferiority claim, docs/verdicts.md "Claims with a margin"). ``kind:
    divergence`` claims earlier values diverge less often. The claim must hold at every
    combination of the ``within`` keys' values; swept keys in neither ``key`` nor ``within``
    are averaged over within each seed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(description="a short name, unique in the study")
    source: str = Field(description="the paper figure, table or section that makes the claim")
    kind: Literal["order", "divergence"] = "order"
    key: str = Field(description="the swept key whose values the claim orders")
    order: list[Any] = Field(min_length=2, description="values of key, best (lowest) first")
    within: list[str] = Field(default_factory=list, description="keys the claim holds at every value of")
    metric: Literal[CLAIM_METRICS] = "final_test_bpd"  # type: ignore[valid-type]
    last_evals: int = Field(3, ge=1, description="evaluations averaged by mean_last_evals")
    margin: float | None = Field(
        None, ge=0, description="bpd an earlier value may be worse by and still count (kind: order only)"
    )
    min_effect: float | None = Field(
        None, gt=0, description="the smallest effect of interest, in the claim's units (bpd, or share diverged)"
    )
    test: Literal["t", "sign-flip", "wilcoxon"] = Field(
        "t", description="t (order claims); sign-flip or wilcoxon (divergence claims); default: the first of its kind"
    )

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """Old metric names, and the test that fits the claim's kind."""
        if isinstance(data, dict):
            data = dict(data)
            if data.get("metric") in METRIC_ALIASES:
                data["metric"] = METRIC_ALIASES[data["metric"]]
            kind = data.get("kind", "order")
            if data.get("test") is None and kind in CLAIM_TESTS:
                data["test"] = CLAIM_TESTS[kind][0]
        return data

    @property
    def smallest_effect(self) -> float:
        """``min_effect``, or the default for the claim's kind."""
        return self.min_effect if self.min_effect is not None else DEFAULT_MIN_EFFECT[self.kind]

    @property
    def sizing_effect(self) -> float:
        """The effect the seeds needed are sized for (docs/verdicts.md, "The smallest effect of
        interest"): the margin of a non-inferiority claim (at no true difference), else
        ``smallest_effect``."""
        return self.margin if self.margin else self.smallest_effect

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be letters, digits, '.', '_', '-'")
        return value

    @field_validator("margin")
    @classmethod
    def _margin_of_order(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("kind", "order") != "order":
            raise ValueError("a margin (bpd) applies to kind: order claims only; remove it")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> ClaimSpec:
        labels = [format_value(value) for value in self.order]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(f"order names {', '.join(twice)} more than once")
        if self.key in self.within or len(set(self.within)) != len(self.within):
            raise ValueError(f"within must list distinct keys other than key {self.key}")
        if self.test not in CLAIM_TESTS[self.kind]:
            raise ValueError(f"test {self.test!r}: a {self.kind} claim takes {' or '.join(CLAIM_TESTS[self.kind])}")
        return self


class StudySpec(BaseModel):
    """One study file: what it reproduces, the base config, the axes swept and the seeds."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    name: str = Field(description="results go to results/<name>/")
    description: str = ""
    reference: str = Field("", description="the paper figure or table this study reproduces")
    base: dict[str, Any] | str = Field(
        default_factory=dict, description="a run config mapping, or a path relative to this file"
    )
    changes: dict[str, Any] = Field(
        default_factory=dict, alias="set", description="key.path: value changes to the base"
    )
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="key.path: [values]")
    variants: list[dict[str, Any]] | None = Field(
        None, description="explicit override mappings (non-product designs); optional 'label'"
    )
    seeds: list[StrictInt] = Field(min_length=1)
    launcher: SlurmResources = Field(
        SlurmResources(), description="SLURM resources of --launcher slurm (glow_repro/study/launchers/slurm.py)"
    )
    claims: list[ClaimSpec] = Field(default_factory=list, description="paper claims the study tests")
    max_seeds: StrictInt | None = Field(
        None, description="most seeds per variant --until-resolved trains (its --max-seeds overrides)"
    )
    spending: Literal["obrien-fleming", "pocock"] = Field(
        "obrien-fleming", description="how --until-resolved spends alpha over its looks (docs/verdicts.md)"
    )
    pilot: bool = Field(
        False, validate_default=True, description=f"a pilot: seeds {PILOT_SEEDS_START} and up; a study: below"
    )
    manipulations: list[str] = Field(
        default_factory=list,
        description="attributes (Smiling, 7-vs-1, Sneaker) whose manipulation (Glow section 5.3) the report shows",
    )

    source: str = Field(
        "<study>",
        exclude=True,
        description="the file this spec came from, for messages and resolving a relative base; "
        "set by load_study, never a key of the file",
    )

    @field_validator("source", mode="before")
    @classmethod
    def _source_is_the_file(cls, value: Any) -> Any:
        raise ValueError("not a key of a study file: a study's source is the file it is read from")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be a directory-safe name: letters, digits, '.', '_', '-'")
        return value

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            _check_axis_key(key, "grid")
            if not values:
                raise ValueError(f"axis {key} is empty; give at least one value")
            if len({_canonical(v) for v in values}) != len(values):
                raise ValueError(f"axis {key} repeats a value ({values})")
        return grid

    @field_validator("changes")
    @classmethod
    def _changes(cls, changes: dict[str, Any]) -> dict[str, Any]:
        for key in changes:
            _check_axis_key(key, "set")
        return changes

    @field_validator("variants")
    @classmethod
    def _variants(cls, variants: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if variants is None:
            return None
        if not variants:
            raise ValueError("is empty; remove it or give at least one variant")
        labels = [v["label"] for v in variants if "label" in v]
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct (got {labels})")
        for variant in variants:
            if "label" in variant and not isinstance(variant["label"], str):
                raise ValueError(f"label must be a string (got {variant['label']!r})")
            for key in variant:
                if key != "label":
                    _check_axis_key(key, "variant")
        return variants

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if any(seed < 0 or seed > MAX_SEED for seed in seeds):
            raise ValueError(f"seeds must be non-negative and at most {MAX_SEED} (got {seeds})")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct (got {seeds})")
        return seeds

    @field_validator("pilot")
    @classmethod
    def _pilot_seeds(cls, pilot: bool, info: ValidationInfo) -> bool:
        seeds = info.data.get("seeds", [])
        wrong = [seed for seed in seeds if (seed >= PILOT_SEEDS_START) != pilot]
        if wrong:
            where = f"from {PILOT_SEEDS_START} on" if pilot else f"below {PILOT_SEEDS_START}"
            raise ValueError(
                f"a {'pilot' if pilot else 'study'} takes seeds {where}, so a pilot's seeds are never judged "
                f"again by a study (docs/pilot.md); got {wrong}"
            )
        return pilot

    @field_validator("max_seeds")
    @classmethod
    def _max_seeds(cls, value: int | None, info: ValidationInfo) -> int | None:
        seeds = info.data.get("seeds", [])
        if value is not None and value < len(seeds):
            raise ValueError(f"must be at least the {len(seeds)} seeds listed (got {value})")
        return value


def swept_values(spec: StudySpec) -> dict[str, list[Any]]:
    """Each swept key (grid axes, then variant keys) -> its values, in file order."""
    axes: dict[str, list[Any]] = {key: list(values) for key, values in spec.grid.items()}
    for variant in spec.variants or ():
        for key, value in variant.items():
            if key != "label" and value not in axes.setdefault(key, []):
                axes[key].append(value)
    return axes


def _check_axis_key(key: str, where: str) -> None:
    if key == "seed":
        raise ValueError(f"{where} key 'seed': list seeds under 'seeds:' instead")
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"{where} key {key!r} is not a key.path")


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: its validated config (seed set), id and swept settings."""

    run_id: str
    config: RunConfig
    seed: int
    overrides: dict[str, Any]
    variant: str


def load_study(path: str | Path) -> StudySpec:
    """Read and fully validate a study file (every run it expands to is a valid config)."""
    path = Path(path)
    raw = read_yaml(path)
    spec = validate_model(StudySpec, raw, str(path)).model_copy(update={"source": str(path)})
    spec = _resolve_base(spec)
    _check_claims(spec)
    _check_manipulations(spec, expand(spec))
    return spec


def _check_claims(spec: StudySpec) -> None:
    """Every claim orders values the study sweeps, within keys it sweeps, under a unique id."""
    axes = swept_values(spec)
    allowed = ", ".join(axes) or "none (the study sweeps nothing)"
    seen: set[str] = set()
    for index, claim in enumerate(spec.claims):
        where = f"{spec.source}: claims.{index}"
        if claim.id in seen:
            raise ConfigError(f"{where}.id: {claim.id} is used by an earlier claim; ids must be distinct")
        seen.add(claim.id)
        for field, key in [("key", claim.key), *(("within", key) for key in claim.within)]:
            if key not in axes:
                raise ConfigError(f"{where}.{field}: {key} is not swept; swept keys: {allowed}")
        grid = [format_value(value) for value in axes[claim.key]]
        for value in claim.order:
            if format_value(value) not in grid:
                raise ConfigError(
                    f"{where}.order: {format_value(value)} is not a value of {claim.key}; allowed: {', '.join(grid)}"
                )


def _check_manipulations(spec: StudySpec, runs: list[RunSpec]) -> None:
    """Every requested attribute exists in the data of every run, once."""
    datas = {_canonical(run.config.data.model_dump(mode="json")): run.config.data for run in runs}
    for index, attribute in enumerate(spec.manipulations):
        where = f"{spec.source}: manipulations.{index}"
        if attribute in spec.manipulations[:index]:
            raise ConfigError(f"{where}: {attribute} is listed twice; list each attribute once")
        for data in datas.values():
            try:
                dataset_attribute(attribute, data)
            except UserFacingError as err:
                raise ConfigError(f"{where}: {err}") from None


def _resolve_base(spec: StudySpec) -> StudySpec:
    """Inline a ``base: path.yaml`` (relative to the study file) as a mapping and apply the
    study's ``set:`` changes to it."""
    if isinstance(spec.base, dict) and not spec.changes:
        return spec
    return spec.model_copy(update={"base": _base_mapping(spec), "changes": {}})


def _base_mapping(spec: StudySpec) -> dict[str, Any]:
    """The run config a study starts from: its ``base:`` mapping, or the file it names read,
    with the study's ``set:`` changes applied."""
    raw = spec.base
    if not isinstance(raw, dict):
        base_path = Path(spec.source).parent / raw
        if not base_path.is_file():
            raise ConfigError(f"{spec.source}: base: no such file {base_path}")
        raw = read_yaml(base_path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{base_path}: expected a run config mapping (data/model/train)")
    swept = _swept_keys(spec)
    for key, value in spec.changes.items():
        if key in swept:
            raise ConfigError(
                f"{spec.source}: set.{key}: {key} is swept; set it in the grid or the variants, or drop it from set:"
            )
        try:
            raw = set_path(raw, key, value)
        except ConfigError as err:
            raise ConfigError(f"{spec.source}: set.{key}: {err}") from None
    return raw


def _swept_keys(spec: StudySpec) -> set[str]:
    return set(spec.grid) | {key for variant in spec.variants or () for key in variant if key != "label"}


def with_overrides(spec: StudySpec, overrides: list[str] | tuple[str, ...]) -> StudySpec:
    """The spec with ``--set key.path=value`` applied to its base (never to a swept key)."""
    if not overrides:
        return spec
    spec = _resolve_base(spec)
    swept = _swept_keys(spec)
    for text in overrides:
        key, _ = parse_override(text)
        if key in swept or key == "seed":
            raise ConfigError(
                f"--set {text}: {key} is swept by {spec.source}; use --only {key}=VALUE to select runs instead"
            )
    updated = spec.model_copy(update={"base": apply_overrides(_base_mapping(spec), overrides)})
    _check_manipulations(updated, expand(updated))
    return updated


def expand(spec: StudySpec) -> list[RunSpec]:
    """One RunSpec per (variant, grid point, seed), in file order; raises ConfigError on any
    invalid combination, naming the study file and the swept settings."""
    spec = _resolve_base(spec)
    variants = spec.variants or [{}]
    axes = list(spec.grid)
    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    for variant in variants:
        label = variant.get("label")
        fixed = {k: v for k, v in variant.items() if k != "label"}
        clash = sorted(set(fixed) & set(axes))
        if clash:
            raise ConfigError(f"{spec.source}: variant and grid both set {', '.join(clash)}")
        for point in itertools.product(*(spec.grid[key] for key in axes)):
            for seed in spec.seeds:
                run = _make_run(spec, fixed, dict(zip(axes, point)), seed, label)
                if run.run_id in seen:
                    raise ConfigError(
                        f"{spec.source}: variants {seen[run.run_id]!r} and {run.variant!r} "
                        "give the same config; make them differ or drop one"
                    )
                seen[run.run_id] = run.variant
                runs.append(run)
    return runs


def _make_run(spec: StudySpec, fixed: dict[str, Any], point: dict[str, Any], seed: int, label: str | None) -> RunSpec:
    """Validate one run; a variant's ``label`` stands for its own settings in names."""
    assert isinstance(spec.base, dict)
    swept = {**fixed, **point}
    where = f"{spec.source} ({', '.join(f'{k}={v!r}' for k, v in swept.items()) or 'base'})"
    raw = spec.base
    try:
        for key, value in swept.items():
            raw = set_path(raw, key, value)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    config: RunConfig = validate_model(RunConfig, set_path(raw, "seed", seed), where)
    resolved = config.to_dict()
    overrides = {key: _lookup(resolved, key) for key in swept}
    named = {key: overrides[key] for key in (point if label else swept)}
    return RunSpec(
        run_id=_run_id(resolved, named, seed, label),
        config=config,
        seed=seed,
        overrides=overrides,
        variant=variant_name(named, label),
    )


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _run_id(resolved: dict[str, Any], named: dict[str, Any], seed: int, label: str | None) -> str:
    """Readable prefix (label, then the named settings sorted by key so that reordering the
    YAML keeps ids) + the first 8 hex digits of sha256 over the canonical resolved config."""
    digest = hashlib.sha256(_canonical(run_identity(resolved)).encode()).hexdigest()[:8]
    words = [label] if label else []
    words += [v if isinstance(v, str) else f"{k.rsplit('.', 1)[-1]}{format_value(v)}" for k, v in sorted(named.items())]
    prefix = _UNSAFE.sub("_", "-".join(words)).strip("_-.")[:40]
    return "-".join(part for part in (prefix, f"s{seed}", digest) if part)


def spec_hash(spec: StudySpec) -> str:
    """What makes two spec files one study: the resolved configs of its variants (their run
    identities without the seed), as 16 hex digits of sha256. Seeds, labels, claims, texts
    and launcher settings are left out, so adding seeds keeps a study's hash."""
    variants = sorted(
        {
            _canonical({key: value for key, value in run_identity(run.config).items() if key != "seed"})
            for run in expand(spec)
        }
    )
    return hashlib.sha256("\n".join(variants).encode()).hexdigest()[:16]


def spec_yaml(spec: StudySpec) -> str:
    """Self-contained YAML of a spec (base inlined, ``set:`` and ``--set`` applied) under the original
    file's header comment, so ``load_study`` of it expands to the same runs."""
    spec = _resolve_base(spec)
    try:
        lines = Path(spec.source).read_text().splitlines()
    except OSError:
        lines = []
    note = "# Resolved copy of "
    header = [
        line for line in itertools.takewhile(lambda line: line.startswith("#"), lines) if not line.startswith(note)
    ]
    header.append(f"{note}{spec.source} written by `glow-repro run`: base inlined.")
    unset = {"changes"} | (set() if spec.manipulations else {"manipulations"})  # as studies before the key
    body = yaml.safe_dump(spec.model_dump(mode="json", exclude=unset), sort_keys=False)
    return "\n".join(header) + "\n" + body
