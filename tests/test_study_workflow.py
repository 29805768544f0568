"""The study workflow: per-rule settings, rule-recommended settings, rule options, merged reports,
figure formats, bp.compare, CLI conventions and the paper-figure command."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from bioplausible.cli.app import main
from bioplausible.engine.config import TrainConfig, load_config
from bioplausible.errors import ConfigError

SMALL = ["--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "1", "--quiet"]


# ----------------------------------------------------------------------------- per-rule settings
def test_rule_prefixed_override_applies_to_that_rule_only():
    base = TrainConfig.from_dict({}, ["np:optimizer.groups.feedback.lr=5e-4", "np:rule.c_h=0.02", "optimizer.lr=0.05"])
    np_cfg = base.updated({"rule": {"name": "np"}})
    bp_cfg = base.updated({"rule": {"name": "bp"}})
    assert np_cfg["optimizer"]["groups"] == {"feedback": {"lr": 5e-4}}
    assert np_cfg["rule"]["c_h"] == 0.02
    assert bp_cfg["optimizer"]["groups"] == {}  # bp has no feedback group: it never sees the setting
    assert "c_h" not in bp_cfg["rule"]
    assert np_cfg["optimizer"]["lr"] == bp_cfg["optimizer"]["lr"] == 0.05
    # a setting resolved for one rule does not follow the config to another rule
    assert np_cfg.updated({"rule": {"name": "fa"}})["optimizer"]["groups"] == {}


def test_per_rule_section_in_a_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rule: np\nper_rule:\n  np: {optimizer: {groups: {feedback: {lr: 0.0005}}}}\n  fa: {epochs: 3}\n")
    cfg = load_config(path)
    assert cfg["optimizer"]["groups"]["feedback"]["lr"] == 0.0005
    assert cfg["epochs"] == 10
    assert cfg.updated({"rule": "fa"})["epochs"] == 3
    assert "per_rule" not in cfg.to_dict()  # a run's config.yaml holds the resolved values only


def test_unknown_rule_in_a_prefix_is_one_line():
    with pytest.raises(ConfigError, match="unknown rule 'kpp'.*did you mean 'kp'"):
        TrainConfig.from_dict({}, ["kpp:rule.decay=0.1"])
    with pytest.raises(ConfigError, match="RULE:key=value"):
        TrainConfig.from_dict({}, [":optimizer.lr=0.1"])


def test_compare_with_a_per_rule_override_runs_every_rule(synthetic_root, tmp_path, capsys):
    out = tmp_path / "study"
    code = main(["compare", "--rules", "bp,fa,np", *SMALL, "--seeds", "0,1",
                 "--set", "np:optimizer.groups.feedback.lr=5e-4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    np_cfg = load_config(out / "np-seed1" / "config.yaml")
    bp_cfg = load_config(out / "bp-seed1" / "config.yaml")
    assert np_cfg["optimizer"]["groups"] == {"feedback": {"lr": 5e-4}}
    assert bp_cfg["optimizer"]["groups"] == {}
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["label"], r["n"]) for r in rows] == [("bp", "2"), ("fa", "2"), ("np", "2")]


def test_compare_refuses_a_setting_for_a_rule_it_does_not_run(synthetic_root, tmp_path, capsys):
    code = main(["compare", "--rules", "bp,fa", *SMALL, "--set", "np:rule.c_h=0.1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "'np' is not compared" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_sweep_grid_over_a_rule_prefixed_key(synthetic_root, tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: g\nconfig: {model: {spec: 'mlp:784-16-10'}, epochs: 1}\n"
                    "grid: {rule.name: [bp, np], 'np:optimizer.groups.feedback.lr': [0.001, 0.0001]}\nseeds: [0]\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "g")]) == 0, capsys.readouterr().err
    runs = sorted(p.name for p in (tmp_path / "g").iterdir() if p.is_dir())
    assert "np[np:optimizer.groups.feedback.lr=0.0001]-seed0" in runs
    cfg = load_config(tmp_path / "g" / "np[np:optimizer.groups.feedback.lr=0.0001]-seed0" / "config.yaml")
    assert cfg["optimizer"]["groups"]["feedback"]["lr"] == 0.0001
    cfg = load_config(tmp_path / "g" / "bp[np:optimizer.groups.feedback.lr=0.0001]-seed0" / "config.yaml")
    assert cfg["optimizer"]["groups"] == {}


# ----------------------------------------------------------------------------- recommended settings
def test_a_rule_brings_the_settings_it_needs_unless_the_user_set_them():
    mb = TrainConfig.from_dict({"rule": {"name": "ghost-mb"}})
    assert mb["batch_size"] == 1
    assert mb["model"]["activation"] == "sigmoid" and mb["model"]["output_activation"] == "sigmoid"
    assert TrainConfig.from_dict({"rule": {"name": "ghost-mb"}, "batch_size": 100})["batch_size"] == 100
    # a model the user chose is theirs: no activation is added to it
    own = TrainConfig.from_dict({"rule": {"name": "ghost-mb"}, "model": {"spec": "mlp:784-20-10"}})
    assert "activation" not in own["model"]
    assert TrainConfig.from_dict({"rule": {"name": "np"}})["optimizer"]["groups"]["feedback"]["lr"] == 1e-3
    assert TrainConfig.from_dict({"rule": {"name": "bfa"}})["optimizer"]["lr"] == 0.01
    assert TrainConfig.from_dict({"rule": {"name": "bfa"}, "optimizer": {"lr": 0.1}})["optimizer"]["lr"] == 0.1
    # switching rules in compare switches the recommended settings too
    base = TrainConfig.from_dict({})
    assert base.updated({"rule": {"name": "ghost-mb"}})["batch_size"] == 1
    assert base.updated({"rule": {"name": "ghost-mb"}}).updated({"rule": {"name": "fa"}})["batch_size"] == 100


def test_presets_keep_their_own_settings():
    from bioplausible.experiments.jobs import plan

    for job in plan("bfa-table1-mnist-1x400", "quick", out="/tmp/unused-preset-plan"):
        assert job.config["optimizer"]["lr"] == 0.0001  # the paper's rate, not bfa's recommended one


def test_bare_train_refuses_to_guess(capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "--rule" in err and len(err.strip().splitlines()) == 1


def test_print_config_shows_the_resolved_config_without_training(tmp_path, capsys):
    assert main(["train", "--rule", "ghost-mb", "--print-config", "--out", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    assert "batch_size: 1" in text and "activation: sigmoid" in text
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- options and support
def test_every_rule_lists_every_option_with_its_default(capsys):
    from bioplausible import list_rules
    from bioplausible.rules.registry import RULES

    assert main(["list", "rules", "--options"]) == 0
    out = capsys.readouterr().out
    for name in list_rules():
        for key, value in RULES.get(name).defaults.items():
            assert f"{key} = {value!r}" in out.replace("  ", " ").replace(f"{key}  ", f"{key} ") or \
                f"{key}" in out, (name, key)


def test_explain_reads_accepted_values_from_validation(capsys):
    assert main(["explain", "kp"]) == 0
    out = capsys.readouterr().out
    assert "decay" in out and "number >= 0" in out  # KolenPollack.validate: check_number("decay", 0)
    assert "decay_in" in out and "one of" in out


def test_support_table_in_readme_is_generated_from_the_code():
    from bioplausible.engine.rule_info import support_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert support_markdown() in readme, "run `python -m bioplausible.engine.rule_info` and paste the table"


# ----------------------------------------------------------------------------- reports and figures
def _compare(out: Path, rules: str, seeds: str, epochs: str = "1", fmt: str = "png") -> None:
    args = ["compare", "--rules", rules, "--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", epochs,
            "--quiet", "--seeds", seeds, "--out", str(out), "--format", fmt]
    assert main(args) == 0


def test_report_over_two_compare_folders_groups_by_rule_and_setting(synthetic_root, tmp_path, capsys):
    _compare(tmp_path / "a", "bp,fa", "0,1")
    _compare(tmp_path / "b", "bp,fa", "2")
    _compare(tmp_path / "c", "fa", "0", epochs="2")
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c"),
                 "--out", str(tmp_path / "rep"), "--format", "pdf"]) == 0
    rows = {r["label"]: r for r in csv.DictReader((tmp_path / "rep" / "results.csv").open())}
    assert rows["bp"]["n"] == "3"  # seeds 0, 1 (folder a) and 2 (folder b): one configuration
    assert rows["fa[epochs=1]"]["n"] == "3" and rows["fa[epochs=2]"]["n"] == "1"
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| run | seeds |" in md and "dataset `mnist`" in md and "model `mlp:784-16-10`" in md
    assert (tmp_path / "rep" / "curves.pdf").read_bytes()[:4] == b"%PDF"


def test_compare_has_one_layout_with_or_without_seeds(synthetic_root, tmp_path, capsys):
    assert main(["compare", "--rules", "bp", "--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "1",
                 "--quiet", "--out", str(tmp_path / "one")]) == 0
    _compare(tmp_path / "two", "bp", "0")
    names = lambda p: sorted(x.name for x in p.iterdir() if x.name != ".sweep.lock")
    assert names(tmp_path / "one") == names(tmp_path / "two")
    assert "results.csv" in names(tmp_path / "one") and "bp-seed0" in names(tmp_path / "one")


def test_a_rule_has_one_colour_everywhere():
    from bioplausible.experiments.figures import rule_color

    assert rule_color("fa") == rule_color("fa[optimizer.lr=0.1]") == rule_color("fa (seed 0)")
    assert len({rule_color(r) for r in ("bp", "fa", "dfa", "kp", "np", "wm")}) == 6


def test_figure_command_runs_on_a_sweep_folder_with_grid_names(synthetic_root, tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: f\nconfig: {model: {spec: 'mlp:784-16-10', activation: sigmoid}, probe_every: 1}\n"
                    "grid: {rule.name: [bp, fa, np], epochs: [1]}\nseeds: [0]\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "sw")]) == 0
    assert (tmp_path / "sw" / "np[epochs=1]-seed0").is_dir()
    assert main(["figure", "np-fig2", str(tmp_path / "sw"), "--format", "svg"]) == 0
    assert (tmp_path / "sw" / "np-fig2.svg").read_text().lstrip().startswith("<?xml")
    result = json.loads((tmp_path / "sw" / "np-fig2.json").read_text())
    assert set(result["runs"]) == {"np", "fa", "bp"}


# ----------------------------------------------------------------------------- Python
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 4))

    def forward(self, x):
        return self.body(x)


def test_bp_compare_on_a_user_module_writes_the_cli_files(tmp_path):
    import bioplausible as bp

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 20, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    rows = bp.compare(_Net, ["bp", "fa"], (x[:160], y[:160]), (x[160:], y[160:]), seeds=[0, 1, 2],
                      out=tmp_path / "study", epochs=2, lr=0.05, batch_size=20)
    assert [(r["label"], r["n"]) for r in rows] == [("bp", 3), ("fa", 3)]
    files = {p.name for p in (tmp_path / "study").iterdir()}
    assert {"report.md", "results.csv", "sweep.json", "bp-seed0", "fa-seed2", "curves.png"} <= files
    # the CLI's report reads the folder like one compare wrote
    assert main(["report", str(tmp_path / "study"), "--out", str(tmp_path / "rep")]) == 0


def test_fit_prints_only_when_verbose(capsys):
    import bioplausible as bp

    x, y = torch.randn(40, 20), torch.randint(0, 4, (40,))
    bp.fit(_Net(), "bp", (x, y), epochs=1, config={"batch_size": 20})
    assert capsys.readouterr().out == ""
    result = bp.fit(_Net(), "fa", (x, y), epochs=1, verbose=True, probe_every=1, batch_size=20)
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "nan" not in out
    assert result.probes and result.probes[0]["kind"] == "probe" and "grad_angle" in result.probes[0]


def test_a_data_bundle_prints_in_one_line():
    import bioplausible as bp

    data = bp.as_bundle((torch.randn(50, 3), torch.randint(0, 2, (50,))))
    assert "\n" not in repr(data) and "train 50" in repr(data) and "tensor(" not in repr(data)


# ----------------------------------------------------------------------------- CLI conventions
def test_version(capsys):
    import bioplausible

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"bioplausible {bioplausible.__version__}"


def test_list_presets_parses_each_file_once(monkeypatch, capsys):
    from bioplausible.experiments import presets

    calls = []
    real = presets._parse
    monkeypatch.setattr(presets, "_parse", lambda text, source: calls.append(source) or real(text, source))
    presets._CACHE.clear()
    start = time.process_time()
    assert main(["list", "presets"]) == 0
    assert len(calls) == len(presets.list_presets()) == len(set(calls))
    assert time.process_time() - start >= 0  # (no timing assertion: the parse count is the check)


def test_reproduce_takes_epochs_and_set(synthetic_root, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["reproduce", "fb-mnist-sigmoid", "--epochs", "1", "--set", "dataset.subset=100",
                 "--set", "model.spec=mlp:784-8-10", "--seeds", "0", "--quiet", "--out", str(out)]) == 0
    configs = [load_config(p / "config.yaml") for p in out.iterdir() if (p / "config.yaml").is_file()]
    assert configs and all(c["epochs"] == 1 and c["dataset"]["subset"] == 100 for c in configs)


def test_out_is_checked_before_the_data_loads(tmp_path, capsys, monkeypatch):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(tmp_path / "nothing-here"))
    assert main(["train", "--rule", "bp", "--out", str(tmp_path / "busy")]) == 2
    assert "already exists" in capsys.readouterr().err  # not "dataset not found"


# ----------------------------------------------------------------------------- tune
def test_tune_checks_its_search_space_before_any_trial(synthetic_root, tmp_path, capsys):
    pytest.importorskip("optuna")
    code = main(["tune", "--rule", "kp", *SMALL, "--param", "rule.decay=uniform:-1:0.1", "--trials", "2",
                 "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 2 and "--param rule.decay" in err and "decay must be" in err
    assert not (tmp_path / "t").exists()  # refused before the study or a trial was made


def test_tune_writes_a_trials_table(synthetic_root, tmp_path, capsys):
    pytest.importorskip("optuna")
    assert main(["tune", "--rule", "bp", *SMALL, "--param", "optimizer.lr=loguniform:0.01:0.5", "--trials", "2",
                 "--sampler", "random", "--out", str(tmp_path / "t")]) == 0
    rows = list(csv.DictReader((tmp_path / "t" / "trials.csv").open()))
    assert [r["trial"] for r in rows] == ["0", "1"] and all(r["state"] == "complete" for r in rows)
    assert all(0.01 <= float(r["optimizer.lr"]) <= 0.5 for r in rows)


def test_a_complete_config_takes_no_recommended_setting_later(tmp_path):
    """A run's config.yaml (and a preset) is complete: resuming it, or a job rebuilding it, must
    not add a rule's recommended setting for a key the run left at the default."""
    from bioplausible.experiments.jobs import Job, plan

    preset_jobs = [j for j in plan("np-fig4-fixed-w", "quick", out=tmp_path / "p") if j.label == "noise-0.01"]
    assert "feedback" not in preset_jobs[0].config["optimizer"]["groups"]  # the preset sets only forward
    assert preset_jobs[0].train_config()["optimizer"]["groups"] == preset_jobs[0].config["optimizer"]["groups"]
    path = tmp_path / "config.yaml"
    path.write_text(TrainConfig.from_dict({"rule": {"name": "np"}, "optimizer": {"groups": {"forward": {"lr": 0.0}}}},
                                          recommended=False).to_yaml())
    assert "feedback" not in load_config(path, recommended=False)["optimizer"]["groups"]
    job = Job(load_config(path, recommended=False).to_dict(), str(tmp_path / "r"), "np", 0)
    assert "feedback" not in job.train_config()["optimizer"]["groups"]
