"""Load a results directory into long pandas tables (docs/architecture.md).

``load_tables(results/<study>)`` reads every ``runs/<run_id>/`` written by the runner and
``train()`` (layout in :mod:`glow_repro.run.rundir`) into four long DataFrames:

``steps``   one row per logged training step (``metrics.jsonl``)
``evals``   one row per test evaluation (``evals.jsonl``; step 0 is before training)
``finals``  one row per run: ``summary.json``, ``state``/``error`` from ``status.json``,
            ``n_events_<kind>`` counts and ``env_<key>`` from ``environment.json``
``events``  one row per stability event (``events.jsonl``)

Every table starts with ``run_id``, ``variant``, ``seed`` and one column per *swept* setting:
the flattened config keys (``model.permutation``) whose values differ across runs or that the
study's grid or variants set (so a half-finished study names its variants as the finished one
will), except the seed and execution-only keys (:data:`NOT_SWEPT`). ``variant`` names those values
(``permutation=conv1x1, coupling=affine``) by :func:`glow_repro.study.labels.variant_name`, the
rule ``glow-repro status`` shows too: a run of a labelled variant of the study is named by its
label instead of the settings the label stands for (``wide, coupling=affine``). Rows are ordered by the study's grid order (from
``study.yaml``), then seed, so ``groupby(..., sort=False)`` keeps the grid order.

``glow-repro run`` writes them (:func:`write_tables`) to ``results/<study>/tables/`` when a
study ends; ``glow-repro report`` writes them beside the report. This module never imports
torch: a report can be rebuilt on a laptop.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from glow_repro.core.config import EXECUTION_ONLY_KEYS, read_yaml
from glow_repro.errors import ResultsDirError
from glow_repro.run.rundir import (
    RunDir,
    RunState,
    StudyDir,
    UnreadableFileError,
    atomic_write_bytes,
    atomic_write_text,
    read_json,
)
from glow_repro.study.labels import format_value, table_cell, variant_name
from glow_repro.study.spec import load_study

#: Keys that may differ between runs without making a variant (seed is its own column).
NOT_SWEPT = ("seed", *EXECUTION_ONLY_KEYS)

ID_COLUMNS = ("run_id", "variant", "seed")
STEP_COLUMNS = ("step", "train_bpd", "lr", "grad_norm", "step_time", "images_per_s", "wall_time", "epoch")
EVAL_COLUMNS = ("step", "test_bpd", "n_images", "wall_time", "epoch")
EVENT_COLUMNS = ("step", "kind", "value", "threshold", "layer", "lr", "time")
SUMMARY_COLUMNS = (
    "final_test_bpd", "best_test_bpd", "initial_test_bpd", "wall_time", "n_params", "diverged",
    "first_nonfinite_step", "reconstruction_error", "images_per_s",
)  # fmt: skip


@dataclass
class Tables:
    """The four long tables of one study, plus what is needed to describe it."""

    steps: pd.DataFrame
    evals: pd.DataFrame
    finals: pd.DataFrame
    events: pd.DataFrame
    configs: pd.DataFrame
    """One row per run: ``run_id``, ``variant``, ``seed`` and every flattened config key."""
    swept: list[str] = field(default_factory=list)
    """Swept config keys, in grid order; each is a column of every table."""
    study: dict[str, Any] = field(default_factory=dict)
    """The parsed ``study.yaml`` (empty when the directory has none)."""
    left_out: dict[str, str] = field(default_factory=dict)
    """Runs that started but that the tables leave out, or whose result they blank, each with
    why (:func:`left_out_runs`); the commands print them as warnings."""

    @property
    def name(self) -> str:
        return str(self.study.get("name") or "study")

    def only_seeds(self, seeds: Sequence[int]) -> Tables:
        """The same tables restricted to runs of ``seeds`` (the seeds a look judged)."""
        keep = {name: frame[frame["seed"].isin(list(seeds))] if "seed" in frame else frame
                for name, frame in (("steps", self.steps), ("evals", self.evals), ("finals", self.finals),
                                    ("events", self.events), ("configs", self.configs))}  # fmt: skip
        return dataclasses.replace(self, **keep)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"depth": 8}}`` -> ``{"model.depth": 8}``; lists become JSON text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = table_cell(value)
    return flat


#: summary.json fields that must be numbers (or null) for a run's result to count.
NUMERIC_SUMMARY = ("final_test_bpd", "best_test_bpd", "initial_test_bpd", "wall_time")


def _why_left_out(run: RunDir) -> str | None:
    """Why the tables leave out a run that trained (it has logs, a checkpoint or a summary), or
    blank its result; None when they take it as it is."""
    if not run.config.is_file():
        trained = any(path.exists() for path in (run.metrics.path, run.evals.path, run.checkpoint, run.summary_file))
        return "its config.yaml is gone, so it is in no table (restore it from a backup)" if trained else None
    try:
        summary = run.summary()
    except UnreadableFileError as err:
        return str(err)
    for key in NUMERIC_SUMMARY:
        value = summary.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"summary.json holds {key}: {value!r}, not a number, so its result is left out (train it again)"
    return None


def left_out_runs(results_dir: str | Path) -> dict[str, str]:
    """Every run of ``results_dir`` that the tables leave out or whose result they blank, with why."""
    return {run.path.name: why for run in StudyDir(results_dir).run_dirs() if (why := _why_left_out(run))}


def _require_results_dir(results_dir: Path) -> list[Path]:
    if not results_dir.is_dir():
        raise ResultsDirError(
            f"{results_dir}: no such directory; expected results/<study> as written by `glow-repro run STUDY.yaml`"
        )
    study = StudyDir(results_dir)
    if not study.runs.is_dir():
        raise ResultsDirError(
            f"{results_dir}: not a results directory (no runs/ folder); "
            "expected results/<study> as written by `glow-repro run STUDY.yaml`"
        )
    run_dirs = [run.path for run in study.run_dirs() if run.config.is_file()]
    if not run_dirs:
        raise ResultsDirError(f"{results_dir}: no runs yet (no runs/*/config.yaml); start them with `glow-repro run`")
    return run_dirs


def _grid_orders(study: dict[str, Any]) -> dict[str, list[str]]:
    """Each axis of the study's grid/variants -> its values' labels in the order written."""
    orders: dict[str, list[str]] = {}
    grid = study.get("grid")
    for key, values in flatten_axes(grid if isinstance(grid, dict) else {}).items():
        orders.setdefault(key, []).extend(format_value(table_cell(v)) for v in values)
    for variant in _study_variants(study):
        if isinstance(variant, dict):
            for key, value in flatten(variant).items():
                orders.setdefault(key, []).append(format_value(value))
    return orders


def flatten_axes(grid: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """Grid axes written nested or dotted -> ``{dotted key: [values]}``."""
    axes: dict[str, list[Any]] = {}
    for key, value in grid.items():
        if isinstance(value, dict):
            axes.update(flatten_axes(value, f"{prefix}{key}."))
        else:
            axes[f"{prefix}{key}"] = list(value) if isinstance(value, (list, tuple)) else [value]
    return axes


def _study_variants(study: dict[str, Any]) -> list[Any]:
    """The ``variants:`` list of a study file, empty when it has none."""
    variants = study.get("variants")
    return variants if isinstance(variants, list) else []


def _labelled_variants(study: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """The study's labelled variants: ``(label, {dotted key: value text})``, most specific
    (most settings) first, so a run takes the label of the variant that fixes the most of
    its settings."""
    labelled = [
        (str(v["label"]), {k: format_value(x) for k, x in flatten(v).items() if k != "label"})
        for v in _study_variants(study)
        if isinstance(v, dict) and v.get("label")
    ]
    return sorted(labelled, key=lambda item: -len(item[1]))


def _variant_names(configs: pd.DataFrame, swept: list[str], study: dict[str, Any]) -> pd.Series:
    """Each run's variant name: the label of the study variant whose settings it has (if
    any), then its values of the swept keys that label does not stand for."""
    labelled = _labelled_variants(study)

    def name(row: pd.Series) -> str:
        label, fixed = next(
            ((label, fixed) for label, fixed in labelled
             if all(k in row and format_value(row[k]) == text for k, text in fixed.items())),
            (None, {}),
        )  # fmt: skip
        return variant_name({k: row[k] for k in swept if k not in fixed}, label)

    return configs.apply(name, axis=1)


def varying_keys(configs: pd.DataFrame) -> list[str]:
    """Config columns whose values are not all equal (missing counts as a value)."""
    keys = [c for c in configs.columns if c not in ("run_id", "variant")]
    return [k for k in keys if configs[k].map(format_value).nunique(dropna=False) > 1]


def _sort_columns(values: pd.Series, order: list[str]) -> list[pd.Series]:
    """Sort keys for one swept column: grid order first, then numbers, then text."""
    labels = values.map(format_value)
    rank = labels.map(lambda label: order.index(label) if label in order else len(order))
    return [rank, pd.to_numeric(values, errors="coerce"), labels]


def _read_study(results_dir: Path) -> dict[str, Any]:
    """The parsed ``study.yaml``, validated as a study file is (a claim edited to a value the
    study does not sweep is a one-line error); ``{}`` without one."""
    study_file = StudyDir(results_dir).study_file
    if study_file.is_file():
        load_study(study_file)
    study = read_yaml(study_file) if study_file.is_file() else {}
    study = study if isinstance(study, dict) else {}
    study.setdefault("name", results_dir.name)
    return study


def _read_configs(run_dirs: list[Path], study: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """One row per run with every flattened config key, sorted by grid order then seed."""
    configs = pd.DataFrame([{"run_id": d.name, **flatten(read_yaml(d / "config.yaml"))} for d in run_dirs])
    if "seed" not in configs:
        configs["seed"] = 0
    orders = _grid_orders(study)
    grid_keys = list(orders)
    swept = [k for k in varying_keys(configs) if k not in NOT_SWEPT]
    # a half-finished study: a key it sweeps may have runs of one value only so far
    swept += [k for k in grid_keys if k in configs and k not in swept and k not in NOT_SWEPT]
    swept.sort(key=lambda k: (grid_keys.index(k) if k in grid_keys else len(grid_keys), k))
    configs["variant"] = _variant_names(configs, swept, study)
    keys = [c for k in swept for c in _sort_columns(configs[k], orders.get(k, []))]
    order = pd.concat([*keys, configs["seed"], configs["run_id"]], axis=1, ignore_index=True)
    configs = configs.loc[order.sort_values(list(order.columns), na_position="last").index]
    front = [*ID_COLUMNS, *swept]
    rest = [c for c in configs.columns if c not in front]
    return configs[front + rest].reset_index(drop=True), swept


def _long(rows_by_run: dict[str, list[dict[str, Any]]], ids: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Stack per-run rows under their id columns, keeping the runs' order."""
    frames = [pd.DataFrame(rows).assign(run_id=run_id) for run_id, rows in rows_by_run.items() if rows]
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id"])
    for column in columns:
        if column not in data:
            data[column] = pd.Series(dtype=float)
    extra = [c for c in data.columns if c not in columns and c != "run_id"]
    out = ids.merge(data[["run_id", *columns, *extra]], on="run_id", how="inner", sort=False)
    return out.reset_index(drop=True)


def _status(run: RunDir) -> dict[str, Any]:
    """The run's status; ``unreadable`` (not ``pending``) when its status file exists but
    cannot be read, so the report can say why it left the run out."""
    status = run.status()
    if status["state"] == RunState.UNREADABLE:
        return {**status, "error": f"{run.status_file.name} could not be read"}
    return {**status, "state": run.observed_state()}


def _final_row(
    run: RunDir, evals: list[dict[str, Any]], steps: list[dict[str, Any]], events: list[dict[str, Any]]
) -> dict[str, Any]:
    status = _status(run)
    summary = run.summary()
    row: dict[str, Any] = {
        "state": status.get("state", RunState.PENDING.value),
        "step": status.get("step"),
        "error": status.get("error"),
    }
    for key in SUMMARY_COLUMNS:
        row[key] = summary.get(key)
    row.update({k: v for k, v in summary.items() if k not in row and k != "state"})
    if _why_left_out(run):  # a result that is not a number is no result
        row.update(dict.fromkeys(NUMERIC_SUMMARY))
    if row["diverged"] is None:
        row["diverged"] = row["state"] == RunState.DIVERGED
    if row["wall_time"] is None and steps:
        row["wall_time"] = steps[-1].get("wall_time")
    row["final_epoch"] = evals[-1].get("epoch") if evals else None
    for kind in sorted({str(e.get("kind")) for e in events}):
        row[f"n_events_{kind}"] = sum(1 for e in events if str(e.get("kind")) == kind)
    environment = read_json(run.environment, default={}, expect=dict)
    row.update({f"env_{key}": value for key, value in environment.items()})
    return row


def load_tables(results_dir: str | Path) -> Tables:
    """Read ``results/<study>/`` into :class:`Tables`; a clear error if it is not one."""
    results_dir = Path(results_dir)
    run_dirs = _require_results_dir(results_dir)
    study = _read_study(results_dir)
    configs, swept = _read_configs(run_dirs, study)
    ids = configs[[*ID_COLUMNS, *swept]]

    steps, evals, events, finals = {}, {}, {}, []
    for run_id in tqdm(ids["run_id"], desc="loading runs", unit="run", disable=None, leave=False):
        run = StudyDir(results_dir).run(run_id)
        steps[run_id] = run.metrics.read()
        evals[run_id] = run.evals.read()
        events[run_id] = run.events.read()
        finals.append({"run_id": run_id, **_final_row(run, evals[run_id], steps[run_id], events[run_id])})

    finals_df = ids.merge(pd.DataFrame(finals), on="run_id", sort=False)
    count_columns = [c for c in finals_df.columns if c.startswith("n_events_")]
    finals_df[count_columns] = finals_df[count_columns].fillna(0).astype(int)
    return Tables(
        steps=_long(steps, ids, STEP_COLUMNS),
        evals=_long(evals, ids, EVAL_COLUMNS),
        finals=finals_df,
        events=_long(events, ids, EVENT_COLUMNS),
        configs=configs,
        swept=swept,
        study=study,
        left_out=left_out_runs(results_dir),
    )


def write_tables(tables: Tables, out_dir: str | Path) -> list[Path]:
    """Write each table as ``<name>.parquet`` and ``<name>.csv`` under ``out_dir``."""
    return [
        path
        for name in ("steps", "evals", "finals", "events", "configs")
        for path in write_frame(getattr(tables, name), out_dir, name)
    ]


def write_frame(frame: pd.DataFrame, out_dir: str | Path, name: str) -> list[Path]:
    """Write one table as ``<name>.parquet`` and ``<name>.csv`` under ``out_dir``, each file
    atomically (a reader never sees half a table)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parquet = frame.copy()
    for column in [c for c in parquet.columns if pd.api.types.is_object_dtype(parquet[c])]:
        parquet[column] = parquet[column].map(lambda v: None if v is None else str(v))
    buffer = io.BytesIO()
    parquet.to_parquet(buffer, index=False)
    atomic_write_bytes(out_dir / f"{name}.parquet", buffer.getvalue())
    atomic_write_text(out_dir / f"{name}.csv", frame.to_csv(index=False))
    return [out_dir / f"{name}.parquet", out_dir / f"{name}.csv"]


def config_differences(results_dir: str | Path) -> pd.DataFrame:
    """The resolved configs' differences: one row per key whose value differs across runs.

    Columns: ``key``, ``values`` (the distinct values, in the study's order), ``swept``
    (whether the key defines variants, or only varies like the seed or thread count).
    """
    results_dir = Path(results_dir)
    configs, swept = _read_configs(_require_results_dir(results_dir), _read_study(results_dir))
    return describe_differences(configs, swept)


def describe_differences(configs: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """Rows of :func:`config_differences` from an already loaded ``configs`` table."""
    rows = []
    for key in varying_keys(configs):
        labels = list(dict.fromkeys(configs[key].map(format_value)))
        rows.append({"key": key, "values": ", ".join(labels), "swept": key in swept})
    return pd.DataFrame(rows, columns=["key", "values", "swept"])


def shared_settings(configs: pd.DataFrame) -> pd.DataFrame:
    """Config keys with one value across all runs: ``key``, ``value``."""
    varying = set(varying_keys(configs))
    keys = [c for c in configs.columns if c not in (*ID_COLUMNS, *varying)]
    first = configs.iloc[0]
    return pd.DataFrame({"key": keys, "value": [format_value(first[k]) for k in keys]})
