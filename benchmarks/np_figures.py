"""Figures 2 and 4 of Lansdell, Prakash & Kording 2020 (node-perturbation-learned feedback).

``fig2 RUN_DIR`` (now ``bioplausible figure np-fig2 RUN_DIR``): the four panels of Fig. 2 from a ``bioplausible reproduce np-fig2-mnist`` run
directory (its ``np-seed*``, ``fa-seed*`` and ``bp-seed*`` runs): (A) relative error
‖W − B‖/‖W‖, (B) the angle between the rule's ΔW and BP's gradient (the probe's, matrix form)
with NP's Fig. 2B signal angle ∠(ẽB, ẽW) dashed, (C) sign congruence, per learned layer over
training, and (D) test error per epoch. Checks at the last probe: NP below FA in relative error
and angle, above it in sign congruence, in every layer whose feedback is used.

``fig4``: fixed W (App. B, Fig. 4): a 784-50-20-10 sigmoid MLP with Xavier-initialised, frozen
forward weights on MNIST, B learned by online ridge regression (γ = 0.1), batch 32; (A) noise
sweep over c_h, (B) width sweep 784-N-50-10 at c_h = 0.01. Check: the top layer's relative error
at the smallest noise ≤ 5 %.

``fig4 --from RUN_DIR``: the same panels from a ``bioplausible reproduce np-fig4-fixed-w`` run
directory (its probes' per-layer relative error and sign congruence), without training.

    python benchmarks/np_figures.py fig2 /tmp/np_fig2_quick --tag quick
    python benchmarks/np_figures.py fig4 --quick
    python benchmarks/np_figures.py fig4 --from /tmp/fig4 --tag preset_quick

Writes ``benchmarks/results/np_fig{2,4}_<tag>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def git_commit() -> str | None:
    from bioplausible.experiments.reproduce import git_commit as commit

    return commit()


def _records(run: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r for r in lines if r["kind"] == "probe"], [r for r in lines if r["kind"] == "epoch"]


def fig2(run_dir: Path, tag: str, out: Path) -> dict:
    """``bioplausible figure np-fig2 RUN_DIR`` (the package's code), written under this script's names."""
    from bioplausible.experiments.paper_figures import np_fig2

    result = np_fig2(run_dir, out / f"np_fig2_{tag}", "png")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"np_fig2_{tag}.json").write_text(json.dumps(result, indent=2, default=str))
    for c in result["checks"]:
        print(f"{c['metric']}: np {c['np']:.4g} vs {c.get('fa', c.get('bp')):.4g} ({c['want']}): "
              f"{'ok' if c['passed'] else 'no'}")
    return result


def _fixed_w(spec: str, c_h: float, steps: int, x, y, every: int, seed: int = 0) -> list[dict]:
    import bioplausible as bp

    torch.manual_seed(seed)
    model = bp.build_model(spec, activation="sigmoid", init="xavier")
    rule = bp.make("np", c_h=c_h, solver="ridge", gamma=0.1)
    rule.set_seed(seed)
    model = rule.prepare(model, example=x[:2])
    rule.build_optimizer(model, {"name": "sgd", "lr": 1.0, "groups": {"forward": {"lr": 0.0}}})  # W fixed
    loss = bp.get_loss("mse_half_sum")
    g = torch.Generator().manual_seed(seed + 1)
    trace = []
    for s in range(1, steps + 1):
        idx = torch.randint(0, x.shape[0], (32,), generator=g)
        rule.train_step(model, x[idx], y[idx], loss)
        if s % every == 0 or s == steps:
            with torch.no_grad():
                rel = {n: float((lay.weight - lay.feedback).norm() / lay.weight.norm())
                       for n, lay in zip(rule._names[1:], rule._layers[1:])}
            trace.append({"step": s, "relative_error": rel, **rule.metrics(model)})
    return trace


def fig4(quick: bool, tag: str, out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import bioplausible as bp

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    data = bp.load_dataset("mnist", flatten=True, normalize="unit", val_size=0)
    x, y = data.train.x, data.train.y
    noise = [1e-3, 1e-2, 1e-1] if quick else [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    widths = [20, 50, 100] if quick else [20, 50, 100, 200, 500]
    steps, width_steps = (30_000, 6_000) if quick else (100_000, 30_000)
    every = 1000
    load, commit = os.getloadavg(), git_commit()  # before anything is written
    t0 = time.time()
    sweep = {f"c_h={c:g}": _fixed_w("mlp:784-50-20-10", c, steps, x, y, every) for c in noise}
    wsweep = {f"N={n}": _fixed_w(f"mlp:784-{n}-50-10", 0.01, width_steps, x, y, every) for n in widths}
    elapsed = time.time() - t0
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for label, trace in sweep.items():
        for j, layer in enumerate(trace[0]["relative_error"]):
            ax[0 if j == len(trace[0]["relative_error"]) - 1 else 1].plot(
                [t["step"] for t in trace], [t["relative_error"][layer] for t in trace], label=label)
    for label, trace in wsweep.items():
        top = list(trace[0]["relative_error"])[-1]
        ax[2].plot([t["step"] for t in trace], [t["relative_error"][top] for t in trace], label=label)
    for a, title in zip(ax, ("(A) top layer ‖W−B‖/‖W‖, noise sweep", "(A') lower layer, noise sweep",
                             "(B) top layer, width sweep 784-N-50-10, c_h=0.01")):
        a.set_title(title)
        a.set_yscale("log")
        a.set_xlabel("step (batch 32)")
        a.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"np_fig4_{tag}.png", dpi=110)
    smallest = sweep[f"c_h={noise[0]:g}"][-1]["relative_error"]
    top = list(smallest)[-1]
    check = {"metric": f"top-layer relative error at c_h={noise[0]:g}", "value": smallest[top],
             "max": 0.05, "passed": smallest[top] <= 0.05}
    result = {"noise_sweep": sweep, "width_sweep": wsweep, "steps": steps, "width_steps": width_steps,
              "check": check, "seconds": elapsed, "load_average_before": load,
              "load_average_after": os.getloadavg(), "command": " ".join(["python"] + sys.argv),
              "commit": commit}
    lines = [f"# Fig. 4 (fixed W, B by online ridge regression), {tag}", "",
             (f"Command: `{result['command']}` at commit {result['commit']}; {elapsed:.0f} s; load average "
             f"before {load}."), "",
             "| run | steps | relative error per learned layer (last) |", "|---|---:|---|"]
    for label, trace in {**sweep, **wsweep}.items():
        rel = ", ".join(f"{k}: {v:.4f}" for k, v in trace[-1]["relative_error"].items())
        lines.append(f"| {label} | {trace[-1]['step']} | {rel} |")
    verdict = "pass" if check["passed"] else "FAIL"
    lines += ["", f"Check: {check['metric']} = {check['value']:.4f} (at most 0.05): {verdict}"]
    (out / f"np_fig4_{tag}.json").write_text(json.dumps(result, indent=2))
    (out / f"np_fig4_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


def fig4_from_runs(run_dir: Path, tag: str, out: Path) -> dict:
    """``bioplausible figure np-fig4 RUN_DIR`` (the package's code), written under this script's names."""
    from bioplausible.experiments.paper_figures import np_fig4

    result = np_fig4(run_dir, out / f"np_fig4_{tag}", "png")
    print(json.dumps(result["final"], indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p2 = sub.add_parser("fig2")
    p2.add_argument("run_dir")
    p2.add_argument("--tag", default="quick")
    p4 = sub.add_parser("fig4")
    p4.add_argument("--quick", action="store_true")
    p4.add_argument("--from", dest="run_dir", default=None, help="draw from a reproduce run directory")
    p4.add_argument("--tag", default=None)
    for p in (p2, p4):
        p.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.cmd == "fig2":
        fig2(Path(args.run_dir), args.tag, Path(args.out))
    elif args.run_dir:
        fig4_from_runs(Path(args.run_dir), args.tag or "preset", Path(args.out))
    else:
        fig4(args.quick, args.tag or ("quick" if args.quick else "full"), Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
