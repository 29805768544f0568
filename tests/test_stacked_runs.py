"""``--stack`` is invisible in the results: a stacked ``compare --seeds`` writes the run folders an
unstacked one writes — the same files, the same keys, the same numbers (float64, 1e-10 relative) —
and a stacked run resumes from its checkpoints to the same end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bioplausible.cli import main

TIMING = {"epoch_time", "samples_per_s", "eval_time", "probe_time", "total_time", "mean_epoch_time", "updated",
          "seconds"}


def _compare(out: Path, rules: str, stack: bool, epochs: int = 2, extra: list[str] | None = None) -> int:
    args = ["compare", "--rules", rules, "--dataset", "mnist", "--model", "mlp:784-16-12-10", "--epochs", str(epochs),
            "--batch-size", "40", "--dtype", "float64", "--seeds", "0,1,2", "--quiet", "--out", str(out),
            "--probe-every", "4", "--lr", "0.05", *(extra or [])]
    return main(args + (["--stack"] if stack else []))


def _close(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k not in TIMING:
                _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        # an angle near 0 is arccos(1 − ε) ≈ √(2ε): rounding of 1e-16 shows as ~1e-6 degrees
        tol = 1e-5 if "angle" in where else 1e-9
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=tol), (where, a, b)
    else:
        assert a == b, (where, a, b)


def _runs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and (p / "config.yaml").exists())


def _same_runs(plain: Path, stacked: Path) -> None:
    a_runs, b_runs = _runs(plain), _runs(stacked)
    assert [p.name for p in a_runs] == [p.name for p in b_runs] and a_runs
    for a, b in zip(a_runs, b_runs):
        assert sorted(f.name for f in a.iterdir()) == sorted(f.name for f in b.iterdir())
        _close([json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()],
               [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()], f"{a.name} metrics")
        sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
        sa.pop("run_dir", None), sb.pop("run_dir", None)
        _close(sa, sb, f"{a.name} summary")
        assert (a / "config.yaml").read_text() == (b / "config.yaml").read_text()
        if not (a / "model.pt").exists():  # a diverged run (the file lists were compared above)
            continue
        ma, mb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
        assert ma.keys() == mb.keys()
        for k in ma:
            assert torch.allclose(ma[k], mb[k], rtol=1e-10, atol=1e-12), (a.name, k)
        ca, cb = torch.load(a / "checkpoint.pt", weights_only=True), torch.load(b / "checkpoint.pt", weights_only=True)
        assert ca.keys() == cb.keys() and ca["epoch"] == cb["epoch"] and ca["step"] == cb["step"]
        for k in ca["model"]:
            assert torch.allclose(ca["model"][k], cb["model"][k], rtol=1e-10, atol=1e-12), (a.name, k)


def test_stacked_compare_writes_what_the_unstacked_compare_writes(synthetic_root, tmp_path, capsys):
    assert _compare(tmp_path / "plain", "bp,fa,np", stack=False) == 0
    assert _compare(tmp_path / "stacked", "bp,fa,np", stack=True) == 0
    _same_runs(tmp_path / "plain", tmp_path / "stacked")
    lines = (tmp_path / "stacked" / "np-seed1" / "metrics.jsonl").read_text().splitlines()
    probes = [json.loads(line) for line in lines]
    assert any(r["kind"] == "probe" and "grad_angle" in r for r in probes)


@pytest.mark.parametrize("rules", ["brsf,wm,np-dfa,sg", "ar,sal,bfa,bdfa", "bp-noise,fa-noise,matched-noise,dfa-noise"])
def test_probes_and_rule_metrics_of_every_family_match(synthetic_root, tmp_path, capsys, rules):
    """Probes read the rule's state where the unstacked probe reads it: feedback the step changed
    (brSF's magnitudes, NP's regression), weights the rule stepped itself (BFA's phases)."""
    assert _compare(tmp_path / "plain", rules, stack=False, epochs=1) == 0
    assert _compare(tmp_path / "stacked", rules, stack=True, epochs=1) == 0
    _same_runs(tmp_path / "plain", tmp_path / "stacked")


@pytest.mark.parametrize("what,flags,line", [
    ("np", ["--set", "rule.solver=ridge"], "node perturbation's ridge solver has no stacked step"),
    ("bp", ["--optimizer", "adam"], "the optimizer is 'adam'; stacked runs step plain SGD"),
])
def test_what_cannot_stack_says_so_and_runs_unstacked(synthetic_root, tmp_path, capsys, what, flags, line):
    assert _compare(tmp_path / "plain", what, stack=False, epochs=1, extra=flags) == 0
    capsys.readouterr()
    assert _compare(tmp_path / "stacked", what, stack=True, epochs=1, extra=flags) == 0
    err = capsys.readouterr().err
    assert f"--stack: {what}: {line}" in err and err.count("--stack") == 1
    _same_runs(tmp_path / "plain", tmp_path / "stacked")


def test_a_stacked_sweep_resumes_to_the_same_end(synthetic_root, tmp_path, capsys, monkeypatch):
    """Two epochs, stopped, then extended to three, against three epochs unstacked in one go."""
    assert _compare(tmp_path / "plain", "kp,dfa", stack=False, epochs=3) == 0
    out = tmp_path / "stacked"
    assert _compare(out, "kp,dfa", stack=True, epochs=2) == 0
    from bioplausible.engine.stacked.steps import StackedRule
    from bioplausible.experiments.jobs import resume_job
    from bioplausible.experiments.runs import run_jobs

    steps = []
    step = StackedRule.step
    monkeypatch.setattr(StackedRule, "step", lambda self, x, y: steps.append(1) or step(self, x, y))
    jobs = [resume_job(d, {"epochs": 3}) for d in _runs(out)]
    summaries = run_jobs(jobs, stack=True)
    assert len(steps) == 2 * 6  # two stacks (kp, dfa) x one epoch of 240 examples in batches of 40
    assert [s["status"] for s in summaries] == ["completed"] * len(jobs)
    for a, b in zip(_runs(tmp_path / "plain"), _runs(out)):
        ma, mb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
        for k in ma:
            assert torch.allclose(ma[k], mb[k], rtol=1e-10, atol=1e-12), (a.name, k)
        la = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
        lb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
        _close(la, lb, a.name)


@pytest.mark.parametrize("rule", [{"name": "fa"}, {"name": "ar", "relax_steps": 5, "divergence_threshold": 1e3}])
def test_a_diverging_run_leaves_the_stack_and_the_others_finish(synthetic_root, tmp_path, capsys, rule):
    """Learning rates per run in one stack: the run with the huge rate diverges as it does alone
    (by the trainer's loss check, or by the rule's own check for activation relaxation)."""
    from bioplausible.engine.config import TrainConfig
    from bioplausible.experiments.jobs import plan
    from bioplausible.experiments.runs import run_jobs

    base = TrainConfig.from_dict({"dataset": {"name": "mnist"}, "model": {"spec": "mlp:784-16-10"},
                                  "rule": rule, "epochs": 2, "batch_size": 4, "dtype": "float64",
                                  "progress": False, "loss": "mse_sum", "divergence_threshold": 1e6})
    plain = plan(base, seeds=[0, 1], grid={"optimizer.lr": [1e-3, 10.0]}, out=tmp_path / "plain")
    stacked = plan(base, seeds=[0, 1], grid={"optimizer.lr": [1e-3, 10.0]}, out=tmp_path / "stacked")
    a, b = run_jobs(plain), run_jobs(stacked, stack=True)
    assert [s["status"] for s in a] == ["completed", "completed", "diverged", "diverged"]
    assert [s["status"] for s in a] == [s["status"] for s in b]
    for sa, sb in zip(a, b):
        assert sa["message"] == sb["message"] and sa["steps"] == sb["steps"]
    _same_runs(tmp_path / "plain", tmp_path / "stacked")


PRESET = """
name: tiny
title: Tiny preset
paper: none
config:
  dataset: {name: mnist}
  model: {spec: "mlp:784-16-10"}
  epochs: 2
  batch_size: 40
  dtype: float64
runs: {fa: {name: fa}, dfa: {name: dfa, config: {optimizer: {lr: 0.05}}}}
seeds: [0, 1, 2]
scales: {quick: {epochs: 2, seeds: [0, 1, 2]}, full: {}}
paper_results: {metric: test_accuracy, values: {fa: 99.0}, note: made up}
"""


def test_stacked_reproduce_gives_the_unstacked_report(synthetic_root, tmp_path, capsys):
    preset = tmp_path / "tiny.yaml"
    preset.write_text(PRESET)
    for name, flags in (("plain", []), ("stacked", ["--stack"])):
        assert main(["reproduce", str(preset), "--out", str(tmp_path / name), "--quiet", *flags]) == 0
    a = json.loads((tmp_path / "plain" / "reproduce.json").read_text())
    b = json.loads((tmp_path / "stacked" / "reproduce.json").read_text())
    a.pop("runs"), b.pop("runs")
    _close(a, b, "reproduce.json")
    _same_runs(tmp_path / "plain", tmp_path / "stacked")


def test_a_stacked_run_whose_evaluation_is_not_finite_diverges_as_it_does_alone(synthetic_root, tmp_path,
                                                                                    capsys, monkeypatch):
    """A non-finite evaluation loss marks the run diverged, in a stack as alone (seed 1 here; the
    other seeds go on and match their unstacked runs)."""
    from bioplausible.engine import trainer as tr

    real = tr.Trainer._evaluate_epoch

    def nan_for_seed_1(self, record):
        out = real(self, record)
        if self.config["seed"] == 1:
            out["test_loss"] = float("nan")
        return out

    monkeypatch.setattr(tr.Trainer, "_evaluate_epoch", nan_for_seed_1)
    assert _compare(tmp_path / "plain", "bp", stack=False) == 0
    assert _compare(tmp_path / "stacked", "bp", stack=True) == 0
    for folder in ("plain", "stacked"):
        status = {p.name: json.loads((p / "summary.json").read_text())["status"] for p in _runs(tmp_path / folder)}
        assert status == {"bp-seed0": "completed", "bp-seed1": "diverged", "bp-seed2": "completed"}, (folder, status)
    _same_runs(tmp_path / "plain", tmp_path / "stacked")


@pytest.mark.parametrize("rules,batch", [("ghost-ma,ghost-ma-prime", "40"), ("ghost-mb", "1")])
def test_stacked_ghost_runs_write_what_unstacked_ones_write(synthetic_root, tmp_path, capsys, rules, batch):
    """The ghost rules (their own rates, probes of the weights they step themselves, MB's carried
    state in the checkpoint) through the CLI: one stack per rule, the same files and numbers."""
    flags = ["--set", "model.activation=sigmoid", "--set", "model.output_activation=sigmoid",
             "--set", "rule.free_steps=10", "--set", "rule.clamped_steps=6", "--set", "rule.dt=0.005",
             "--set", "rule.diagnostics_every=5", "--loss", "mse_sum", "--batch-size", batch]

    def run(out, stack):
        args = ["compare", "--rules", rules, "--dataset", "mnist", "--model", "mlp:784-12-10", "--epochs", "2",
                "--dtype", "float64", "--seeds", "0,1,2", "--quiet", "--out", str(out), "--probe-every", "7", *flags]
        return main(args + (["--stack"] if stack else []))

    assert run(tmp_path / "plain", False) == 0
    assert run(tmp_path / "stacked", True) == 0
    assert "--stack" not in capsys.readouterr().err  # nothing fell back to unstacked
    _same_runs(tmp_path / "plain", tmp_path / "stacked")
    for a, b in zip(_runs(tmp_path / "plain"), _runs(tmp_path / "stacked")):
        lines = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
        assert any(r["kind"] == "probe" for r in lines)
        assert any(k.startswith("rule/update_rel_error") for r in lines for k in r)  # the diagnostics steps
        ra, rb = torch.load(a / "rule_state.pt"), torch.load(b / "rule_state.pt")
        ca, cb = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (a, b))
        assert ra.keys() == rb.keys() and (rules != "ghost-mb" or "state.s.1" in ra)
        for k in ra:
            assert torch.allclose(ra[k], rb[k], rtol=1e-10, atol=1e-12), (a.name, k)
        assert ca["rule"]["ghost_steps"] == cb["rule"]["ghost_steps"] > 0


def test_ghost_runs_at_their_own_rates_share_a_stack_and_a_diverging_one_leaves_it(synthetic_root, tmp_path,
                                                                                    capsys):
    """A grid over the rule's own rate eta_w is one stack; the run at the huge rate diverges by the
    rule's own check (|s| too large) at the step where it diverges alone, the others finish."""
    from bioplausible.engine.config import TrainConfig
    from bioplausible.experiments.jobs import plan
    from bioplausible.experiments.runs import plan_groups, run_jobs

    base = TrainConfig.from_dict({
        "dataset": {"name": "mnist"},
        "model": {"spec": "mlp:784-12-10", "activation": "sigmoid", "output_activation": "sigmoid"},
        "rule": {"name": "ghost-ma", "free_steps": 8, "clamped_steps": 8, "dt": 0.005, "divergence_threshold": 50},
        "epochs": 2, "batch_size": 20, "dtype": "float64", "progress": False, "loss": "mse_sum"})
    grid = {"rule.eta_w": [0.5, 800]}
    plain = plan(base, seeds=[0, 1], grid=grid, out=tmp_path / "plain")
    stacked = plan(base, seeds=[0, 1], grid=grid, out=tmp_path / "stacked")
    assert len(plan_groups(stacked)) == 1
    a, b = run_jobs(plain), run_jobs(stacked, stack=True)
    assert sorted(s["status"] for s in a) == ["completed", "completed", "diverged", "diverged"]
    assert [s["status"] for s in a] == [s["status"] for s in b]
    for sa, sb in zip(a, b):
        assert sa["message"] == sb["message"] and sa["steps"] == sb["steps"]
    assert "--stack" not in capsys.readouterr().err
    _same_runs(tmp_path / "plain", tmp_path / "stacked")


def test_a_stacked_ghost_mb_run_resumes_with_its_carried_state(synthetic_root, tmp_path, capsys):
    """MB's circuit state and V^b travel through the checkpoint: two stacked epochs, then a third
    from the checkpoints, against three unstacked epochs in one go."""
    from bioplausible.experiments.jobs import resume_job
    from bioplausible.experiments.runs import run_jobs

    def run(out, stack, epochs):
        return main(["compare", "--rules", "ghost-mb", "--dataset", "mnist", "--model", "mlp:784-12-10",
                     "--epochs", str(epochs), "--dtype", "float64", "--seeds", "0,1", "--quiet", "--out", str(out),
                     "--batch-size", "1", "--probe-every", "0", "--loss", "mse_sum",
                     "--set", "model.activation=sigmoid", "--set", "model.output_activation=sigmoid",
                     "--set", "rule.free_steps=8", "--set", "rule.clamped_steps=4"] + (["--stack"] if stack else []))

    assert run(tmp_path / "plain", False, 3) == 0
    assert run(tmp_path / "stacked", True, 2) == 0
    summaries = run_jobs([resume_job(d, {"epochs": 3}) for d in _runs(tmp_path / "stacked")], stack=True)
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert "--stack" not in capsys.readouterr().err
    for a, b in zip(_runs(tmp_path / "plain"), _runs(tmp_path / "stacked")):
        ra, rb = torch.load(a / "rule_state.pt"), torch.load(b / "rule_state.pt")
        assert "state.s.1" in ra and ra.keys() == rb.keys()
        for k in ra:
            assert torch.allclose(ra[k], rb[k], rtol=1e-10, atol=1e-12), (a.name, k)
        ma, mb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
        for k in ma:
            assert torch.allclose(ma[k], mb[k], rtol=1e-10, atol=1e-12), (a.name, k)
        _close([json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()],
               [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()], a.name)


def test_the_python_compare_stacks_a_user_model_into_the_same_runs(tmp_path, capsys):
    """``bp.compare(..., stack=True)`` with a model factory and tensors: the folders and numbers
    of the unstacked call; a rule without a stacked step (dae) says so and runs apart."""
    import bioplausible as bp

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 10, generator=g, dtype=torch.float64), torch.randint(0, 3, (120,), generator=g)

    def factory():
        return torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()

    common = {"seeds": [0, 1, 2], "epochs": 2, "batch_size": 16, "lr": 0.05, "dtype": "float64",
              "probe_every": 3, "config": {"dataset": {"val_size": 0}}}
    rows_a = bp.compare(factory, ["bp", "fa", "dae"], (x, y), out=tmp_path / "a", **common)
    capsys.readouterr()
    rows_b = bp.compare(factory, ["bp", "fa", "dae"], (x, y), out=tmp_path / "b", stack=True, **common)
    err = capsys.readouterr().err
    assert "stack: dae: rule 'dae' has no stacked step" in err
    assert "stack: bp:" not in err and "stack: fa:" not in err  # these two did stack (a Linear output)
    _same_runs(tmp_path / "a", tmp_path / "b")
    assert len(rows_a) == len(rows_b) == 3  # one row per rule
    for a, b in zip(rows_a, rows_b):
        _close({k: v for k, v in a.items() if "time" not in k}, {k: v for k, v in b.items() if "time" not in k},
               "results.csv")


def _progress(err: str) -> list[tuple[int, int]]:
    """(done, running) of every progress line a sweep wrote."""
    import re

    return [(int(m.group(1)), int(m.group(2)))
            for m in re.finditer(r"sweep: (\d+)/\d+ done \(\d+ skipped\), (\d+) running", err)]


@pytest.mark.parametrize("rule,expected", [
    # a stack: its three runs start together and end together (the progress counts each)
    ({"name": "np"}, [(0, 0), (0, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0)]),
    # runs that cannot stack (NP's ridge solver) go one by one, and the progress follows each
    ({"name": "np", "solver": "ridge"}, [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]),
])
def test_a_stacked_sweep_reports_each_run_as_it_starts_and_ends(synthetic_root, tmp_path, capsys, rule, expected):
    import yaml

    spec = {"name": "tiny", "config": {"dataset": {"name": "mnist"}, "model": {"spec": "mlp:784-16-10"},
                                       "epochs": 1, "batch_size": 40, "rule": rule},
            "grid": {}, "seeds": [0, 1, 2]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--stack"]) == 0
    assert _progress(capsys.readouterr().err) == expected
    index = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in index["runs"]] == ["completed"] * 3


def test_stacked_runs_draw_each_runs_augmentation(synthetic_root, tmp_path, capsys):
    """``dataset.augment``: each run of a stack crops and flips its batches with its own generator, as
    it does alone (the stack once trained on the raw images while the runs apart augmented theirs)."""
    flags = ["--set", "dataset.augment=crop_flip"]
    assert _compare(tmp_path / "plain", "bp,np", stack=False, epochs=2, extra=flags) == 0
    assert _compare(tmp_path / "stacked", "bp,np", stack=True, epochs=2, extra=flags) == 0
    _same_runs(tmp_path / "plain", tmp_path / "stacked")
    assert _compare(tmp_path / "raw", "bp", stack=True, epochs=2) == 0  # and the augmentation did something
    raw = json.loads((tmp_path / "raw" / "bp-seed0" / "summary.json").read_text())["final"]["train_loss"]
    aug = json.loads((tmp_path / "stacked" / "bp-seed0" / "summary.json").read_text())["final"]["train_loss"]
    assert not math.isclose(raw, aug, rel_tol=1e-6)


@pytest.mark.parametrize("rules,flags", [
    # an LR schedule (the rates re-read every epoch), weight decay, a validation split and the
    # training-set evaluation: what the trainer does around the step, for a plain and a circuit rule
    ("bp,sal", ["--set", "schedule.name=cosine", "--set", "optimizer.weight_decay=0.001",
                "--set", "dataset.val_size=40", "--set", "eval_train=true"]),
    ("fa,bdfa", ["--set", "schedule.name=step", "--set", "schedule.step_size=1", "--set", "schedule.gamma=0.5",
                 "--set", "dataset.val_size=40"]),
])
@pytest.mark.filterwarnings("error:Detected call of:UserWarning")  # the stack's schedule steps quietly
def test_what_the_trainer_does_around_the_step_stacks_too(synthetic_root, tmp_path, capsys, rules, flags):
    assert _compare(tmp_path / "plain", rules, stack=False, epochs=3, extra=flags) == 0
    assert _compare(tmp_path / "stacked", rules, stack=True, epochs=3, extra=flags) == 0
    assert "--stack" not in capsys.readouterr().err  # every group stacked
    _same_runs(tmp_path / "plain", tmp_path / "stacked")
