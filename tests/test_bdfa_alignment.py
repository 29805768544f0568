"""benchmarks/paper_scale/bdfa_alignment.py: when BDFA overtakes DFA, and runs without probes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ba():
    spec = importlib.util.spec_from_file_location("bdfa_alignment", ROOT / "benchmarks" / "paper_scale" / "bdfa_alignment.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bdfa_alignment"] = mod
    spec.loader.exec_module(mod)
    return mod


def _run(accs, probes=()):
    return SimpleNamespace(epochs=[{"epoch": i + 1, "test_accuracy": a} for i, a in enumerate(accs)], probes=list(probes),
                           summary={"steps": 10 * len(accs), "epochs_completed": len(accs)})


def test_overtakes_is_the_first_epoch_from_which_bdfa_stays_above(ba):
    dfa = [_run([50, 60, 70, 80, 81]), _run([50, 60, 70, 80, 81])]
    assert ba.overtakes([_run([40, 65, 69, 82, 83])], dfa) == 4      # above at 2, below at 3, above from 4 on
    assert ba.overtakes([_run([40, 50, 60, 70, 80])], dfa) is None   # never above at the end
    assert ba.overtakes([_run([55, 61, 71, 81, 82])], dfa) == 1


def test_angle_series_needs_probes(ba):
    with pytest.raises(ba.UserError, match="no probes"):
        ba.angle_series([_run([1, 2])])
    probes = [{"kind": "probe", "step": s, "grad_angle/1.weight": a, "grad_angle/3.weight": 0.0}
              for s, a in ((10, 80.0), (20, 60.0))]
    xs, ys = ba.angle_series([_run([1, 2], probes)])
    assert xs == [1.0, 2.0] and ys == [[80.0, 60.0]]   # the exact output layer is left out of the mean
