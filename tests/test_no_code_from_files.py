"""No file the tool reads makes it import or run code the user did not ask for in this invocation.

Every case below hands the CLI a file (a run folder's config.yaml, a --config file, a preset,
a sweep file, a pickle, a module lying in the working directory) that would create a marker
file if anything in it were imported or unpickled. Each must end in one line on stderr with
exit status 2 and leave no marker; the flag that allows imports is named in the line.
"""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
import torch

from bioplausible.cli import main


def _evil(marker):
    return f"os:system,command=touch {marker}"


def _run_folder(folder, config_yaml):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(textwrap.dedent(config_yaml))
    return folder


@pytest.fixture
def box(tmp_path, monkeypatch, synthetic_root):
    """A working directory holding an ``evilmod.py`` that creates MARKER when imported."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    marker = tmp_path / "MARKER"
    (tmp_path / "evilmod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "def build(**kw):\n    raise SystemExit('evilmod ran')\n")
    yield tmp_path, marker
    sys.modules.pop("evilmod", None)


def _refused(capsys, argv, *words):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bioplausible: error:"), err
    for w in words:
        assert w in err, (w, err)
    return err


MODEL_RUN = """\
rule: {name: bp}
dataset: {name: mnist}
model: {spec: "SPEC"}
epochs: 1
"""
DATA_RUN = """\
rule: {name: bp}
dataset: {name: "os:system", command: "touch MARKER"}
model: {spec: "mlp:784-16-10"}
epochs: 1
"""


def test_resume_refuses_a_model_import_path_in_config_yaml(box, capsys):
    tmp, marker = box
    run = _run_folder(tmp / "run", MODEL_RUN.replace("SPEC", _evil(marker)))
    _refused(capsys, ["train", "--resume", run, "--epochs", "2"], "model.spec", "--trust-imports")
    assert not marker.exists()


def test_resume_refuses_a_dataset_import_path_in_config_yaml(box, capsys):
    tmp, marker = box
    run = _run_folder(tmp / "run", DATA_RUN.replace("MARKER", str(marker)))
    _refused(capsys, ["train", "--resume", run], "dataset.name", "--trust-imports")
    assert not marker.exists()


def test_the_working_directory_module_is_not_imported_even_when_trusted(box, capsys):
    tmp, marker = box
    run = _run_folder(tmp / "run", MODEL_RUN.replace("SPEC", "evilmod:build"))
    _refused(capsys, ["train", "--resume", run], "model.spec", "--trust-imports")
    # trusting the file still never puts the working directory (the downloaded folder) on the path
    _refused(capsys, ["train", "--resume", run, "--trust-imports"], "cannot import 'evilmod'", "PYTHONPATH")
    _refused(capsys, ["train", "--rule", "bp", "--dataset", "mnist", "--model", "evilmod:build",
                      "--out", tmp / "out"], "cannot import 'evilmod'")
    assert not marker.exists() and "evilmod" not in sys.modules


def test_generate_refuses_an_import_path_and_never_unpickles(box, capsys):
    tmp, marker = box
    run = _run_folder(tmp / "gen", MODEL_RUN.replace("SPEC", _evil(marker)).replace("bp}", "bfa}"))
    _refused(capsys, ["generate", run], "model.spec", "--trust-imports")

    class Crafted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    run = _run_folder(tmp / "gen2", MODEL_RUN.replace("SPEC", "mlp:784-16-10").replace("bp}", "bfa}"))
    torch.save({"model": {}, "optimizer": {}, "epoch": 1, "step": 1,
                "rule": {"owned": {"W_gen.1": Crafted()}}}, run / "checkpoint.pt")
    _refused(capsys, ["generate", run], "checkpoint", "cannot be loaded safely")
    torch.save({"W_gen.1": Crafted()}, run / "rule_state.pt")
    _refused(capsys, ["generate", run], "rule state", "cannot be loaded safely")
    assert not marker.exists()


def test_a_config_file_preset_and_sweep_file_cannot_import(box, capsys):
    tmp, marker = box
    evil = _evil(marker)
    (tmp / "cfg.yaml").write_text(MODEL_RUN.replace("SPEC", evil))
    _refused(capsys, ["train", "--config", tmp / "cfg.yaml", "--out", tmp / "out"], "config file", "--trust-imports")
    _refused(capsys, ["compare", "--rules", "bp", "--config", tmp / "cfg.yaml", "--out", tmp / "out"],
             "--trust-imports")
    _refused(capsys, ["tune", "--config", tmp / "cfg.yaml", "--param", "optimizer.lr=loguniform:1e-3:1e-1",
                      "--trials", "1", "--out", tmp / "out"], "--trust-imports")
    preset = f"""\
    name: evil
    config: {{dataset: {{name: mnist}}, model: {{spec: "mlp:784-16-10"}}, epochs: 1}}
    runs: {{bp: {{name: bp, config: {{model: {{spec: "{evil}"}}}}}}}}
    scales: {{quick: {{}}}}
    """
    (tmp / "evil_preset.yaml").write_text(textwrap.dedent(preset))
    _refused(capsys, ["reproduce", tmp / "evil_preset.yaml", "--out", tmp / "out"], "preset file", "--trust-imports")
    (tmp / "grid.yaml").write_text(textwrap.dedent(f"""\
    config: {{dataset: {{name: mnist}}, model: {{spec: "mlp:784-16-10"}}, epochs: 1}}
    grid: {{model.spec: ["mlp:784-8-10", "{evil}"]}}
    seeds: [0]
    """))
    _refused(capsys, ["sweep", tmp / "grid.yaml", "--out", tmp / "out"], "sweep file", "--trust-imports")
    (tmp / "data.yaml").write_text(f"config: {{dataset: {{name: 'os:system', command: 'touch {marker}'}}}}\n"
                                   "seeds: [0]\n")
    _refused(capsys, ["sweep", tmp / "data.yaml", "--out", tmp / "out"], "dataset.name", "--trust-imports")
    (tmp / "via_config.yaml").write_text("config: cfg.yaml\nseeds: [0]\n")
    _refused(capsys, ["sweep", tmp / "via_config.yaml", "--out", tmp / "out"], "--trust-imports")
    (tmp / "via_preset.yaml").write_text("preset: evil_preset.yaml\nseeds: [0]\n")
    _refused(capsys, ["sweep", tmp / "via_preset.yaml", "--out", tmp / "out"], "preset file", "--trust-imports")
    assert not marker.exists() and not (tmp / "out").exists()


def test_python_api_refuses_file_imports_unless_trusted(tmp_path):
    """``trust_imports=True`` is the explicit opt-in; a spec written in Python needs none."""
    import bioplausible as bp
    from bioplausible.engine.config import TrainConfig, load_config
    from bioplausible.experiments.jobs import plan, resume_job
    from bioplausible.imports import UntrustedImportError

    path = tmp_path / "config.yaml"
    path.write_text(MODEL_RUN.replace("SPEC", "torch.nn:Linear,in_features=3,out_features=2"))
    with pytest.raises(UntrustedImportError, match="trust_imports=True"):
        load_config(path)
    with pytest.raises(UntrustedImportError):
        resume_job(tmp_path)
    assert load_config(path, trust_imports=True)["model"]["spec"].startswith("torch.nn:Linear")
    assert resume_job(tmp_path, trust_imports=True).resume
    own = TrainConfig.from_dict({"model": {"spec": "torch.nn:Linear,in_features=3,out_features=2"}})
    assert plan(own, out=tmp_path / "own")[0].config["model"]["spec"].startswith("torch.nn")
    assert isinstance(bp.build_model("torch.nn:Linear,in_features=3,out_features=2"), torch.nn.Linear)


def test_a_trusted_config_file_imports_as_asked(tmp_path, monkeypatch, synthetic_root, capsys):
    """With --trust-imports the same file is used: the flag is a real opt-in, not a dead end."""
    pkg = tmp_path / "lib"
    pkg.mkdir()
    (pkg / "trusted_nets.py").write_text(textwrap.dedent("""\
        from torch import nn
        def build(input_shape=None, num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))
        """))
    monkeypatch.syspath_prepend(str(pkg))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("rule: {name: bp}\ndataset: {name: mnist}\nmodel: {spec: 'trusted_nets:build'}\n"
                   "epochs: 1\nbatch_size: 40\nprogress: false\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--trust-imports"]) == 0
    assert (tmp_path / "r" / "summary.json").is_file()
    assert main(["train", "--resume", str(tmp_path / "r"), "--epochs", "2", "--quiet"]) == 2
    assert main(["train", "--resume", str(tmp_path / "r"), "--epochs", "2", "--quiet", "--trust-imports"]) == 0
    sys.modules.pop("trusted_nets", None)


def test_python_m_does_not_import_from_the_working_directory(box):
    """``python -m bioplausible`` run inside a downloaded folder: its evilmod.py stays unimported."""
    import subprocess

    tmp, marker = box
    run = _run_folder(tmp / "run", MODEL_RUN.replace("SPEC", "evilmod:build"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "bioplausible", "train", "--resume", str(run), "--trust-imports"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cannot import 'evilmod'" in proc.stderr, proc.stderr
    assert not marker.exists()
