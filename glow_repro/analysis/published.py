"""Published bpd numbers and the paper-vs-official-code choices, as data.

Every published number we compare with lives here once, with its source and the data
pipeline it was measured on (dataset, image size, channels, n_bits, split), so that
:func:`compare` can say whether one of our runs is comparable with it and, if not, why.
The fidelity table (:data:`FIDELITY`) is rendered into ``docs/fidelity.md`` and into every
report by :func:`fidelity_table` / :func:`fidelity_markdown`; our defaults in it are read
from :class:`glow_repro.core.config.RunConfig`, so the table cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from glow_repro.core.config import DataConfig, RunConfig, validate_model
from glow_repro.core.registry import DATASETS
from glow_repro.run.rundir import RunState

GLOW = "Kingma & Dhariwal 2018 (arXiv:1807.03039)"
GLOW_TABLE2 = f"{GLOW}, Table 2"
REALNVP_TABLE1 = "Dinh et al. 2017 (RealNVP), Table 1"


@dataclass(frozen=True)
class Published:
    """One published bpd, with the pipeline it was measured on and where it comes from."""

    dataset: str
    model: str
    bpd: float
    split: str
    image_size: int | None
    channels: int | None
    n_bits: int
    source: str
    note: str = ""
    kind: str = "paper"  # paper | reproduction
    verified: bool = True
    approximate: bool = False


def _table2(dataset: str, realnvp: float, glow: float, size: int, split: str, note: str) -> list[Published]:
    return [
        Published(dataset, "RealNVP", realnvp, split, size, 3, 8, GLOW_TABLE2, note),
        Published(dataset, "Glow", glow, split, size, 3, 8, GLOW_TABLE2, note),
    ]


_LSUN = "64x64 crops of 96x96 images (RealNVP protocol)"
_MNIST = "28x28x1, 8-bit, test set"
PUBLISHED: tuple[Published, ...] = (
    *_table2("cifar10", 3.49, 3.35, 32, "test", "32x32x3, 8-bit"),
    *_table2("imagenet32", 4.28, 4.09, 32, "validation", "downsampled ImageNet (Oord et al.)"),
    *_table2("imagenet64", 3.98, 3.81, 64, "validation", "downsampled ImageNet (Oord et al.)"),
    *_table2("lsun-bedroom", 2.72, 2.38, 64, "validation", _LSUN),
    *_table2("lsun-tower", 2.81, 2.46, 64, "validation", _LSUN),
    *_table2("lsun-church-outdoor", 3.08, 2.67, 64, "validation", _LSUN),
    Published("celeba", "RealNVP", 3.02, "validation", 64, 3, 8, REALNVP_TABLE1, "64x64"),
    Published("mnist", "RealNVP", 1.06, "test", 28, 1, 8, "Grathwohl et al. 2019 (FFJORD), Table 2", _MNIST),
    Published("mnist", "Glow", 1.05, "test", 28, 1, 8, "Grathwohl et al. 2019 (FFJORD), Table 2",
              f"{_MNIST}; Glow itself reports no MNIST number"),
    Published("mnist", "FFJORD", 0.99, "test", 28, 1, 8, "Grathwohl et al. 2019 (FFJORD), Table 2", _MNIST),
    Published("mnist", "i-ResNet", 1.05, "test", 28, 1, 8, "Chen et al. 2019 (Residual Flows)", _MNIST),
    Published("mnist", "Residual Flow", 0.97, "test", 28, 1, 8, "Chen et al. 2019 (Residual Flows)", _MNIST),
    Published("mnist", "MintNet", 0.98, "test", 28, 1, 8, "Song et al. 2019 (MintNet)", _MNIST),
    Published("fashion-mnist", "Glow", 2.9, "test", 32, None, 8,
              "Nalisnick et al. 2019, 'Do deep generative models know what they don't know?'",
              "roughly 2.9 bpd on 32x32 inputs; not verified here", verified=False, approximate=True),
    Published("cifar10", "Glow (official code, released logs)", 3.35, "test", 32, 3, 8, "openai/glow",
              "K=32, L=3, width 512, adamax; about 3.05 train bpd", kind="reproduction"),
    Published("cifar10", "y0ast/Glow-PyTorch (adamax)", 3.39, "test", 32, 3, 8, "y0ast/Glow-PyTorch README",
              "K=32, L=3, width 512, batch 64, 1 GPU", kind="reproduction"),
    Published("cifar10", "y0ast/Glow-PyTorch (adam)", 3.48, "test", 32, 3, 8, "y0ast/Glow-PyTorch README",
              "K=32, L=3, width 512, batch 64, 1 GPU", kind="reproduction"),
    Published("cifar10", "chrischute/glow", 3.49, "validation", 32, 3, 8, "chrischute/glow README",
              "reported as 'valid' at epoch 80; K=32, L=3, width 512", kind="reproduction"),
    Published("cifar10", "pclucas14/pytorch-glow", 3.5, "test", 32, 3, 8, "pclucas14/pytorch-glow#4",
              "'about 3.5'", kind="reproduction", approximate=True),
    Published("cifar10", "GlowTorch (KTH DD2412 report)", 3.55, "test", 32, 3, 8, "KTH DD2412 course report",
              "K=8, L=4, batch 16, Adam 1e-4, 100 epochs", kind="reproduction"),
    Published("mnist", "GlowTorch (KTH DD2412 report)", 0.56, "test", 32, 3, 8, "KTH DD2412 course report",
              "doubtful: 32x32x3 input, needed BatchNorm to avoid NaN", kind="reproduction", verified=False),
)  # fmt: skip

#: Figure 3 of the paper: CIFAR-10 test bpd per epoch, read off the plot (about +-0.005 bpd).
FIGURE3_SOURCE = f"{GLOW}, Figure 3 (digitised, about +-0.005 bpd)"
FIGURE3_SETTINGS = "CIFAR-10 32x32x3, K=32, L=3, width 512, lr 1e-3 with warmup, learned top prior, 3 seeds"
FIGURE3_PIPELINE = Published("cifar10", "Glow (Figure 3)", float("nan"), "test", 32, 3, 8, FIGURE3_SOURCE)
_FIGURE3_COLUMNS = (("additive", "reverse"), ("additive", "shuffle"), ("additive", "conv1x1"),
                    ("affine", "reverse"), ("affine", "shuffle"), ("affine", "conv1x1"))  # fmt: skip
_FIGURE3_ROWS = (
    (50, 3.69, 3.67, 3.55, 3.65, 3.61, 3.51),
    (100, 3.60, 3.57, 3.50, 3.57, 3.53, 3.46),
    (200, 3.54, 3.51, 3.46, 3.51, 3.47, 3.42),
    (400, 3.49, 3.47, 3.43, 3.46, 3.43, 3.39),
    (600, 3.47, 3.45, 3.41, 3.44, 3.41, 3.375),
    (800, 3.47, 3.44, 3.40, 3.43, 3.40, 3.365),
    (1000, 3.46, 3.43, 3.395, 3.42, 3.39, 3.36),
    (1200, 3.45, 3.42, 3.39, 3.41, 3.385, 3.357),
    (1400, 3.44, 3.42, 3.39, 3.40, 3.38, 3.354),
    (1800, 3.44, 3.415, 3.39, 3.395, 3.38, 3.35),  # the figure's last point, "about 1800"
)


def figure3_curves() -> pd.DataFrame:
    """Figure 3 as a long table: ``epoch``, ``coupling``, ``permutation``, ``test_bpd``."""
    rows = [
        {"epoch": row[0], "coupling": coupling, "permutation": permutation, "test_bpd": bpd}
        for row in _FIGURE3_ROWS
        for (coupling, permutation), bpd in zip(_FIGURE3_COLUMNS, row[1:])
    ]
    return pd.DataFrame(rows)


def figure3_at(epoch: float, coupling: str, permutation: str) -> float:
    """Figure 3's bpd at ``epoch`` (linear between digitised points); NaN outside 50..1800."""
    curve = figure3_curves().query("coupling == @coupling and permutation == @permutation")
    if curve.empty or not curve["epoch"].min() <= epoch <= curve["epoch"].max():
        return float("nan")
    return float(np.interp(epoch, curve["epoch"], curve["test_bpd"]))


# --------------------------------------------------------------------------- comparison


def _pipeline(config: pd.Series, run_id: str) -> dict[str, Any]:
    """Dataset, effective image shape, n_bits and test-set coverage of one run's config."""
    data = {k.removeprefix("data."): v for k, v in config.items()
            if k.startswith("data.") and not (isinstance(v, float) and np.isnan(v))}  # fmt: skip
    shape = validate_model(DataConfig, data, f"runs/{run_id}/config.yaml").shape
    limits = [config.get("data.test_limit"), config.get("train.eval_limit")]
    limits = [int(x) for x in limits if x is not None and not (isinstance(x, float) and np.isnan(x))]
    dataset = data.get("dataset", DataConfig().dataset)
    full = DATASETS[dataset].test_size
    subset = min(limits) if limits and (full is None or min(limits) < full) else None
    return {"dataset": dataset, "channels": shape[0],
            "image_size": shape[1], "n_bits": int(data.get("n_bits", 8)), "test_subset": subset}  # fmt: skip


def _why_not(ours: dict[str, Any], ref: Published) -> list[str]:
    reasons = []
    if ref.image_size is not None and ours["image_size"] != ref.image_size:
        reasons.append(f"image size {ours['image_size']} vs {ref.image_size}")
    if ref.channels is not None and ours["channels"] != ref.channels:
        reasons.append(f"channels {ours['channels']} vs {ref.channels}")
    if ours["n_bits"] != ref.n_bits:
        reasons.append(f"n_bits {ours['n_bits']} vs {ref.n_bits}")
    if ref.split != "test":
        reasons.append(f"published on the {ref.split} split, ours on the test split")
    if ours["test_subset"] is not None:
        reasons.append(f"ours evaluated on only {ours['test_subset']} test images")
    if not ref.verified:
        reasons.append("published value not verified")
    return reasons


def _row(variant: str, ours: dict[str, Any], stats: dict[str, float], reference: str, kind: str,
         source: str, theirs: float, reasons: list[str], note: str) -> dict[str, Any]:  # fmt: skip
    shape = f"{ours['image_size']}x{ours['image_size']}x{ours['channels']}, {ours['n_bits']}-bit"
    return {
        "variant": variant, "dataset": DATASETS[ours["dataset"]].title,
        "pipeline": shape, "n": stats["n"], "ours": stats["mean"], "ours_std": stats["std"],
        "reference": reference, "kind": kind, "theirs": theirs,
        "difference": stats["mean"] - theirs, "comparable": not reasons, "why_not": "; ".join(reasons),
        "source": source, "note": note,
    }  # fmt: skip


def compare(finals: pd.DataFrame, run_configs: pd.DataFrame) -> pd.DataFrame:
    """Our mean final test bpd per variant beside every published number for its dataset.

    ``run_configs`` is ``Tables.configs`` (one row per run, flattened config keys). A pair is
    ``comparable`` only when the pipelines match: dataset, image size, channels, n_bits and
    split (the full test set); ``why_not`` says what differs. Datasets without a verified
    published number get a row saying so. For CIFAR-10 runs of a permutation x coupling
    cell, the paper's Figure 3 value at our final epoch is added.
    """
    done = finals[finals["state"] == RunState.DONE]
    rows = []
    for variant, runs in finals.groupby("variant", sort=False):
        run_id = runs["run_id"].iloc[0]
        config = run_configs.set_index("run_id").loc[run_id]
        ours = _pipeline(config, run_id)
        values = done.loc[done["variant"] == variant, "final_test_bpd"].astype(float)
        stats = {"n": int(values.notna().sum()), "mean": values.mean(), "std": values.std(ddof=1)}
        refs = [p for p in PUBLISHED if p.dataset == ours["dataset"]]
        for ref in refs:
            note = f"{ref.note}; approximate value" if ref.approximate else ref.note
            rows.append(_row(variant, ours, stats, ref.model, ref.kind, ref.source, ref.bpd,
                             _why_not(ours, ref), note))  # fmt: skip
        if ours["dataset"] == "cifar10" and {"model.coupling", "model.permutation"} <= set(config.index):
            epoch = float(runs["final_epoch"].astype(float).mean())
            theirs = figure3_at(epoch, config["model.coupling"], config["model.permutation"])
            reasons = _why_not(ours, FIGURE3_PIPELINE)
            if np.isnan(theirs):
                reasons.append(f"ours trained {epoch:.3g} epochs; Figure 3 covers epochs 50-1800")
            rows.append(_row(variant, ours, stats, f"Glow Figure 3, {config['model.coupling']}/"
                             f"{config['model.permutation']} at epoch {epoch:.3g}", "paper", FIGURE3_SOURCE,
                             theirs, reasons, FIGURE3_SETTINGS))  # fmt: skip
        if not any(p.verified for p in refs):
            rows.append(_row(variant, ours, stats, "none", "", "", float("nan"),
                             [f"no verified published bpd for {DATASETS[ours['dataset']].title}"],
                             "unanchored: our own multi-seed results are the reference"))  # fmt: skip
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- fidelity


@dataclass(frozen=True)
class FidelityChoice:
    """A choice where the paper and the official code differ, and how we handle it."""

    choice: str
    paper: str
    official: str
    ours: str
    keys: tuple[str, ...]


FIDELITY: tuple[FidelityChoice, ...] = (
    FidelityChoice(
        "Affine coupling scale",
        "`s = exp(log s)`, `y_b = s * x_b + t` (Table 1)",
        "`scale = sigmoid(h + 2)`, applied as `(x_b + t) * scale` (model.py; openai/glow#62: "
        "without the bound training did not converge)",
        "the official bounded scale; `exp` gives the paper's `exp(h)`, composed as `(x_b + t) * s` "
        "(the same family as `s * x_b + t'`, with t' = s * t)",
        ("model.scale",),
    ),
    FidelityChoice(
        "Invertible 1x1 convolution",
        "dense `W` (log-det `h * w * log abs(det W)`, O(c^3)) or the LU form `W = P L (U + diag(s))` (section 3.2)",
        "dense `W`, random orthogonal init, `log abs(det W)` computed in float64; LU code present but off",
        "LU form (cheap log-det); `dense` gives the official form",
        ("model.conv1x1_form",),
    ),
    FidelityChoice(
        "ActNorm log-scale",
        "`y = s * x + b` with free per-channel `s`, `b` (section 3.1)",
        "log-scale parameter multiplied by 3 (`logscale_factor=3`): about 3x the effective step size under Adam(ax)",
        "the paper's plain parameter (factor 1); 3 gives the official form",
        ("model.actnorm_logscale_factor",),
    ),
    FidelityChoice(
        "Zero-initialised last convolution",
        "the last convolution of each coupling NN starts at zero (section 3.3)",
        "`conv2d_zeros`: zero-init weights and output multiplied by `exp(3 * logs)`, `logs` zero-init",
        "the official factor 3",
        ("model.zero_conv_logscale_factor",),
    ),
    FidelityChoice(
        "Coupling network",
        "3x3 conv -> ReLU -> 1x1 conv -> ReLU -> zero-init 3x3 conv (section 3.3)",
        "the same, with ActNorm instead of a bias after the first two convolutions",
        "the official ActNorm",
        ("model.coupling_actnorm",),
    ),
    FidelityChoice(
        "Coupling type",
        "additive and affine compared (Figure 3)",
        "train.py default additive (`--flow_coupling 0`); the README's quantitative commands pass affine",
        "affine",
        ("model.coupling",),
    ),
    FidelityChoice(
        "Learned top prior",
        "used in the Figure 3 ablation",
        "off unless `--learntop` (the README's commands all pass it)",
        "learned",
        ("model.learn_top",),
    ),
    FidelityChoice(
        "Preprocessing and objective",
        "dequantise with uniform noise; the objective includes the constant `-M log a` (section 2)",
        "`x / 2^n_bits - 0.5 + U(0, 1/2^n_bits)`; objective includes `-D log(2^n_bits)`; "
        "bpd = `-objective / (D log 2)`",
        "the official pipeline, bpd computed in one place",
        ("data.n_bits",),
    ),
    FidelityChoice(
        "Optimiser and schedule",
        "learning rate 1e-3 with warmup (Figure 3 setup)",
        "adamax, lr 1e-3, linear warmup over 10 epochs, no decay, batch 64 per GPU",
        "Adam without warmup; `adamax` plus `warmup_steps` give the official recipe",
        ("train.optimizer", "train.lr", "train.warmup_steps", "train.batch_size"),
    ),
    FidelityChoice(
        "ActNorm data-dependent init",
        "zero mean, unit variance per channel on an initial minibatch (section 3.1)",
        "one batch of 256 images (`--n_batch_init 256`)",
        "256 images, as the official code",
        ("train.init_images",),
    ),
    FidelityChoice(
        "MNIST pipeline",
        "no MNIST experiments",
        "pads MNIST to 32x32 and tiles it to 3 channels (openai/glow#70); bpd from it is not "
        "comparable with the 28x28x1 tables",
        "native 28x28x1; `image_size: 32`, `resize: pad`, `channels: 3` give the official pipeline",
        ("data.image_size", "data.resize", "data.channels"),
    ),
    FidelityChoice(
        "Data augmentation",
        "not described",
        "Keras `width_shift_range=0.1, height_shift_range=0.1` per image (real-valued shift, "
        "interpolated, nearest fill) with `--data_augmentation_level 1`; more for level 2",
        "off; when on, whole-pixel shifts of up to 10% per image, nearest fill",
        ("train.augment_shift",),
    ),
    FidelityChoice(
        "Class conditioning",
        "not described",
        "`--ycond` (offered in the README for CIFAR-10 and ImageNet): the top prior's mean and log-scale plus `linear_zeros` of the one-hot class; the "
        "split priors ignore the class; a `linear_zeros` classifier on the spatial mean of the top "
        "latent adds `weight_y` (README 0.01, train.py default 0) times its cross-entropy in bits; "
        "test bpd is of x given its class",
        "off; `class` is the official form with weight 0.01 and unconditioned split priors "
        "(`conditional_splits: true` conditions them too); test bpd given the class, beside the "
        "marginal bpd over a uniform class prior and the classifier's accuracy",
        ("model.conditioning", "model.class_weight", "model.conditional_splits"),
    ),
)


def default_value(key: str) -> Any:
    """Our default for a dotted config key (``model.scale``), read from :class:`RunConfig`."""
    section, _, name = key.partition(".")
    return RunConfig.model_fields[section].default.model_dump(mode="json")[name]


def fidelity_table() -> pd.DataFrame:
    """:data:`FIDELITY` with our current defaults: one row per choice; the last column names
    the config keys that switch it and their default values."""
    rows = []
    for item in FIDELITY:
        defaults = ", ".join(f"`{k}: {_yaml_value(default_value(k))}`" for k in item.keys)
        rows.append({"choice": item.choice, "paper": item.paper, "official code": item.official,
                     "ours (default)": item.ours, "config key: default": defaults})  # fmt: skip
    return pd.DataFrame(rows)


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


FIDELITY_HEADER = """\
# Fidelity: paper vs official code vs glow-repro

Where the Glow paper (Kingma & Dhariwal 2018, arXiv:1807.03039) and the official code
(github.com/openai/glow) differ, this table says what each does, what glow-repro does by
default, and the config key that switches it. Every report carries the same table.

<!-- Generated from glow_repro/analysis/published.py (FIDELITY); do not edit by hand. Regenerate:
     python -c "from glow_repro.analysis.published import fidelity_markdown as f; print(f(), end='')" > docs/fidelity.md -->

"""


def fidelity_markdown() -> str:
    """The text of ``docs/fidelity.md``."""
    return FIDELITY_HEADER + fidelity_table().to_markdown(index=False) + "\n"
