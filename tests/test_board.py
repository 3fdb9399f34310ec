"""The claims board (docs/verdicts.md, "The claims board"): every claim of several studies on
one page, from synthetic claim tables with the verdict interface's columns and, end to end,
from fake results directories through ``glow-repro board``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from click.testing import CliRunner

from glow_repro.analysis.board import StudyClaims, board_html, board_markdown, board_page
from glow_repro.cli import main
from tests.test_claim_view import claim_row
from tests.test_tables import make_fake_study

COMMIT = "4ff8cb7e4c69151bec2f4437104e3ded4433c219"


def studies() -> list[StudyClaims]:
    permutation = pd.DataFrame([claim_row(), claim_row(claim="affine-beats-additive", verdict="inconclusive",
                                                       outcome="2 of 3 pairs reproduced; 1 open", seeds=4)])  # fmt: skip
    depth = pd.DataFrame([claim_row(claim="deeper-is-better", source="Glow, Table 2")])
    return [
        StudyClaims("permutation_ablation", permutation, [COMMIT + "+dirty"], "permutation_ablation/report.html"),
        StudyClaims("depth_ablation", depth, [COMMIT, "0123456789abcdef0123456789abcdef01234567"]),
        StudyClaims("scale_ablation", pd.DataFrame(), [], None, "verdicts could not be computed: bad claim"),
    ]


def test_the_board_has_a_row_per_claim_with_its_interval_at_the_decision_level():
    board = board_page(studies())
    frame = board.frame
    assert list(frame["study"]) == ["permutation_ablation"] * 2 + ["depth_ablation", "scale_ablation"]
    first = frame.iloc[0]
    assert first["weakest pair's effect [98.4 % CI]"] == "0.068 [0.040, 0.096]"
    assert first["outcome"] == "5 of 6 pairs reproduced; 1 absent (additive: shuffle < reverse)"
    assert (first["min effect"], first["seeds"], first["commit"]) == ("0.020", "8", "4ff8cb7+dirty")
    assert first["boundary"] == "O'Brien-Fleming spending, looks at 4/8/12 seeds"
    assert first["metric"] == "mean test bpd of the last 3 evaluations (steps 200, 300, 400)"
    assert frame.iloc[2]["commit"] == "4ff8cb7, 0123456"
    failed = frame.iloc[3]
    assert (failed["verdict"], failed["outcome"], failed["commit"]) == (
        "not computed",
        "verdicts could not be computed: bad claim",
        "not recorded",
    )
    assert failed["weakest pair's effect [98.4 % CI]"] == "-"
    assert board.links == ["permutation_ablation/report.html"] * 2 + [None, None]


def test_the_board_renders_to_markdown_and_html_with_relative_report_links():
    board = board_page(studies())
    markdown = board_markdown(board)
    assert markdown.startswith("# Claims board\n")
    assert markdown.count("[report](permutation_ablation/report.html)") == 2
    assert "| depth_ablation " in markdown and "seed-to-seed variation only" in markdown
    page = board_html(board)
    assert page.count('<a href="permutation_ablation/report.html">report</a>') == 2
    assert "<th>weakest pair&#x27;s effect [98.4 % CI]</th>" in page and "<code>environment.json</code>" in page
    assert "**" not in page and "<style>" in page


def results(root: Path, name: str, **claim_changes: object) -> Path:
    """A fake results directory of study ``name``; ``claim_changes`` edit its first claim
    (``claims=None`` removes them all)."""
    path = make_fake_study(root)
    study = yaml.safe_load((path / "study.yaml").read_text())
    study["name"] = name
    if claim_changes.pop("claims", True) is None:
        study.pop("claims")
    study.get("claims", [{}])[0].update(claim_changes)
    (path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_board_command_lists_every_study_links_existing_reports_and_keeps_a_failed_one(tmp_path: Path):
    out = tmp_path / "board"
    (out / "perm").mkdir(parents=True)
    (out / "perm" / "report.html").write_text("<html></html>")
    dirs = [results(tmp_path / "a", "perm"), results(tmp_path / "b", "other"),
            results(tmp_path / "c", "broken", metric="median_bpd")]  # fmt: skip
    result = CliRunner().invoke(main, ["board", *map(str, dirs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "5 claims of 3 studies" in result.output
    markdown = (out / "README.md").read_text()
    lines = [line for line in markdown.splitlines() if line.startswith("| perm ")]
    assert len(lines) == 2 and all("[report](perm/report.html)" in line for line in lines)
    assert "| other " in markdown and "other/report.html" not in markdown
    (broken,) = [line for line in markdown.splitlines() if line.startswith("| broken ")]
    assert "not computed" in broken and "verdicts could not be computed:" in broken and "median_bpd" in broken
    assert "abc1234" in markdown and (out / "index.html").is_file()


def test_board_errors_name_the_directory_and_say_what_is_expected(tmp_path: Path):
    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(main, ["board", str(missing), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(f"error: {missing}: no such directory; expected results/<study>")
    plain = results(tmp_path / "a", "plain", claims=None)
    result = CliRunner().invoke(main, ["board", str(plain), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(f"error: {plain}: its study declares no claims;")
    assert not (tmp_path / "out").exists()
