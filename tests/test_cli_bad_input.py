"""A walk of the CLI through bad inputs: each is one line on stderr, exit 2, and nothing written.

Add a row when a command or an option is added: (name, arguments, expected exit status, words
the one line must contain). ``{tmp}`` in an argument is the test's temporary folder; the
``setup`` table prepares files some rows need. Every row also checks that no run directory
(``{tmp}/out`` or a default ``runs/`` folder) is left behind.
"""

from __future__ import annotations

import json
import os

import pytest

from bioplausible.cli import main

TRAIN = ["train", "--rule", "bp", "--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "1",
         "--batch-size", "40", "--quiet"]
OUT = ["--out", "{tmp}/out"]
COMPARE = ["compare", "--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "1", "--quiet"] + OUT
PRESET = """
name: tiny
config: {dataset: {name: mnist}, model: {spec: "mlp:784-16-10"}, epochs: 1, batch_size: 40}
runs: {bp: {name: bp}}
scales: {quick: {}, full: {}}
"""

CASES = [
    # ---- numbers that escape validation (#16 item 7)
    ("lr nan", TRAIN + OUT + ["--lr", "nan"], 2, ["optimizer.lr", "finite"]),
    ("lr inf", TRAIN + OUT + ["--lr", "inf"], 2, ["optimizer.lr", "finite"]),
    ("lr -inf via --set", TRAIN + OUT + ["--set", "optimizer.lr=-.inf"], 2, ["optimizer.lr", "finite"]),
    ("negative group lr", TRAIN[:2] + ["fa"] + TRAIN[3:] + OUT + ["--set", "optimizer.groups.feedback.lr=-0.1"],
     2, ["optimizer.groups.feedback.lr", ">= 0"]),
    ("non-numeric group lr", TRAIN + OUT + ["--set", "optimizer.groups.forward.lr=fast"],
     2, ["optimizer.groups.forward.lr", "number"]),
    ("misspelled group option", TRAIN + OUT + ["--set", "optimizer.groups.forward.momentun=0.9"],
     2, ["momentun", "did you mean 'momentum'"]),
    ("misspelled optimizer option", TRAIN + OUT + ["--set", "optimizer.momentun=0.9"], 2, ["momentun"]),
    ("negative momentum", TRAIN + OUT + ["--set", "optimizer.momentum=-1"], 2, ["momentum", ">= 0"]),
    ("inf decay", TRAIN[:2] + ["kp"] + TRAIN[3:] + OUT + ["--set", "rule.decay=inf"], 2, ["rule.decay", "finite"]),
    ("inf mirror rate", TRAIN[:2] + ["wm"] + TRAIN[3:] + OUT + ["--set", "rule.mirror_lr=.inf"],
     2, ["rule.mirror_lr", "finite"]),
    ("negative divergence threshold", TRAIN + OUT + ["--set", "divergence_threshold=-1"],
     2, ["divergence_threshold", "positive"]),
    ("nan divergence threshold", TRAIN + OUT + ["--set", "divergence_threshold=nan"],
     2, ["divergence_threshold", "finite"]),
    ("negative seed", TRAIN + OUT + ["--seed", "-1"], 2, ["seed", "0 to"]),
    ("huge seed", TRAIN + OUT + ["--seed", str(2**40)], 2, ["seed", "0 to"]),
    ("init normal:abc", TRAIN + OUT + ["--set", "model.init=normal:abc"], 2, ["init", "positive number"]),
    ("init normal:-1", TRAIN + OUT + ["--set", "model.init=normal:-1"], 2, ["init", "positive number"]),
    ("init normal:nan", TRAIN + OUT + ["--model", "mlp:784-16-10,init=normal:nan"], 2, ["init"]),
    ("device tpu", TRAIN + OUT + ["--device", "tpu"], 2, ["device", "cpu, cuda"]),
    ("device meta", TRAIN + OUT + ["--device", "meta"], 2, ["device"]),
    ("adam eps underflows in float16", TRAIN + OUT + ["--dtype", "float16", "--optimizer", "adam",
                                                      "--set", "optimizer.foreach=false"], 2, ["eps", "float16"]),
    ("fused half on cpu", TRAIN + OUT + ["--dtype", "float16", "--set", "optimizer.fused=true"], 2, ["fused"]),
    # ---- files and folders (#16 item 9)
    ("out is a file", TRAIN + ["--out", "{tmp}/afile"], 2, ["is a file"]),
    ("out inside a file", TRAIN + ["--out", "{tmp}/afile/run"], 2, ["is a file"]),
    ("data root is a file", TRAIN + OUT + ["--data-root", "{tmp}/afile"], 2, ["is a file", "data root"]),
    ("binary config", TRAIN + OUT + ["--config", "{tmp}/binary.yaml"], 2, ["config file", "not a text"]),
    ("config not a mapping", TRAIN + OUT + ["--config", "{tmp}/list.yaml"], 2, ["mapping"]),
    ("dataset.root wrong type", TRAIN + OUT + ["--set", "dataset.root=5"], 2, ["dataset.root", "string"]),
    ("dataset.subset zero", TRAIN + OUT + ["--set", "dataset.subset=0"], 2, ["subset"]),
    ("report --out file", ["report", "{tmp}/done", "--out", "{tmp}/afile"], 2, ["cannot write the report"]),
    ("report truncated summary", ["report", "{tmp}/torn", "--out", "{tmp}/out"], 2, ["summary.json", "cannot be read"]),
    ("report not a run", ["report", "{tmp}/empty", "--out", "{tmp}/out"], 2, ["not a run directory", "holds none"]),
    ("report folder with a damaged run", ["report", "{tmp}", "--out", "{tmp}/out"], 2, ["summary.json", "cannot be read"]),
    ("relax eta abc", ["relax-diagnostic", "--eta-x", "abc", "--out", "{tmp}/out"], 2, ["--eta-x", "abc"]),
    ("relax eta negative", ["relax-diagnostic", "--eta-x", "0.1,-1", "--out", "{tmp}/out"], 2, ["--eta-x"]),
    ("relax eta nan", ["relax-diagnostic", "--eta-x", "nan", "--out", "{tmp}/out"], 2, ["--eta-x"]),
    ("relax steps 0", ["relax-diagnostic", "--steps", "0", "--out", "{tmp}/out"], 2, ["--steps"]),
    ("relax out is a file", ["relax-diagnostic", "--out", "{tmp}/afile"], 2, ["is a file"]),
    # ---- compare and reproduce (#16 item 8)
    ("compare incompatible second rule", ["compare", "--rules", "bp,ar", "--dataset", "mnist", "--model", "lenet",
                                          "--epochs", "1", "--quiet"] + OUT, 2, ["ar"]),
    ("compare unknown second rule", ["compare", "--rules", "bp,nope"] + COMPARE[1:], 2, ["unknown rule"]),
    ("compare duplicate rules", ["compare", "--rules", "bp,fa,bp"] + COMPARE[1:], 2, ["'bp' twice"]),
    ("compare bad option of second rule", ["compare", "--rules", "bp,kp", "--set", "rule.decay=-1"] + COMPARE[1:],
     2, ["decay"]),
    ("reproduce workers 0", ["reproduce", "{tmp}/tiny.yaml", "--workers", "0"] + OUT, 2, ["--workers"]),
    ("compare workers -1", ["compare", "--rules", "bp", "--workers", "-1"] + COMPARE[1:], 2, ["--workers"]),
    ("reproduce non-empty out", ["reproduce", "{tmp}/tiny.yaml", "--out", "{tmp}/done"], 2, ["already exists"]),
    ("reproduce seeds 1,a", ["reproduce", "{tmp}/tiny.yaml", "--seeds", "1,a"] + OUT, 2, ["--seeds", "'a'"]),
    ("reproduce seeds -1", ["reproduce", "{tmp}/tiny.yaml", "--seeds", "-1"] + OUT, 2, ["--seeds", "seed"]),
    ("reproduce seeds twice", ["reproduce", "{tmp}/tiny.yaml", "--seeds", "1,1"] + OUT, 2, ["twice"]),
    ("preset not YAML", ["reproduce", "{tmp}/bad_yaml.yaml"] + OUT, 2, ["not valid YAML"]),
    ("preset binary", ["reproduce", "{tmp}/binary.yaml"] + OUT, 2, ["not a text"]),
    ("preset a list", ["reproduce", "{tmp}/list.yaml"] + OUT, 2, ["mapping"]),
    ("preset runs a list", ["reproduce", "{tmp}/runs_list.yaml"] + OUT, 2, ["runs must be a mapping"]),
    ("preset seeds strings", ["reproduce", "{tmp}/seeds_str.yaml"] + OUT, 2, ["seeds", "'x'"]),
    ("preset check of unknown run", ["reproduce", "{tmp}/check_run.yaml"] + OUT, 2, ["check 1", "zz"]),
    ("preset check without bound", ["reproduce", "{tmp}/check_bound.yaml"] + OUT, 2, ["check 1", "min"]),
    ("preset bad run config", ["reproduce", "{tmp}/run_cfg.yaml"] + OUT, 2, ["optimizer.lr"]),
    ("preset scale not a mapping", ["reproduce", "{tmp}/scale.yaml"] + OUT, 2, ["scale 'quick'"]),
    # ---- resume (#16 items 4 and 6)
    ("resume changes lr via --set", ["train", "--resume", "{tmp}/done", "--set", "optimizer.lr=0.5"], 2,
     ["cannot change optimizer.lr"]),
    ("resume changes --lr", ["train", "--resume", "{tmp}/done", "--lr", "0.5"], 2, ["cannot change optimizer.lr"]),
    ("resume changes --rule", ["train", "--resume", "{tmp}/done", "--rule", "fa"], 2, ["cannot change rule.name"]),
    ("resume changes batch size", ["train", "--resume", "{tmp}/done", "--batch-size", "7"], 2,
     ["cannot change batch_size"]),
    ("resume changes dataset", ["train", "--resume", "{tmp}/done", "--dataset", "fashion_mnist"], 2,
     ["cannot change dataset.name"]),
    ("resume shortens epochs", ["train", "--resume", "{tmp}/done2", "--epochs", "1"], 2, ["only extend"]),
    ("resume with --out", ["train", "--resume", "{tmp}/done", "--out", "{tmp}/out"], 2, ["--resume"]),
    ("resume empty checkpoint", ["train", "--resume", "{tmp}/ckpt_empty", "--epochs", "2"], 2, ["checkpoint", "corrupt"]),
    ("resume truncated checkpoint", ["train", "--resume", "{tmp}/ckpt_trunc", "--epochs", "2"], 2, ["checkpoint"]),
    ("resume random checkpoint", ["train", "--resume", "{tmp}/ckpt_random", "--epochs", "2"], 2, ["checkpoint"]),
    ("resume crafted checkpoint", ["train", "--resume", "{tmp}/ckpt_crafted", "--epochs", "2"], 2,
     ["cannot be loaded safely"]),
    ("resume foreign checkpoint", ["train", "--resume", "{tmp}/ckpt_foreign", "--epochs", "2"], 2,
     ["not a bioplausible checkpoint"]),
]


# ---- the commands added since the table above (sweep, report, tune, generate, ghost-diagnostics,
# data, and the trust of files): a row is (argv, files to create, a fragment the one line must hold).
# Files: {relative path: text | bytes | RUN} where RUN copies a finished run (``done``, ``bfa``)
# into that folder first (folders are made in order, so a damaged file can follow its copy).
# Every row: exit 2, one line, nothing created or changed, no marker file from any import.
SWEEP_CFG = 'config: {dataset: {name: mnist}, model: {spec: "mlp:784-16-10"}, epochs: 1, batch_size: 40}\n'
TUNE = ["tune", "--rule", "bp", "--dataset", "mnist", "--model", "mlp:784-16-10", "--epochs", "1",
        "--batch-size", "40", "--quiet", "--metric", "test_accuracy", "--out", "{tmp}/out"]
LR = ["--param", "optimizer.lr=loguniform:1e-3:1e-1"]
EVIL = 'os:system,command=touch {tmp}/PWNED'


class RUN(str):
    """A file-table value: copy the finished run of this name into the row's folder."""


def _pt(obj) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _tensor_rows():
    import torch

    return {"wrong": _pt({"W_gen.1": torch.zeros(3)}), "trace": _pt({"diag.trace_free": torch.ones(4)})}


_T = _tensor_rows()
GHOST_RUN = {"g/config.yaml": "rule: {name: ghost-ma}\n", "g/summary.json": '{"status": "completed"}',
             "g/metrics.jsonl": '{"kind": "epoch", "epoch": 1, "rule/vf_error/1": 0.5}\n'}

ROWS = [
    # sweep files
    (["sweep", "{tmp}/s.yaml"], {"s.yaml": SWEEP_CFG + "grid: {5: [1, 2]}\n"}, "grid key 5"),
    (["sweep", "{tmp}/s.yaml"], {"s.yaml": "preset: x.yaml\nscale: [quick]\n"}, "scale must be text"),
    (["sweep", "{tmp}/s.yaml"], {"s.yaml": SWEEP_CFG + "out: 5\n"}, "out must be text"),
    (["sweep", "{tmp}/s.yaml"], {"s.yaml": SWEEP_CFG + "grid: {optimizer.lr: 0.1}\n"}, "non-empty lists"),
    (["sweep", "{tmp}/nope.yaml"], {}, "does not exist"),
    (["sweep", "{tmp}/s.yaml", "--jobs", "0"], {"s.yaml": SWEEP_CFG}, "--jobs"),
    (["sweep", "{tmp}/s.yaml", "--address", "auto"], {"s.yaml": SWEEP_CFG}, "--address is for --executor ray"),
    (["sweep", "{tmp}/s.yaml", "--executor", "ray", "--address", "garbage:1", "--out", "{tmp}/out"],
     {"s.yaml": SWEEP_CFG}, "no Ray cluster answers"),
    (["sweep", "{tmp}/s.yaml", "--executor", "ray", "--address", "nonsense", "--out", "{tmp}/out"],
     {"s.yaml": SWEEP_CFG}, "HOST:PORT"),
    (["sweep", "{tmp}/s.yaml", "--out", "{tmp}/out"], {"s.yaml": SWEEP_CFG + f'grid: {{model.spec: ["{EVIL}"]}}\n'},
     "--trust-imports"),
    # report on damaged runs and sweep folders
    (["report", "{tmp}/r"], {"r": RUN("done"), "r/summary.json": '{"status": "completed", "final": {"test_accuracy": "high"}}'},
     "final.test_accuracy"),
    (["report", "{tmp}/r"], {"r": RUN("done"), "r/summary.json": '{"final": {}}'}, "status"),
    (["report", "{tmp}/r"], {"r": RUN("done"), "r/summary.json": '{"status": "completed", "epochs_completed": "two"}'},
     "epochs_completed"),
    (["report", "{tmp}/sw"], {"sw/sweep.json": '{"labels": ["bp"], "runs": [{"label": "bp", "seed": 0}]}'},
     "run entry 1 needs dir"),
    (["report", "{tmp}/sw"], {"sw/sweep.json": '{"labels": ["bp"], "runs": 3}'}, "runs must be a list"),
    (["report", "{tmp}/sw"], {"sw/sweep.json": '{"runs": [{"label": "bp", "seed": 0, "dir": "../../x"}]}'},
     "outside"),
    (["report", "{tmp}/sw"], {"sw/sweep.json": "{torn"}, "cannot be read as JSON"),
    (["report", "{tmp}/r"], {"r": RUN("done"), "r/metrics.jsonl": '{"kind": "epoch"}\nnot json\n{"kind": "epoch"}\n'},
     "line 2 is damaged"),
    (["report", "{tmp}/cmp/a", "{tmp}/cmp/b"], {"cmp/a": RUN("done"), "cmp/b": RUN("done2"), "cmp/report.md": "mine"},
     "already holds report.md"),
    # tune: everything checked before the first trial
    (TUNE + ["--param", "optimizer.lrr=loguniform:1e-3:1e-1"], {}, "lrr"),
    (TUNE + ["--param", "rule.decay=uniform:0:1"], {}, "--param rule.decay"),
    (TUNE + LR + ["--storage", "nosuch://x"], {}, "--storage"),
    (TUNE + LR + ["--write-preset", "{tmp}/missing/p.yaml"], {}, "does not exist"),
    (TUNE + LR + ["--write-preset", "{tmp}/p.txt"], {}, ".yaml"),
    (TUNE + LR + ["--trials", "0"], {}, "--trials"),
    (TUNE[:-1] + ["{tmp}/t"] + LR, {"t": RUN("done"), "t/trial-0/x": "earlier"}, "already holds trial-0"),
    (TUNE + LR + ["--config", "{tmp}/c.yaml"], {"c.yaml": f'model: {{spec: "{EVIL}"}}\n'}, "--trust-imports"),
    # generate
    (["generate", "{tmp}/done"], {}, "trained with 'bp'"),
    (["generate", "{tmp}"], {}, "not a run directory"),
    (["generate", "{tmp}/b"], {"b": RUN("bfa"), "b/rule_state.pt": b"PK\x03\x04 torn"}, "cannot be loaded safely"),
    (["generate", "{tmp}/b"], {"b": RUN("bfa"), "b/rule_state.pt": _T["wrong"]}, "not a chain of matrices"),
    (["generate", "{tmp}/b", "--out", "{tmp}/x.xyz"], {"b": RUN("bfa")}, "not an image format"),
    (["generate", "{tmp}/b", "--out", "{tmp}/plain"], {"b": RUN("bfa")}, "has no file extension"),
    (["generate", "{tmp}/b", "--out", "{tmp}/afile/x.png"], {"b": RUN("bfa")}, "cannot create folder"),
    (["generate", "{tmp}/b"], {"b": RUN("bfa"), "b/config.yaml": f'rule: {{name: bfa}}\nmodel: {{spec: "{EVIL}"}}\n'},
     "--trust-imports"),
    # ghost-diagnostics
    (["ghost-diagnostics", "{tmp}/done"], {}, "is a run of rule 'bp'"),
    (["ghost-diagnostics", "{tmp}"], {}, "no metrics.jsonl"),
    (["ghost-diagnostics", "{tmp}/g"], {**GHOST_RUN, "g/rule_state.pt": b"\x80\x02 torn"}, "cannot be loaded safely"),
    (["ghost-diagnostics", "{tmp}/g"], {**GHOST_RUN, "g/rule_state.pt": _T["trace"]}, "diag.trace_free has shape"),
    (["ghost-diagnostics", "{tmp}/g", "--out", "{tmp}/g.bmpx"], GHOST_RUN, "not an image format"),
    # ghost rules
    (TRAIN[:2] + ["ghost-ma"] + TRAIN[3:] + OUT + ["--set", "rule.divergence_threshold=abc"], {},
     "divergence_threshold must be a number"),
    (TRAIN[:2] + ["ghost-ma"] + TRAIN[3:] + OUT + ["--set", "rule.divergence_threshold=-1"], {},
     "divergence_threshold must be > 0"),
    # data
    (["data", "fetch"], {}, "needs dataset names"),
    (["data", "verify", "nosuch"], {}, "unknown dataset 'nosuch'"),
    (["data", "list", "--root", "{tmp}/afile"], {}, "is a file"),
    # files never import code (the flag that allows it is named)
    (["train", "--resume", "{tmp}/r"], {"r": RUN("done"), "r/config.yaml": 'dataset: {name: "os:system", command: "touch {tmp}/PWNED"}\n'},
     "--trust-imports"),
    (["reproduce", "{tmp}/p.yaml", "--out", "{tmp}/out"], {"p.yaml": PRESET.replace('"mlp:784-16-10"', f'"{EVIL}"')},
     "--trust-imports"),
    (TRAIN + OUT + ["--config", "{tmp}/c.yaml"], {"c.yaml": f'model: {{spec: "{EVIL}"}}\n'}, "--trust-imports"),
]


def _make_files(tmp, files, finished):
    import shutil

    made = []
    for rel, content in files.items():
        path = tmp / rel
        if isinstance(content, RUN):
            shutil.copytree(finished / str(content), path)
            made.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{tmp}", str(tmp)))
    return made


@pytest.mark.parametrize("argv,files,fragment", ROWS, ids=[" ".join(r[0][:3]) + f" #{i}" for i, r in enumerate(ROWS)])
def test_new_commands_bad_input(tmp, capsys, finished_runs, argv, files, fragment):
    _make_files(tmp, files, finished_runs)
    before = _snapshot(tmp)
    assert main([a.replace("{tmp}", str(tmp)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bioplausible: error:"), err
    assert fragment in err, f"{fragment!r} not in {err!r}"
    assert not (tmp / "out").exists() and not (tmp / "runs").exists(), "an output folder was left behind"
    assert not (tmp / "PWNED").exists(), "a file made the tool run code"
    assert _snapshot(tmp) == before, "an existing file was changed"


class _Crafted:
    """An object whose unpickling would run code (here: create a file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write(tmp, name, text):
    (tmp / name).write_text(text)


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Two small finished runs (1 and 2 epochs) made once, copied per test."""
    from conftest import make_synthetic_mnist

    base = tmp_path_factory.mktemp("finished")
    root = make_synthetic_mnist(base / "data")
    old = os.environ.get("BIOPLAUSIBLE_DATA")
    os.environ["BIOPLAUSIBLE_DATA"] = str(root)
    try:
        assert main(TRAIN + ["--out", str(base / "done")]) == 0
        assert main(TRAIN[:8] + ["2"] + TRAIN[9:] + ["--out", str(base / "done2")]) == 0
        assert main(TRAIN[:2] + ["bfa"] + TRAIN[3:] + ["--out", str(base / "bfa")]) == 0
    finally:
        if old is None:
            os.environ.pop("BIOPLAUSIBLE_DATA")
        else:
            os.environ["BIOPLAUSIBLE_DATA"] = old
    return base


@pytest.fixture
def tmp(tmp_path, synthetic_root, finished_runs, monkeypatch):
    import shutil

    import torch

    monkeypatch.chdir(tmp_path)
    for name in ("done", "done2"):
        shutil.copytree(finished_runs / name, tmp_path / name)
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    _write(tmp_path, "list.yaml", "- 1\n- 2\n")
    _write(tmp_path, "tiny.yaml", PRESET)
    _write(tmp_path, "bad_yaml.yaml", "name: [unclosed\n")
    _write(tmp_path, "runs_list.yaml", PRESET.replace("runs: {bp: {name: bp}}", "runs: [bp, fa]"))
    _write(tmp_path, "seeds_str.yaml", PRESET + "seeds: [0, x]\n")
    _write(tmp_path, "check_run.yaml", PRESET + "checks: [{type: min_value, run: zz, min: 1}]\n")
    _write(tmp_path, "check_bound.yaml", PRESET + "checks: [{type: min_value, run: bp}]\n")
    _write(tmp_path, "run_cfg.yaml", PRESET.replace("runs: {bp: {name: bp}}",
                                                    "runs: {bp: {name: bp, config: {optimizer: {lr: .nan}}}}"))
    _write(tmp_path, "scale.yaml", PRESET.replace("scales: {quick: {}, full: {}}", "scales: {quick: 3}"))
    torn = tmp_path / "torn"
    shutil.copytree(tmp_path / "done", torn)
    (torn / "summary.json").write_text((torn / "summary.json").read_text()[:40])
    good = (tmp_path / "done" / "checkpoint.pt").read_bytes()
    for name, payload in (("ckpt_empty", b""), ("ckpt_trunc", good[: len(good) // 2]),
                          ("ckpt_random", os.urandom(4096))):
        shutil.copytree(tmp_path / "done", tmp_path / name)
        (tmp_path / name / "checkpoint.pt").write_bytes(payload)
    shutil.copytree(tmp_path / "done", tmp_path / "ckpt_crafted")
    torch.save({"model": _Crafted(str(tmp_path / "PWNED")), "optimizer": {}, "epoch": 1, "step": 1},
               tmp_path / "ckpt_crafted" / "checkpoint.pt")
    shutil.copytree(tmp_path / "done", tmp_path / "ckpt_foreign")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "ckpt_foreign" / "checkpoint.pt")
    return tmp_path


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("name,args,status,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp, capsys, name, args, status, words):
    before = _snapshot(tmp)
    argv = [a.replace("{tmp}", str(tmp)) for a in args]
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("bioplausible: error:"), err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert not (tmp / "out").exists(), "a run directory was left behind"
    assert not (tmp / "runs").exists(), "a default run directory was left behind"
    assert not (tmp / "PWNED").exists(), "the crafted checkpoint ran code"
    assert _snapshot(tmp) == before, "an existing file was changed"


def test_the_finished_runs_are_valid(tmp):
    """The table's resume rows start from run directories that resume normally."""
    assert json.loads((tmp / "done" / "summary.json").read_text())["status"] == "completed"
    assert main(["train", "--resume", str(tmp / "done"), "--epochs", "2", "--quiet"]) == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
@pytest.mark.parametrize("what", ["out", "data"])
def test_read_only_folders(tmp, capsys, what):
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o500 if what == "out" else 0o000)
    try:
        args = TRAIN + (["--out", str(ro / "run")] if what == "out" else ["--data-root", str(ro), "--out",
                                                                            str(tmp / "out")])
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("not writable" in err or "cannot be read" in err), err
    finally:
        ro.chmod(0o700)
    assert not (ro / "run").exists() and not (tmp / "out").exists()


def test_a_missing_dataset_offline_creates_no_folders(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(root))
    monkeypatch.setenv("BIOPLAUSIBLE_MIRROR", "http://127.0.0.1:9")  # nothing listens: offline
    assert main(TRAIN + ["--out", str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err
    assert list(root.iterdir()) == [] and not (tmp_path / "out").exists()
    absent = tmp_path / "absent"
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(absent))
    assert main(TRAIN + ["--out", str(tmp_path / "out")]) == 2
    assert not absent.exists()


@pytest.mark.parametrize("what", ["out", "data"])
def test_permission_checks_as_any_user(tmp, capsys, monkeypatch, what):
    """The same refusals as test_read_only_folders, with os.access answering as for a normal user."""
    ro = tmp / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    args = TRAIN + (["--out", str(ro / "run")] if what == "out" else ["--data-root", str(ro), "--out",
                                                                        str(tmp / "out")])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert ("not writable" if what == "out" else "cannot be read") in err, err
    assert not (ro / "run").exists() and not (tmp / "out").exists()
