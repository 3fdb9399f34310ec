"""The report's figures as records (docs/architecture.md): each :class:`FigureRecord` says
what the figure is called, where in the report it goes, when it applies to a study, how to
draw it and its caption. The report draws every record in :data:`FIGURES` that applies, so a
new figure is a drawing function and one :func:`register` call here.

Drawing functions take DataFrames and return a Figure, built with matplotlib's object API
(``Figure``, no pyplot, so no global state and no display backend) and seaborn's styles and
palettes; :func:`save_figure` writes PNG and SVG. Inputs are the aggregates of
:mod:`glow_repro.analysis.aggregate`, reached through the
:class:`~glow_repro.analysis.study_analysis.Analysis`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from glow_repro.analysis.published import FIGURE3_SOURCE, figure3_curves
from glow_repro.analysis.study_analysis import Analysis
from glow_repro.run.rundir import RunState

STYLE = "whitegrid"
PALETTE = "colorblind"


def save_figure(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``<name>.png`` (120 dpi: a 7-inch figure is about as wide as a page of text) and
    ``<name>.svg`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    fig.savefig(paths[0], dpi=120)
    fig.savefig(paths[1])
    return paths


def _colors(labels: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    labels = list(dict.fromkeys(labels))
    return dict(zip(labels, sns.color_palette(PALETTE, max(len(labels), 1))))


def _band(ax, x: pd.Series, frame: pd.DataFrame, color, label: str, linestyle: str = "-") -> None:
    ax.plot(x, frame["mean"], color=color, label=label, linestyle=linestyle, marker="o", markersize=3)
    ax.fill_between(x, frame["ci_low"], frame["ci_high"], color=color, alpha=0.2, linewidth=0)


def test_bpd_curves(
    curves: pd.DataFrame,
    facet: str | None = None,
    line: str = "variant",
    x: str = "step",
    paper: pd.DataFrame | None = None,
) -> Figure:
    """Figure 3 style: test bpd against ``x`` (step or epoch), one panel per ``facet`` value
    (e.g. ``model.coupling``), one line per ``line`` value (e.g. ``model.permutation``), with a
    band for the 95 % CI over seeds. The step-0 evaluation (before training) is left out.

    ``paper``: the digitised Figure 3 (``figure3_curves()``), drawn dashed in the same colours
    and labelled as the paper's; it needs ``x="epoch"`` and ``facet="model.coupling"``,
    ``line="model.permutation"``.
    """
    curves = curves[curves["step"] > 0]
    panels = list(dict.fromkeys(curves[facet])) if facet else [None]
    colors = _colors(curves[line].astype(str))
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, squeeze=False)[0])
    for ax, panel in zip(axes, panels):
        part = curves if panel is None else curves[curves[facet] == panel]
        for label, frame in part.groupby(line, sort=False):
            _band(ax, frame[x], frame, colors[str(label)], f"{label} (ours)" if paper is not None else str(label))
        if paper is not None:
            theirs = paper[paper["coupling"] == panel]
            for label, frame in theirs.groupby("permutation", sort=False):
                ax.plot(frame["epoch"], frame["test_bpd"], color=colors.get(str(label), "gray"),
                        linestyle="--", label=f"{label} (paper, digitised)")  # fmt: skip
        ax.set_title(f"{facet.rsplit('.', 1)[-1]} = {panel}" if facet else "test bpd, mean over seeds")
        ax.set_xlabel("epoch" if x == "epoch" else "training step")
        ax.set_ylabel("test bits per dimension")
        ax.legend(title=line.rsplit(".", 1)[-1], fontsize="small")
    return fig


def train_bpd_curves(steps: pd.DataFrame, line: str = "variant", smooth: int | None = None) -> Figure:
    """Training bpd against step, mean over seeds per ``line`` value, smoothed by a centred
    rolling mean of ``smooth`` steps (default: 1/50 of the run); non-finite values dropped."""
    steps = steps[np.isfinite(steps["train_bpd"].astype(float))]
    mean = steps.groupby([line, "step"], sort=False)["train_bpd"].mean().reset_index()
    window = smooth or max(1, mean["step"].nunique() // 50)
    colors = _colors(mean[line].astype(str))
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(7, 4.2), layout="constrained")
        ax = fig.subplots()
    for label, frame in mean.groupby(line, sort=False):
        frame = frame.sort_values("step")
        smoothed = frame["train_bpd"].rolling(window, center=True, min_periods=1).mean()
        ax.plot(frame["step"], smoothed, color=colors[str(label)], label=str(label))
    ax.set_xlabel("training step")
    ax.set_ylabel("training bits per dimension")
    ax.set_title("training bpd, mean over seeds" + (f" (rolling mean of {window} logged steps)" if window > 1 else ""))
    ax.legend(fontsize="small")
    return fig


def final_bpd(summary: pd.DataFrame, finals: pd.DataFrame | None = None) -> Figure:
    """Final test bpd per variant: mean over finished seeds with its 95 % CI; the individual
    runs as dots when ``finals`` is given."""
    order = list(summary["variant"])
    y = np.arange(len(order))
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(7, 0.45 * len(order) + 1.4), layout="constrained")
        ax = fig.subplots()
    low = summary["final_mean"] - summary["final_ci_low"]
    high = summary["final_ci_high"] - summary["final_mean"]
    ax.errorbar(summary["final_mean"], y, xerr=[low.fillna(0), high.fillna(0)], fmt="o",
                color="black", capsize=4, label="mean, 95% CI")  # fmt: skip
    if finals is not None:
        done = finals[finals["state"] == RunState.DONE]
        runs_y = done["variant"].map({v: i for i, v in enumerate(order)})
        ax.scatter(done["final_test_bpd"], runs_y + 0.18, s=14, alpha=0.7, color="tab:blue", label="runs")
    ax.set_yticks(y, order)
    ax.invert_yaxis()
    ax.set_xlabel("final test bits per dimension (lower is better)")
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    return fig


def divergence_rates(divergence: pd.DataFrame) -> Figure:
    """Share of runs that diverged per variant, with 95 % Wilson intervals and ``k/n`` labels."""
    order = list(divergence["variant"])
    y = np.arange(len(order))
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(7, 0.45 * len(order) + 1.4), layout="constrained")
        ax = fig.subplots()
    rate = divergence["rate"].fillna(0)
    err = [(rate - divergence["ci_low"]).fillna(0), (divergence["ci_high"] - rate).fillna(0)]
    ax.barh(y, rate, xerr=err, color=sns.color_palette(PALETTE)[3], alpha=0.8, capsize=4)
    for i, row in enumerate(divergence.itertuples()):
        ax.text(1.02, i, f"{row.n_diverged}/{row.n}", va="center", fontsize="small")
    ax.set_yticks(y, order)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("diverged / (done + diverged) runs, with 95% Wilson CI")
    return fig


def depth_vs_bpd(summary: pd.DataFrame, others: Sequence[str] = ()) -> Figure:
    """Final test bpd against total flow steps (K x L) and against parameter count; needs
    columns ``model.depth``, ``model.levels``, ``n_params`` beside the summary's. One line per
    number of levels and per value of the ``others`` columns (other swept keys)."""
    data = summary.dropna(subset=["final_mean"]).copy()
    data["flow_steps"] = data["model.depth"] * data["model.levels"]
    data["line"] = data.apply(
        lambda row: ", ".join([*(f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in others), f"L={row['model.levels']}"]),
        axis=1,
    )
    colors = _colors(data["line"])
    with sns.axes_style(STYLE):
        fig = Figure(figsize=(11, 4.2), layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
    for ax, x, xlabel in ((axes[0], "flow_steps", "flow steps K x L"), (axes[1], "n_params", "parameters")):
        for label, frame in data.groupby("line", sort=False):
            frame = frame.sort_values(x)
            err = [(frame["final_mean"] - frame["final_ci_low"]).fillna(0),
                   (frame["final_ci_high"] - frame["final_mean"]).fillna(0)]  # fmt: skip
            ax.errorbar(frame[x], frame["final_mean"], yerr=err, fmt="o-", capsize=3,
                        color=colors[label], label=label)  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.legend(fontsize="small")
    if data["n_params"].max() > 10 * data["n_params"].min():
        axes[1].set_xscale("log")
    axes[0].set_ylabel("final test bits per dimension")
    return fig


# --------------------------------------------------------------------------- the records


@dataclass(frozen=True)
class FigureRecord:
    """One report figure. ``name``: its file name (``figures/<name>.png``) and HTML anchor;
    ``after``: the report section id or table name it follows (``"results"``,
    ``"final_bpd"``, ...); ``applies``: whether the study has what it shows; ``draw`` and
    ``caption``: the figure and its caption (a string, or a function of the analysis)."""

    name: str
    after: str
    applies: Callable[[Analysis], bool]
    draw: Callable[[Analysis], Figure]
    caption: str | Callable[[Analysis], str]

    def caption_for(self, a: Analysis) -> str:
        return self.caption if isinstance(self.caption, str) else self.caption(a)


#: Every figure the report may show, drawn in this order.
FIGURES: list[FigureRecord] = []


def register(record: FigureRecord) -> FigureRecord:
    """Add ``record`` to :data:`FIGURES`; names are file names, so they must be distinct."""
    if any(other.name == record.name for other in FIGURES):
        raise ValueError(f"a figure named {record.name!r} is registered already")
    FIGURES.append(record)
    return record


def is_figure3_study(a: Analysis) -> bool:
    """Permutation and coupling both swept: the design of the paper's Figure 3."""
    return {"model.permutation", "model.coupling"} <= set(a.tables.swept)


def _paper_curves(a: Analysis) -> tuple[pd.DataFrame | None, str]:
    """The digitised Figure 3 curves to overlay (a CIFAR-10 permutation x coupling study
    that reached their first epoch), cut at our last epoch, and the caption's note on them."""
    dataset = a.tables.configs["data.dataset"].iloc[0]
    if not (is_figure3_study(a) and len(a.tables.swept) == 2 and dataset == "cifar10"):
        return None, ""
    reach, paper = a.curves["epoch"].max(), figure3_curves()
    if reach < paper["epoch"].min():
        return None, f" The paper's Figure 3 starts at epoch 50; these runs stop at epoch {reach:.3g}."
    note = f" Dashed: the paper's curves, digitised ({FIGURE3_SOURCE}), up to our last epoch."
    return paper[paper["epoch"] <= reach], note


def _test_curves_caption(a: Analysis) -> str:
    caption = "Test bpd during training: mean over seeds, band = 95% CI; step-0 evaluation omitted."
    if is_figure3_study(a):
        caption = "Figure 3 style: " + caption[0].lower() + caption[1:] + " One panel per coupling."
    return caption + _paper_curves(a)[1]


def _draw_test_curves(a: Analysis) -> Figure:
    paper, _ = _paper_curves(a)
    figure3 = is_figure3_study(a)
    line = "model.permutation" if figure3 and len(a.tables.swept) == 2 else "variant"
    return test_bpd_curves(a.curves, facet="model.coupling" if figure3 else None, line=line,
                           x="epoch" if paper is not None else "step", paper=paper)  # fmt: skip


def _has_finals(a: Analysis) -> bool:
    return bool(a.summary["final_mean"].notna().any())


def _draw_depth(a: Analysis) -> Figure:
    shape = a.tables.configs.groupby("variant", sort=False)[["model.depth", "model.levels"]].first()
    extra = [c for c in ("model.depth", "model.levels") if c not in a.summary]
    depth = a.summary.merge(shape[extra], left_on="variant", right_index=True)
    return depth_vs_bpd(depth, [k for k in a.tables.swept if k not in ("model.depth", "model.levels")])


register(FigureRecord(
    "test_bpd_curves", after="results",
    applies=lambda a: bool(len(a.curves[a.curves["step"] > 0])),
    draw=_draw_test_curves, caption=_test_curves_caption,
))  # fmt: skip
register(FigureRecord(
    "final_bpd", after="final_bpd", applies=_has_finals,
    draw=lambda a: final_bpd(a.summary, a.tables.finals),
    caption="Final test bpd per variant: mean and 95% CI over finished runs; dots are runs.",
))  # fmt: skip
register(FigureRecord(
    "divergence", after="stability", applies=lambda a: True,
    draw=lambda a: divergence_rates(a.divergence),
    caption="Share of runs that diverged, per variant, with 95% Wilson intervals.",
))  # fmt: skip
register(FigureRecord(
    "depth", after="threshold",
    applies=lambda a: bool({"model.depth", "model.levels"} & set(a.tables.swept)) and _has_finals(a),
    draw=_draw_depth,
    caption="Final test bpd against total flow steps K x L and parameter count (mean, 95% CI).",
))  # fmt: skip
register(FigureRecord(
    "train_bpd_curves", after="threshold", applies=lambda a: bool(len(a.tables.steps)),
    draw=lambda a: train_bpd_curves(a.tables.steps),
    caption="Training bpd of each logged batch, mean over seeds (smoothing, if any, in the title).",
))  # fmt: skip
