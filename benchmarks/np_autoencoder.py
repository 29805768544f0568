"""Fig. 3B/C of Lansdell, Prakash & Kording 2020 from the runs of preset ``np-table2a-autoencoder``.

The training and Table 2a itself are the preset (``bioplausible reproduce np-table2a-autoencoder
--scale quick --out RUN_DIR``: 11 runs, the paper's numbers beside ours and the check "FA is the
worst method"). This script reads that run directory — each run's ``config.yaml`` and trained
``model.pt`` — and draws, for one seed of every run:

* the 2-D codes (the output of the bottleneck layer, identity activation) of the first 2000
  test images, coloured by their digit label (``split.labels`` of the reconstruction task);
* the reconstructions of the first 8 test images under the originals.

    bioplausible figure np-autoencoder RUN_DIR      # what this script now calls

Writes ``<out>/np-table2a-autoencoder_<tag>_codes.png`` and ``..._reconstructions.png`` (out:
``benchmarks/results/presets`` by default) and a JSON naming the runs drawn with their test loss.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "presets"
PRESET = "np-table2a-autoencoder"


def main(argv: list[str] | None = None) -> int:
    """``bioplausible figure np-autoencoder RUN_DIR`` (the package's code) into ``--out/<tag>``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the --out folder of `bioplausible reproduce np-table2a-autoencoder`")
    parser.add_argument("--tag", default="quick_seed0")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from bioplausible.experiments.paper_figures import draw

    result = draw("np-autoencoder", args.run_dir, args.out / f"{PRESET}_{args.tag}")
    print("\n".join(result["figure"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
