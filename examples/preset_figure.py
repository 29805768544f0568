"""Run a paper's preset from Python and draw its figure.

The preset ``np-fig2-mnist`` is Fig. 2 of Lansdell, Prakash & Kording 2020 ("Learning to solve
the credit assignment problem", ICLR 2020): node-perturbation-learned feedback (NP) against
feedback alignment and backprop on a 784-50-20-10 sigmoid network. ``plan`` turns the preset into
jobs (one per rule and seed), ``run_job`` trains one and writes its run directory,
``aggregate`` gives mean ± std per rule, and ``write_report`` draws the learning curves and the
angle to BP's gradient (the paper's Fig. 2A-B).

    python examples/preset_figure.py                # quick scale: 20 epochs, seed 0 (minutes)
    python examples/preset_figure.py --tiny         # synthetic MNIST-format files, 2 epochs (seconds)

The command line: ``bioplausible reproduce np-fig2-mnist --scale quick``.
"""

from __future__ import annotations

import gzip
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

import bioplausible as bp
from bioplausible.experiments.jobs import aggregate, plan, run_job
from bioplausible.experiments.report import load_run, write_report

TINY = "--tiny" in sys.argv or os.environ.get("BIOPLAUSIBLE_EXAMPLE_TINY") == "1"


def write_fake_mnist(root: Path, n_train: int = 300, n_test: int = 100) -> None:
    """MNIST's four IDX files with random digits-shaped data (only for the tiny run)."""
    rng = np.random.default_rng(0)
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for k in range(10):  # a bright bar per class, so there is something to learn
            images[labels == k, 2 * k + 4, 4:24] = 255
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(np.array([0, 0, 8, 3], np.uint8).tobytes() + np.array([n, 28, 28], ">i4").tobytes()
                    + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([0, 0, 8, 1], np.uint8).tobytes() + np.array([n], ">i4").tobytes()
                    + labels.tobytes())


def main() -> None:
    preset = bp.get_preset("np-fig2-mnist")
    print(f"{preset.name}: {preset.title} ({preset.paper})")
    out = Path(tempfile.mkdtemp(prefix="np-fig2-")) if TINY else Path("runs/example-np-fig2")
    jobs = plan(preset, "quick", seeds=[0], out=out)
    if TINY:  # two epochs on the synthetic files, through the same job machinery
        warnings.filterwarnings("ignore", message=".*warm-up.*")  # NP's 1000-step warm-up outlasts it
        write_fake_mnist(out / "data")
        jobs = [j.__class__(**{**j.__dict__, "config": {**j.config, "epochs": 2, "probe_every": 5,
                                                        "dataset": {**j.config["dataset"],
                                                                    "root": str(out / "data")}}})
                for j in jobs]
    summaries = [run_job(job, progress=False) for job in jobs]
    for label, metrics in aggregate(summaries).items():
        mean, std, n = metrics["test_accuracy"]
        print(f"{label:4} test accuracy {mean:.2f} ± {std:.2f} % (n = {n})")
    runs = [load_run(s["run_dir"], label=s["job"]["label"]) for s in summaries]
    files = write_report(runs, out, title=preset.title)
    print("figure:", files["plot"], "report:", files["report"])


if __name__ == "__main__":
    main()
