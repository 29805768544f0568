"""Packaging: citation, changelog, typing marker, extras, and a core install without any extra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import bioplausible

ROOT = Path(__file__).resolve().parents[1]
def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the install itself needs none of this
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: optional packages; the core must import and train every rule without them
OPTIONAL = ("numba", "scipy", "tensorboard", "ray", "optuna")


def test_citation_changelog_and_py_typed_ship_with_the_version():
    PYPROJECT = _pyproject()
    version = PYPROJECT["project"]["version"]
    assert version == bioplausible.__version__
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["version"] == version
    assert cff["title"] and cff["authors"] and cff["license"] == "MIT"
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert (ROOT / "src" / "bioplausible" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["bioplausible"]
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8")
    for name in ("CHANGELOG.md", "CITATION.cff", "examples", "docs"):
        assert name in manifest


def test_metadata_and_extras():
    project = _pyproject()["project"]
    assert project["authors"] and project["keywords"] and project["classifiers"]
    core = " ".join(project["dependencies"])
    for name in OPTIONAL:
        assert name not in core, f"{name} must be an extra, not a core dependency"
    extras = project["optional-dependencies"]
    assert extras["ghost"] == ["numba>=0.58"]
    covered = extras["all"][0]
    for name in ("ghost", "mat", "tensorboard", "sweep"):
        assert name in covered


NO_EXTRAS = r'''
import sys
for name in %r:
    sys.modules[name] = None  # as if not installed: importing it raises ImportError
import torch
import bioplausible as bp
from bioplausible.errors import ConfigError
from bioplausible.rules.ghost import mb_kernel

assert mb_kernel.AVAILABLE is False
try:
    bp.make("ghost-mb", kernel="numba")
    raise SystemExit("kernel='numba' without numba must be refused")
except ConfigError:
    pass
g = torch.Generator().manual_seed(0)
x = torch.randn(40, 12, generator=g)
y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
sigmoid = "mlp:12-8-4,activation=sigmoid,output_activation=sigmoid"
for rule in bp.list_rules():
    ghost = rule.startswith("ghost")
    model = bp.build_model(sigmoid if ghost else "mlp:12-8-4,activation=tanh")
    res = bp.fit(model, rule, (x[:32], y[:32]), (x[32:], y[32:]), epochs=1,
                 batch_size=1 if rule == "ghost-mb" else 16, lr=0.01,
                 loss="mse" if ghost else "cross_entropy")
    assert res.status == "completed", (rule, res.status)
    print(rule)
'''


def test_core_without_extras_imports_and_trains_every_rule():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", NO_EXTRAS % (OPTIONAL,)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trained = proc.stdout.split()
    assert set(trained) == set(bioplausible.list_rules())
