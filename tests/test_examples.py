"""The scripts in examples/ run (on tiny data, as ``BIOPLAUSIBLE_EXAMPLE_TINY=1`` asks) so that they
never rot. They share one subprocess: one import of torch, and the example rule ``drtp`` stays out
of the test process's registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

RUNNER = r'''
import runpy, sys, traceback
for path in sys.argv[1:]:
    print(f"=== {path}", flush=True)
    try:
        runpy.run_path(path, run_name="__main__")
    except BaseException:
        traceback.print_exc()
        print(f"!!! FAILED {path}", flush=True)
'''

#: what each example must print: evidence that it did its job, not only that it exited
EXPECT = {
    "own_model_convert.py": ["fa: test accuracy", "kp: test accuracy", "wm: test accuracy"],
    "multi_seed_compare.py": ["bp ", "fa ", "dfa ", "usf ", "(n = 2)"],
    "preset_figure.py": ["np   test accuracy", "figure:", "curves.png"],
    "probe_own_loop.py": ["hidden layer's update", "sign congruence"],
    "new_rule.py": ["drtp  test accuracy", "bp    test accuracy"],
    "stacked_seeds.py": ["np-seed2", "largest difference 0 points"],
}


def test_every_example_is_listed():
    assert {p.name for p in EXAMPLES} == set(EXPECT)


def test_examples_run_on_tiny_data(tmp_path):
    env = {**os.environ, "BIOPLAUSIBLE_EXAMPLE_TINY": "1", "OMP_NUM_THREADS": "1",
           "TMPDIR": str(tmp_path), "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", RUNNER, *map(str, EXAMPLES)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0 and "!!! FAILED" not in out, out[-3000:] + proc.stderr[-3000:]
    sections = {Path(s.split("\n", 1)[0].strip()).name: s for s in out.split("=== ")[1:]}
    for name, needles in EXPECT.items():
        for needle in needles:
            assert needle in sections[name], (name, needle, sections[name][-1500:])
    curves = [p for p in tmp_path.rglob("curves.png")]
    assert curves and curves[0].stat().st_size > 1000  # the preset example drew its figure
