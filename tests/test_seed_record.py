"""The seed-adding record is the protected source of the alpha a study has spent
(docs/verdicts.md, "The seed-adding record"): damage, hand edits, a changed plan, a second
judge, reruns and flags that would spend alpha twice are refused through the CLI with one
`error:` line, and nothing already written changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from glow_repro.analysis.sequential import SeedJudge
from glow_repro.cli import main
from glow_repro.run.rundir import StudyDir
from glow_repro.study.record import SeedRecord
from glow_repro.study.runner import StudyOptions, run_study
from tests.test_verdicts import claim_study, effect_train


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> tuple[Path, Path]:
    """A study with no true effect, judged look by look to its end (3 looks of 3 seeds)."""
    root = tmp_path_factory.mktemp("record")
    study, results = claim_study(root, lr=1e-3), root / "results"
    run_study(study, results, StudyOptions(launcher="inprocess", train_fn=effect_train), judge=SeedJudge(max_seeds=9))
    return study, results


def copy_of(results: Path, tmp_path: Path) -> Path:
    shutil.copytree(results, tmp_path / "results")
    return tmp_path / "results"


def one_error(result, *parts: str) -> None:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for part in parts:
        assert part in lines[0], result.output


def verdict(results: Path):
    return CliRunner().invoke(main, ["verdict", str(results)])


def rewrite(results: Path, edit) -> None:
    rows = [json.loads(line) for line in StudyDir(results).decisions.read_text().splitlines()]
    StudyDir(results).decisions.write_text("".join(json.dumps(row) + "\n" for row in edit(rows)))


def test_an_intact_record_is_judged_at_its_last_look(judged):
    _, results = judged
    assert len(SeedRecord(results).read()) >= 2
    assert verdict(results).exit_code == 0


@pytest.mark.parametrize(
    "damage, where",
    [
        (lambda text: "", "missing or empty"),
        (lambda text: None, "missing or empty"),
        (lambda text: text + '{"look": 9', "not a JSON object"),
        (lambda text: text.replace('"alpha": 0.05', '"alpha": 0.5'), "line 1: alpha 0.5, threshold"),
        (lambda text: text.replace('"alpha": 0.05', '"alpha": 0', 1), "line 1: alpha"),
        (lambda text: text.replace('"alpha": 0.05', '"alpha": -0.1', 1), "line 1: alpha"),
        (lambda text: text.replace('"alpha": 0.05', '"alpha": 2', 1), "line 1: alpha"),
        (lambda text: text.replace('"alpha": 0.05', '"alpha": NaN', 1), "line 1"),
        (lambda text: text.replace('"alpha": 0.05', '"alpha": "abc"', 1), "line 1: alpha"),
        (lambda text: text.replace('"alpha": 0.05, ', "", 1), "line 1: alpha: Field required"),
        (lambda text: text + text.splitlines()[0] + "\n", "does not follow the plan"),
    ],
    ids=["empty", "deleted", "torn", "alpha-0.5", "alpha-0", "alpha-negative", "alpha-2", "alpha-nan", "alpha-text",
         "no-alpha", "duplicated"],
)  # fmt: skip
def test_a_damaged_or_missing_record_is_an_error_not_full_alpha(judged, tmp_path, damage, where):
    _, results = judged
    results = copy_of(results, tmp_path)
    path = StudyDir(results).decisions
    text = damage(path.read_text())
    if text is None:
        path.unlink()
    else:
        path.write_text(text)
    before = sorted(p.name for p in results.rglob("*"))
    for command in (["verdict", str(results)], ["report", str(results), "--out", str(tmp_path / "report")]):
        one_error(CliRunner().invoke(main, command), "decisions.jsonl", where)
    assert sorted(p.name for p in results.rglob("*")) == before


def test_a_rerun_adds_no_look_and_a_new_plan_is_refused(judged, tmp_path):
    study, results = judged
    results = copy_of(results, tmp_path)
    before = StudyDir(results).decisions.read_text()
    args = ["run", str(study), "--results", str(results), "--launcher", "inprocess", "--until-resolved"]
    again = CliRunner().invoke(main, [*args, "--max-seeds", "9"])
    assert again.exit_code == 0, again.output
    bigger = CliRunner().invoke(main, [*args, "--max-seeds", "12"])
    one_error(bigger, "decisions.jsonl: its looks were planned as", "A plan cannot change after a look")
    assert StudyDir(results).decisions.read_text() == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--until-resolved", "--only", "seed=0"], "--only cannot be combined with --until-resolved"),
        (["--max-seeds", "9"], "--max-seeds only applies with --until-resolved"),
        (["--until-resolved", "--max-seeds", "100000"], "100000 is not in the range"),
    ],
)
def test_flags_that_would_log_looks_that_never_happened_are_refused(tmp_path, extra, message):
    study = claim_study(tmp_path, lr=1e-3)
    result = CliRunner().invoke(main, ["run", str(study), "--results", str(tmp_path / "r"), "--launcher",
                                       "inprocess", *extra])  # fmt: skip
    assert result.exit_code != 0 and message in result.output, result.output
    assert not StudyDir(tmp_path / "r").decisions.exists()


def test_a_second_judge_on_the_same_study_is_refused(tmp_path):
    study, results = claim_study(tmp_path, lr=1e-3), tmp_path / "results"
    with SeedRecord(results).writer():  # another `run --until-resolved` holds the record
        result = CliRunner().invoke(main, ["run", str(study), "--results", str(results), "--launcher", "inprocess",
                                           "--until-resolved"])  # fmt: skip
    one_error(result, "another `glow-repro run --until-resolved` is deciding on this study")
    assert not StudyDir(results).decisions.exists()
