"""Published numbers as data, the comparability rules of `compare`, and the fidelity doc."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from glow_repro.analysis.published import (
    FIDELITY,
    PUBLISHED,
    compare,
    default_value,
    fidelity_markdown,
    figure3_at,
    figure3_curves,
)
from glow_repro.core.config import RunConfig, validate_model
from glow_repro.study.tables import flatten

REPO = Path(__file__).resolve().parents[1]


def study(
    data: dict, bpd: list[float], epoch: float = 4.0, model: dict | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """finals and configs of one variant with one run per bpd value."""
    configs, finals = [], []
    for seed, value in enumerate(bpd):
        raw = {"data": data, "model": {"levels": 2, **(model or {})}, "seed": seed}
        config = validate_model(RunConfig, raw, "test").to_dict()
        configs.append({"run_id": f"r{seed}", **flatten(config)})
        finals.append({"run_id": f"r{seed}", "variant": "v", "seed": seed, "state": "done",
                       "final_test_bpd": value, "final_epoch": epoch})  # fmt: skip
    return pd.DataFrame(finals), pd.DataFrame(configs)


def test_published_numbers_carry_their_pipeline_and_source() -> None:
    table = pd.DataFrame([vars(p) for p in PUBLISHED])
    glow_cifar = table.query("dataset == 'cifar10' and model == 'Glow'").iloc[0]
    assert (glow_cifar["bpd"], glow_cifar["image_size"], glow_cifar["channels"]) == (3.35, 32, 3)
    assert "Table 2" in glow_cifar["source"]
    assert set(table.query("dataset == 'mnist' and kind == 'paper'")["bpd"]) == {1.06, 1.05, 0.99, 0.97, 0.98}
    assert table["source"].str.len().gt(0).all()
    assert len(table.query("kind == 'paper' and dataset != 'mnist' and dataset != 'fashion-mnist'")) == 13


def test_figure3_digitisation_shows_the_papers_claim() -> None:
    curves = figure3_curves()
    assert len(curves) == 10 * 6
    wide = curves.pivot_table(index=["epoch", "coupling"], columns="permutation", values="test_bpd")
    assert ((wide["reverse"] >= wide["shuffle"]) & (wide["shuffle"] >= wide["conv1x1"])).all()
    by_coupling = curves.pivot_table(index=["epoch", "permutation"], columns="coupling", values="test_bpd")
    assert (by_coupling["affine"] <= by_coupling["additive"]).all()
    assert figure3_at(75, "affine", "conv1x1") == pytest.approx((3.51 + 3.46) / 2)
    assert pd.isna(figure3_at(10, "affine", "conv1x1"))


def test_mnist_padded_and_tiled_is_incomparable_with_the_28x28x1_tables() -> None:
    finals, configs = study({"dataset": "mnist", "image_size": 32, "channels": 3}, [1.2, 1.3])
    rows = compare(finals, configs)
    paper = rows[rows["kind"] == "paper"]
    assert len(paper) == 6 and not paper["comparable"].any()
    assert paper["why_not"].str.contains("image size 32 vs 28").all()
    assert paper["why_not"].str.contains("channels 3 vs 1").all()
    assert rows["ours"].iloc[0] == pytest.approx(1.25) and rows["n"].iloc[0] == 2


def test_native_mnist_on_the_full_test_set_is_comparable() -> None:
    finals, configs = study({"dataset": "mnist"}, [1.1, 1.2], model={"levels": 2})
    rows = compare(finals, configs).set_index("reference")
    assert bool(rows.loc["Glow", "comparable"])
    assert rows.loc["Glow", "difference"] == pytest.approx(1.15 - 1.05)
    assert not bool(rows.loc["GlowTorch (KTH DD2412 report)", "comparable"])


def test_a_test_subset_is_not_the_published_split() -> None:
    finals, configs = study({"dataset": "mnist", "test_limit": 500}, [1.1])
    rows = compare(finals, configs)
    assert not rows["comparable"].any()
    assert rows["why_not"].str.contains("only 500 test images").all()


def test_fashion_mnist_is_reported_as_unanchored() -> None:
    finals, configs = study({"dataset": "fashion-mnist", "image_size": 32}, [2.95])
    rows = compare(finals, configs)
    assert not rows["comparable"].any()
    assert rows["why_not"].str.contains("no verified published bpd for Fashion-MNIST").any()
    assert rows["why_not"].str.contains("not verified").any()  # the Nalisnick et al. number


def test_cifar10_paper_pipeline_gets_table2_and_figure3_rows() -> None:
    finals, configs = study({"dataset": "cifar10"}, [3.5, 3.52], epoch=100.0,
                            model={"levels": 3, "permutation": "shuffle", "coupling": "additive"})  # fmt: skip
    rows = compare(finals, configs)
    glow = rows[rows["reference"] == "Glow"].iloc[0]
    assert bool(glow["comparable"]) and glow["difference"] == pytest.approx(3.51 - 3.35)
    figure3 = rows[rows["reference"].str.startswith("Glow Figure 3")].iloc[0]
    assert figure3["theirs"] == pytest.approx(3.57) and bool(figure3["comparable"])
    assert not rows[rows["reference"].str.contains("chrischute")]["comparable"].any()  # 'valid' split


def test_fidelity_keys_exist_and_the_doc_is_rendered_from_the_table() -> None:
    for item in FIDELITY:
        for key in item.keys:
            default_value(key)  # raises KeyError for a key RunConfig does not have
    assert default_value("model.scale") == RunConfig.model_fields["model"].default.scale
    doc = (REPO / "docs" / "fidelity.md").read_text()
    assert doc == fidelity_markdown(), "docs/fidelity.md is stale: regenerate it (command in its header)"
