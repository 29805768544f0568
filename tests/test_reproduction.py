"""reproduce --all (#22): every registered preset as a resumable sweep, one REPRODUCTION.md."""

from __future__ import annotations

import json
import statistics

import pytest

from bioplausible.experiments import presets as experiments
from bioplausible.cli import main

TINY = """
name: {name}
title: Tiny {name}
paper: "Nobody 2024, Table 1"
config:
  dataset: {{name: mnist}}
  model: {{spec: "mlp:784-16-10"}}
  epochs: 3
  batch_size: 40
  probe_every: 3
runs: {{bp: {{name: bp}}, fa: {{name: fa}}}}
seeds: [0, 1, 2, 3]
scales: {{quick: {{epochs: 1}}, full: {{}}}}
paper_results: {{metric: test_accuracy, values: {{bp: 90.0, fa: 85.5, sal: 91.0}}, note: "made up"}}
checks:
  - {{type: min_value, metric: test_accuracy, run: bp, min: 0}}
  - {{type: min_value, metric: test_accuracy, run: fa, min: 101}}
"""


@pytest.fixture
def tiny_presets(tmp_path, monkeypatch):
    folder = tmp_path / "presets"
    folder.mkdir()
    for name in ("tiny-a", "tiny-b", "tiny-c"):
        (folder / f"{name}.yaml").write_text(TINY.format(name=name))
    monkeypatch.setattr(experiments, "_preset_files", lambda: sorted(folder.glob("*.yaml")))
    return folder


def test_reproduce_all_writes_one_markdown_with_paper_and_ours(synthetic_root, tiny_presets, tmp_path, capsys):
    md, out = tmp_path / "REPRODUCTION.md", tmp_path / "runs"
    args = ["reproduce", "--all", "--skip", "tiny-c", "--scale", "quick", "--seeds", "0,1,2",
            "--out", str(out), "--markdown", str(md)]
    assert main(args) == 0
    text = md.read_text()
    assert "## Tiny tiny-a" in text and "## Tiny tiny-b" in text and "## Tiny tiny-c" not in text
    assert "`bioplausible reproduce tiny-a --scale quick --seeds 0,1,2`" in text
    assert "bioplausible reproduce --all --scale quick --skip tiny-c --seeds 0,1,2" in text
    vals = [json.loads((out / "tiny-a" / f"fa-seed{s}" / "summary.json").read_text())["final"]["test_accuracy"]
            for s in (0, 1, 2)]
    mean = statistics.fmean(vals)
    # quick scale: the paper's number beside ours, but no difference (not a like-for-like run)
    assert (f"| fa | {mean:.2f} ± {statistics.stdev(vals):.2f} (n=3) | 85.50 | "
            f"not comparable at quick scale |") in text
    assert "| sal | not run" in text  # a paper value without a run is shown, not dropped
    assert "[pass] test_accuracy of bp" in text and "[FAIL] test_accuracy of fa" in text
    assert "2 of 3 registered preset(s) at scale `quick` (0 not run), 2/4 checks passed" in text
    assert "- `tiny-c` (Tiny tiny-c): `bioplausible reproduce tiny-c --scale quick --seeds 0,1,2`" in text
    # a second launch runs nothing again
    stamp = (out / "tiny-a" / "bp-seed0" / "summary.json").stat().st_mtime_ns
    assert main(args + ["--only", "tiny-a", "--strict"]) == 1  # --strict: the failed check sets the status
    assert (out / "tiny-a" / "bp-seed0" / "summary.json").stat().st_mtime_ns == stamp
    assert "6/6 done (6 skipped)" in capsys.readouterr().err


def test_a_preset_whose_data_is_missing_is_reported_not_run(synthetic_root, tiny_presets, tmp_path):
    (tiny_presets / "tiny-d.yaml").write_text(TINY.format(name="tiny-d").replace("name: mnist", "name: svhn"))
    md = tmp_path / "R.md"
    assert main(["reproduce", "--all", "--only", "tiny-a,tiny-d", "--seeds", "0", "--out", str(tmp_path / "r"),
                 "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "Preset `tiny-d`: **not run** here:" in text and "svhn" in text and "(1 not run)" in text
    assert "## Tiny tiny-a" in text and "| bp |" in text


def test_only_and_skip_name_real_presets(tiny_presets, capsys):
    assert main(["reproduce", "--all", "--only", "tiny-x"]) == 2
    assert "unknown preset 'tiny-x'" in capsys.readouterr().err
    assert main(["reproduce", "--all", "--only", "tiny-a", "--skip", "tiny-a"]) == 2
    assert main(["reproduce"]) == 2


def test_a_grid_label_is_compared_with_its_runs_paper_value():
    from bioplausible.experiments.sweep_report import _paper_for

    values = {"fa": 85.5, "bp": 90.0}
    assert _paper_for("fa[optimizer.lr=0.01]", values) == 85.5 and _paper_for("bp", values) == 90.0
    assert _paper_for("kp", values) is None


def test_a_sweep_over_a_preset_with_a_grid_reports_against_the_paper(synthetic_root, tiny_presets, tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: g\npreset: {tiny_presets / 'tiny-a.yaml'}\nscale: quick\n"
                    f"grid: {{optimizer.lr: [0.05, 0.2]}}\nseeds: [0]\nout: {tmp_path / 'out'}\n")
    assert main(["sweep", str(spec)]) == 0
    printed = capsys.readouterr().out
    acc = json.loads((tmp_path / "out" / "fa[optimizer.lr=0.2]-seed0" / "summary.json").read_text())
    value = acc["final"]["test_accuracy"]
    assert f"| fa[optimizer.lr=0.2] | 1 | {value:.2f} | 85.50 | not comparable at quick scale |" in printed
    from bioplausible.experiments.sweep_report import collect, markdown, tables

    index, groups = collect(tmp_path / "out")  # the same runs, as if at the paper's (full) scale
    index["scale"] = "full"
    assert f"| fa[optimizer.lr=0.2] | 1 | {value:.2f} | 85.50 | {value - 85.5:+.2f} |" in markdown(tables(index, groups))
    assert acc["job"]["preset"] == "tiny-a"
