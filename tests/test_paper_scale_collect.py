"""benchmarks/paper_scale/collect.py on a tiny full-scale sweep made here (seconds)."""

from __future__ import annotations

import importlib.util
import io
import json
import statistics
from pathlib import Path

import pytest

from bioplausible.experiments import presets as experiments
from bioplausible.experiments.sweep import SweepSpec, run_sweep

ROOT = Path(__file__).resolve().parents[1]

TINY = """
name: tiny-row
title: Tiny row
paper: "Nobody 2024, Table 1"
config:
  dataset: {name: mnist}
  model: {spec: "mlp:784-16-10"}
  optimizer: {name: sgd, lr: 0.1}
  epochs: 2
  batch_size: 40
  probe_every: 5
runs: {bp: {name: bp}, fa: {name: fa}}
seeds: [0, 1, 2]
scales: {quick: {epochs: 1}, full: {}}
paper_results: {metric: test_accuracy, values: {bp: PAPER_BP, fa: 5.0}, tolerance: {fa: 0.1}}
checks:
  - {type: max_gap, metric: test_accuracy, runs: [fa, bp], max: 100.0}
  - {type: paper}
"""


def _load_collect():
    spec = importlib.util.spec_from_file_location("collect", ROOT / "benchmarks" / "paper_scale" / "collect.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def row(synthetic_root, tmp_path, monkeypatch):
    """A finished full-scale sweep of a tiny preset in tmp_path/paper-scale/tiny_row, with driver files."""
    folder = tmp_path / "presets"
    folder.mkdir()
    monkeypatch.setattr(experiments, "_preset_files", lambda: sorted(folder.glob("*.yaml")))
    (folder / "tiny-row.yaml").write_text(TINY.replace("PAPER_BP", "50.0"))
    base = tmp_path / "paper-scale"
    row_dir = base / "tiny_row"
    run_sweep(SweepSpec(name="tiny-row-full", preset="tiny-row", scale="full", seeds=[0, 1, 2]), out=row_dir,
              stream=io.StringIO())
    (base / "driver.log").write_text("== other_row 2026-01-01T00:00:00Z commit 1111111\n"
                                     "== tiny_row 2026-01-01T00:00:00Z commit abc1234\n== tiny_row done\n"
                                     "== tiny_row 2026-01-02T00:00:00Z commit abc1234\n")
    (base / "tiny_row.time").write_text("sweep: 6/6 done\n\tUser time (seconds): 12.50\n\tSystem time (seconds): "
                                        "1.50\n\tElapsed (wall clock) time (h:mm:ss or m:ss): 0:15.02\n"
                                        "\tMaximum resident set size (kbytes): 204800\n\tExit status: 0\n")
    return row_dir, folder


def test_collect_writes_report_verdicts_and_the_reproduction_section(row, tmp_path):
    row_dir, folder = row
    collect = _load_collect()
    # the "paper" says what bp measured, to 0.3 point: bp is reproduced (tolerance 0.5), fa (5 %, 0.1) is not
    bp_mean = statistics.fmean(json.loads((row_dir / f"bp-seed{s}" / "summary.json").read_text())["final"]
                               ["test_accuracy"] for s in (0, 1, 2))
    (folder / "tiny-row.yaml").write_text(TINY.replace("PAPER_BP", f"{bp_mean - 0.3:.4f}"))
    md = tmp_path / "REPRODUCTION.md"
    md.write_text("# Reproduction\n\nWritten by reproduce --all.\n\n## Quick preset A\n\ntext\n")
    out = tmp_path / "results"
    assert collect.main([str(row_dir), "--out", str(out), "--reproduction", str(md)]) == 0
    report = (out / "tiny_row" / "report.md").read_text()
    data = json.loads((out / "tiny_row" / "report.json").read_text())
    accs = {lab: [json.loads((row_dir / f"{lab}-seed{s}" / "summary.json").read_text())["final"]["test_accuracy"]
                  for s in (0, 1, 2)] for lab in ("bp", "fa")}
    for lab, paper, tol, ok in (("bp", round(bp_mean - 0.3, 4), 0.5, True), ("fa", 5.0, 0.1, False)):
        mean, sd = statistics.fmean(accs[lab]), statistics.stdev(accs[lab])
        assert f"| {lab} | {mean:.2f} ± {sd:.2f} (n=3) | {paper} | {mean - paper:+.2f} | {tol} |" in report
        verdict = next(c for c in data["checks"] if c["type"] == "paper" and c["run"] == lab)
        assert verdict["passed"] == ok
        side = "above" if mean > paper else "below"
        assert (f"| {tol} | reproduced |" if ok else f"not reproduced (ours {side} by {abs(mean - paper):.2f})") in report
    assert data["tally"] == {"reproduced": 1, "not_reproduced": 1, "other": 0}
    assert "Verdict against the paper: 1 reproduced, 1 not reproduced" in md.read_text()
    assert "Commit: abc1234" in report and "1111111" not in report
    assert "CPU 14 s (user 12 s, system 2 s)" in report.replace("12.50", "12")
    assert "launched 2 times" in report
    assert "epochs: 2" in report and "ROWS=tiny_row benchmarks/paper_scale/run.sh" in report
    assert sorted(p.name for p in (out / "tiny_row" / "seeds").iterdir()) == [
        "bp-seed0", "bp-seed1", "bp-seed2", "fa-seed0", "fa-seed1", "fa-seed2"]
    assert sorted(p.name for p in (out / "tiny_row" / "seeds" / "bp-seed0").iterdir()) == ["config.yaml", "summary.json"]
    assert (out / "tiny_row" / "curves.png").stat().st_size > 1000
    text = md.read_text()
    assert text.index("## Full scale") < text.index("## Quick preset A")   # the full-scale part comes first
    assert text.count("<!-- full-scale:tiny_row begin -->") == 1
    # a second collect replaces the section, it does not add another
    assert collect.main([str(row_dir), "--out", str(out), "--reproduction", str(md)]) == 0
    again = md.read_text()
    assert again.count("### Full scale: Tiny row") == 1 and again.count("## Quick preset A") == 1


def test_collect_refuses_runs_whose_settings_differ_from_the_preset(row, tmp_path, capsys):
    row_dir, folder = row
    collect = _load_collect()
    (folder / "tiny-row.yaml").write_text(TINY.replace("PAPER_BP", "50.0").replace("lr: 0.1", "lr: 0.2"))
    assert collect.main([str(row_dir), "--out", str(tmp_path / "r"), "--reproduction", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optimizer.lr = 0.1, the preset says 0.2" in err
    assert not (tmp_path / "r").exists()


def test_collect_refuses_an_unfinished_sweep_unless_partial(row, tmp_path, capsys):
    row_dir, _ = row
    collect = _load_collect()
    for name in ("summary.json", "model.pt"):
        (row_dir / "fa-seed2" / name).unlink(missing_ok=True)
    assert collect.main([str(row_dir), "--out", str(tmp_path / "r"), "--reproduction", ""]) == 2
    assert "1 of 6 runs not finished" in capsys.readouterr().err
    assert collect.main([str(row_dir), "--out", str(tmp_path / "r"), "--reproduction", "", "--partial"]) == 0
    report = (tmp_path / "r" / "tiny_row" / "report.md").read_text()
    assert "**Partial**: 1 of 6 runs unfinished: fa-seed2" in report and "(n=2)" in report


def test_reproduce_all_keeps_the_full_scale_sections(row, tmp_path):
    from bioplausible.experiments.reproduce import reproduce_all

    row_dir, _ = row
    md = tmp_path / "REPRODUCTION.md"
    md.write_text("# Reproduction\n\nold quick write-up\n\n## Old quick section\n")
    assert _load_collect().main([str(row_dir), "--out", str(tmp_path / "r"), "--reproduction", str(md)]) == 0
    section = md.read_text()[md.read_text().index("<!-- full-scale sections begin"):]
    section = section[:section.index("<!-- full-scale sections end -->")]
    reproduce_all(["tiny-row"], "quick", [0], 1, tmp_path / "quick", md, "bioplausible reproduce --all")
    text = md.read_text()
    assert section in text and "## Old quick section" not in text and "## Tiny row" in text
    assert text.index("### Full scale: Tiny row") < text.index("## Tiny row")
    # at quick scale the paper checks are listed as not evaluated and left out of the tally
    assert "1/1 checks passed" in text and text.count("[not evaluated] test_accuracy of") == 2


def test_collect_reports_but_accepts_a_different_probe_interval(row, tmp_path):
    row_dir, folder = row
    (folder / "tiny-row.yaml").write_text(TINY.replace("PAPER_BP", "50.0").replace("probe_every: 5", "probe_every: 7"))
    assert _load_collect().main([str(row_dir), "--out", str(tmp_path / "r"), "--reproduction", ""]) == 0
    report = (tmp_path / "r" / "tiny_row" / "report.md").read_text()
    assert "Recording settings that differ from the preset's (training is the same): 6 runs" in report
    assert "probe_every = 5, the preset says 7" in report


def test_the_command_says_the_sweep_arguments_the_driver_passed(row, tmp_path):
    row_dir, _ = row
    collect = _load_collect()
    base = row_dir.parent
    assert collect.driver_args(row_dir) == ""
    (base / "driver.log").write_text("== other_row 2026-01-01T00:00:00Z commit 1111111 --jobs 2\n"
                                     "== tiny_row 2026-01-01T00:00:00Z commit abc1234 --stack\n"
                                     "== tiny_row 2026-01-02T00:00:00Z commit abc1234 --stack\n")
    assert collect.driver_args(row_dir) == "--stack"
    out = tmp_path / "results"
    assert collect.main([str(row_dir), "--out", str(out), "--reproduction", str(tmp_path / "R.md")]) == 0
    report = (out / "tiny_row" / "report.md").read_text()
    assert "ROWS=tiny_row SWEEP_ARGS=--stack benchmarks/paper_scale/run.sh" in report
    assert "--out " in report and "tiny_row --stack" in report and "--seeds 0,1,2 --stack" in report
    assert "Commit: abc1234" in report


def test_a_row_that_keeps_some_runs_reports_those_with_their_seeds(synthetic_root, tmp_path, monkeypatch):
    """A sweep with ``runs:`` (bp on seeds 0-1, fa left out): the report lists bp alone, n = 2,
    and says which runs and seeds the row kept."""
    folder = tmp_path / "presets"
    folder.mkdir()
    monkeypatch.setattr(experiments, "_preset_files", lambda: sorted(folder.glob("*.yaml")))
    (folder / "tiny-row.yaml").write_text(TINY.replace("PAPER_BP", "50.0"))
    row_dir = tmp_path / "paper-scale" / "tiny_row"
    run_sweep(SweepSpec(name="tiny-row-full", preset="tiny-row", scale="full", seeds=[0], runs={"bp": [0, 1]}),
              out=row_dir, stream=io.StringIO())
    assert sorted(p.name for p in row_dir.iterdir() if p.is_dir()) == ["bp-seed0", "bp-seed1"]
    collect = _load_collect()
    out = tmp_path / "results"
    assert collect.main([str(row_dir), "--out", str(out), "--reproduction", "", "--commit", "abc1234"]) == 0
    report = (out / "tiny_row" / "report.md").read_text()
    assert "| bp |" in report and "(n=2)" in report
    assert "| fa |" not in report
    assert "restricted to bp (seeds 0, 1)" in report
    # the preset's check on fa vs bp and fa's paper number are not this row's: listed apart, not
    # failed, and not in the tally
    data = json.loads((out / "tiny_row" / "report.json").read_text())
    assert data["tally"] == {"reproduced": 0, "not_reproduced": 1, "other": 0}  # bp 50.0: far from ours
    assert "the paper's claims on the ranking):\n\n- none\n" in report
    assert "Checks on runs this row does not train (its sweep file keeps bp): max_gap on fa, bp." in report
