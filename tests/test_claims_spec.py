"""Claims in study files (docs/verdicts.md): validated at load time, one line per mistake,
and never part of a run's id."""

from __future__ import annotations

import re

import pytest
import yaml

from glow_repro.core.config import ConfigError
from glow_repro.study.spec import expand, load_study
from tests.test_spec import STUDIES, study, write

GRID = {"model.permutation": ["reverse", "shuffle", "conv1x1"], "model.coupling": ["additive", "affine"]}


def claim(**fields) -> dict:
    return {
        "id": "perm",
        "source": "Glow, Figure 3",
        "key": "model.permutation",
        "order": ["conv1x1", "shuffle", "reverse"],
        "within": ["model.coupling"],
        **fields,
    }


def test_a_valid_claim_loads_with_its_defaults(tmp_path):
    spec = load_study(write(tmp_path, study(grid=GRID, claims=[claim()])))
    (loaded,) = spec.claims
    assert (loaded.kind, loaded.metric, loaded.order) == ("order", "final_test_bpd", ["conv1x1", "shuffle", "reverse"])


def test_claims_do_not_change_run_ids(tmp_path):
    plain = expand(load_study(write(tmp_path, study(grid=GRID), "plain.yaml")))
    claimed = expand(load_study(write(tmp_path, study(grid=GRID, claims=[claim()]), "claimed.yaml")))
    assert [r.run_id for r in plain] == [r.run_id for r in claimed]


def test_claim_values_match_the_grid_as_written_numbers(tmp_path):
    grid = {"train.lr": [1.0e-3, "3e-3"], "model.scale": ["sigmoid", "exp"]}
    spec = study(grid=grid, claims=[claim(key="train.lr", order=["1e-3", 0.003], within=["model.scale"])])
    assert load_study(write(tmp_path, spec)).claims[0].order == ["1e-3", 0.003]


BAD = {
    "unknown claim key": (claim(wihtin=["model.coupling"]), r"claims.0.wihtin: unknown key"),
    "key not swept": (
        claim(key="model.depth"),
        r"claims.0.key: model.depth is not swept; swept keys: model.permutation, model.coupling",
    ),
    "within not swept": (claim(within=["train.lr"]), r"claims.0.within: train.lr is not swept"),
    "value not in grid": (
        claim(order=["conv1x1", "lu"]),
        r"claims.0.order: lu is not a value of model.permutation; allowed: reverse, shuffle, conv1x1",
    ),
    "value twice": (claim(order=["conv1x1", "reverse", "conv1x1"]), r"claims.0: order names conv1x1 more than once"),
    "one value": (claim(order=["conv1x1"]), r"claims.0.order: .*at least 2"),
    "within repeats key": (claim(within=["model.permutation"]), r"claims.0: within must list distinct keys"),
    "unknown metric": (claim(metric="median_bpd"), r"claims.0.metric: must be one of 'final_test_bpd'"),
    "unknown kind": (claim(kind="faster"), r"claims.0.kind: must be one of 'order' or 'divergence'"),
    "no source": ({k: v for k, v in claim().items() if k != "source"}, r"claims.0.source: Field required"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_claims_are_one_line_errors_naming_file_and_key(tmp_path, case):
    bad, pattern = BAD[case]
    path = write(tmp_path, study(grid=GRID, claims=[bad]), "bad.yaml")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert re.search(pattern, message), message


def test_max_seeds_loads_and_may_not_be_below_the_seeds_listed(tmp_path):
    assert load_study(write(tmp_path, study(grid=GRID, max_seeds=6), "ok.yaml")).max_seeds == 6
    path = write(tmp_path, study(grid=GRID, seeds=[0, 1, 2], max_seeds=2), "bad.yaml")
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}: max_seeds: must be at least the 3 seeds listed (got 2)")


def test_claim_ids_are_distinct(tmp_path):
    path = write(
        tmp_path,
        study(grid=GRID, claims=[claim(), claim(order=["affine", "additive"], key="model.coupling", within=[])]),
    )
    with pytest.raises(ConfigError, match=r"claims.1.id: perm is used by an earlier claim"):
        load_study(path)


@pytest.mark.parametrize("name", ["permutation_ablation", "scale_ablation", "depth_ablation"])
def test_shipped_studies_declare_the_papers_claims(name):
    for path in (STUDIES / f"{name}.yaml", STUDIES / "paper" / f"{name}.yaml"):
        claims = load_study(path).claims
        assert claims and all(c.source for c in claims), path
        assert yaml.safe_load(path.read_text())["claims"]
    kinds = {c.kind for c in load_study(STUDIES / f"{name}.yaml").claims}
    assert kinds == ({"divergence"} if name == "scale_ablation" else {"order"})
