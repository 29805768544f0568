"""``bioplausible reproduce --all``: every registered preset as a sweep, written up in REPRODUCTION.md.

Each preset runs as a sweep in ``<out>/<preset>`` (so a re-launch skips finished runs and
resumes the rest), and the write-up gives, per preset, the command, the paper's numbers beside
ours (mean ± std over the seeds), the preset's checks passed and failed, and the runs that did
not complete. Presets are selected with ``--only`` / ``--skip``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from .presets import (
    NOT_COMPARABLE,
    check_metrics,
    comparable_to_paper,
    evaluate_checks,
    get_preset,
    list_presets,
    mean_std_text,
    metric_digits,
    metric_label,
)

# the full-scale part of REPRODUCTION.md (written by benchmarks/paper_scale/collect.py), kept by --all
FULL_SCALE_BEGIN = "<!-- full-scale sections begin -->"
FULL_SCALE_END = "<!-- full-scale sections end -->"


def git_commit() -> str | None:
    """The short commit of the checkout this package runs from (with ``+dirty`` when it has changes),
    None outside a git checkout: recorded in every write-up so that a result names its code."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10, check=False)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def full_scale_part(markdown: Path) -> str:
    """The full-scale sections of an existing write-up (empty when there are none)."""
    text = markdown.read_text() if markdown.is_file() else ""
    if FULL_SCALE_BEGIN not in text or FULL_SCALE_END not in text:
        return ""
    return text[text.index(FULL_SCALE_BEGIN):text.index(FULL_SCALE_END) + len(FULL_SCALE_END)] + "\n\n"


def select(only: str | None, skip: str | None) -> list[str]:
    names = list_presets()
    wanted = [n.strip() for n in (only or "").split(",") if n.strip()]
    dropped = [n.strip() for n in (skip or "").split(",") if n.strip()]
    for n in wanted + dropped:
        if n not in names:
            import difflib

            close = difflib.get_close_matches(n, names, n=1)
            raise UserError(f"unknown preset {n!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                            + "; see `bioplausible list presets`")
    chosen = [n for n in names if (not wanted or n in wanted) and n not in dropped]
    if not chosen:
        raise UserError("--only/--skip leave no preset to run")
    return chosen


def _check_text(check: dict[str, Any]) -> str:
    if check["text"] != "not measured":
        return check["text"]
    from .presets import check_runs

    return f"{check['type']} on {', '.join(check_runs(check))}: not measured (no completed seed of a run)"


def preset_section(name: str, folder: Path, command: str) -> tuple[str, dict[str, Any]]:
    """The Markdown of one preset's sweep folder, and its check results."""
    from .jobs import mean_std
    from .sweep_report import _fmt, _metric, _num, collect, tables

    preset = get_preset(name)
    index, groups = collect(folder)
    t = tables(index, groups)
    metric = t["metric"]
    stats = {label: {m: st[m] for m in (metric, "best_test_accuracy", "grad_angle") if m in st}
             for label, st in t["stats"].items()}
    # a check's metric other than the paper's (test_accuracy beside test_loss, relative_error_top, ...)
    for m in sorted({"test_accuracy", *check_metrics(preset)}):
        for label, runs in groups.items():
            if label in stats and m not in stats[label]:
                stats[label][m] = mean_std(_metric(r["run"], m) for r in runs
                                           if r["status"] == "completed" and r["run"] is not None)
    checks = evaluate_checks(preset, stats, index.get("scale"))
    lines = [f"## {preset.title}", "", (f"Preset `{name}`, scale `{index.get('scale')}`, seeds "
                                        f"{index.get('seeds')}. Paper: {preset.paper}."), "",
             f"Command: `{command}`", "",
             f"| run | ours: {metric_label(metric)} (mean ± std, n) | paper | ours − paper | hidden-layer angle to BP (°) | runs |",
             "|---|---|---|---|---|---|"]
    for row, st in zip(t["rows"], t["stats"].values()):
        d = metric_digits(metric)
        diff = (_num(row["diff"], -d) if row["diff"] is not None else
                "–" if row["paper"] is None or row["comparable"] else NOT_COMPARABLE)
        lines.append(f"| {row['label']} | {_fmt(st[metric], d)} (n={st['n']}) | {_num(row['paper'], d)} | {diff} | "
                     f"{_fmt(st['hidden_angle'], 1)} | {row['status']} |")
    values = (preset.paper_results.get("values") or {})
    for label, paper in values.items():
        if label not in t["stats"] and paper is not None:
            lines.append(f"| {label} | not run (no such run in this preset yet) | {paper} | – | – | – |")
    note = preset.paper_results.get("note")
    if note:
        lines += ["", f"Paper values: {note}"]
    if checks:
        from .verdicts import mark

        lines += ["", "Checks:"] + [f"- [{mark(c)}] {_check_text(c)}" for c in checks]
    else:
        lines += ["", "Checks: none declared by the preset."]
    bad = [(label, r) for label, runs in groups.items() for r in runs if r["status"] != "completed"]
    if bad:
        lines += ["", "Runs that did not complete:"]
        for label, r in bad:
            msg = r["run"].summary.get("message", "") if r["run"] is not None else ""
            lines.append(f"- `{label}` seed {r['seed']}: {r['status']}" + (f" ({msg})" if msg else ""))
    return "\n".join(lines), {"checks": checks, "stats": t["stats"]}


def reproduce_all(names: list[str], scale: str, seeds: list[int] | None, jobs: int, out: Path,
                  markdown: Path, command: str, executor: str = "local", stack: bool = False) -> dict[str, Any]:
    """Run every preset in ``names`` (each a resumable sweep) and write ``markdown``."""
    from .sweep import SweepSpec, run_sweep

    results: dict[str, Any] = {}
    sections = []
    for name in names:
        print(f"reproduce --all: {name}", file=sys.stderr, flush=True)
        spec = SweepSpec(name=name, preset=name, scale=scale, seeds=seeds)
        folder = out / name
        one = f"bioplausible reproduce {name} --scale {scale}" + (
            f" --seeds {','.join(map(str, seeds))}" if seeds else "") + (f" --jobs {jobs}" if jobs > 1 else "")
        try:
            run_sweep(spec, out=folder, jobs=jobs, executor=executor, stack=stack)
        except UserError as exc:  # e.g. its dataset is not on this machine: say so, run the others
            reason = " ".join(str(exc).split())
            print(f"reproduce --all: {name} not run: {reason}", file=sys.stderr, flush=True)
            short = reason.split(":")[0]  # the full message (with this machine's paths) went to stderr
            sections.append(f"## {get_preset(name).title}\n\nPreset `{name}`: **not run** here: {short}.\n\n"
                            f"Command: `{one}`")
            results[name] = {"checks": [], "not_run": reason}
            continue
        from .sweep_report import write_sweep_report

        write_sweep_report(folder, title=name)
        text, res = preset_section(name, folder, one)
        sections.append(text)
        results[name] = res
    from .verdicts import counted

    passed = sum(c["passed"] for r in results.values() for c in r["checks"])
    total = sum(counted(c) for r in results.values() for c in r["checks"])
    skipped = sum("not_run" in r for r in results.values())
    head = ["# Reproduction", "",
            (f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
             f"{f' at commit {git_commit()}' if git_commit() else ''}: "
            f"{len(names)} of {len(list_presets())} registered preset(s) at scale `{scale}` ({skipped} not run), {passed}/{total} checks passed. Ours: mean ± sample "
            "std over the seeds that completed; quick scale runs fewer epochs (and often a data subset) "
            "than the papers, so gaps to the paper's numbers at quick scale are expected and are not "
            "the paper's claim being refuted. Per-preset folders hold report.md, results.csv and plots."), ""]
    left = [n for n in list_presets() if n not in names]
    if left:
        tail = ["## Presets not run in this write-up", "",
                "Left out by --only/--skip in the command above; run one with the command beside it:", ""]
        tail += [f"- `{n}` ({get_preset(n).title}): `bioplausible reproduce {n} --scale {scale}"
                 + (f" --seeds {','.join(map(str, seeds))}" if seeds else "") + "`" for n in left]
        sections.append("\n".join(tail))
    markdown.write_text("\n".join(head) + "\n" + full_scale_part(markdown) + "\n\n".join(sections) + "\n")
    return results


def cmd_reproduce_all(args: argparse.Namespace, seeds: list[int] | None, jobs: int) -> int:
    if args.name:
        raise UserError("give a preset name or --all/--only/--skip, not both")
    names = select(args.only, args.skip)
    out = Path(args.out) if args.out else Path("runs") / f"reproduce-all-{args.scale}"
    argv = ["bioplausible", "reproduce", "--all", "--scale", args.scale]
    for flag, value in (("--only", args.only), ("--skip", args.skip), ("--seeds", args.seeds)):
        if value:
            argv += [flag, value]
    if jobs > 1:
        argv += ["--jobs", str(jobs)]
    if getattr(args, "stack", False):
        argv += ["--stack"]
    results = reproduce_all(names, args.scale, seeds, jobs, out, Path(args.markdown), shlex.join(argv),
                            stack=getattr(args, "stack", False))
    from .verdicts import FAIL, mark

    failed = [c for r in results.values() for c in r["checks"] if mark(c) == FAIL]
    print(f"{args.markdown}: {len(names)} preset(s), {len(failed)} failed check(s); runs in {out}")
    return 1 if failed and args.strict else 0


def run_preset(name: str, scale: str = "quick", out: str | Path | None = None,
               progress: bool = True, seeds: list[int] | None = None, workers: int = 1,
               stack: bool = False, trust_imports: bool = False,
               overrides: list[str] | None = None) -> dict[str, Any]:
    """Train every run of preset ``name`` at ``scale`` with every seed; write and return a report.

    ``overrides``: ``KEY=VALUE`` (or ``RULE:KEY=VALUE``) settings applied to every run, last
    (``reproduce --epochs 3 --set dataset.subset=5000``).

    ``workers > 1`` runs the jobs in that many worker processes (one torch thread each);
    ``stack=True`` trains the seeds of each run as one stacked model (:mod:`bioplausible.engine.stacked`).

    ``plan`` + ``run_job`` per job + ``aggregate`` + the report; every job is checked (configs,
    rules, model, data, ``out``) before the first one trains.
    """
    from .._io import atomic_write_json as _write_json
    from .executors import FINAL, run_state
    from .jobs import _read_json, aggregate, check_jobs, plan, statuses
    from .presets import PLAN_FILE
    from .runs import run_jobs
    from .sweep import _same_config, _sweep_lock

    preset = get_preset(name)
    out_dir = Path(out or Path("runs") / f"reproduce-{preset.name}-{scale}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output directory {str(out_dir)!r} is a file; choose another --out")
    jobs = plan(preset, scale, seeds=seeds, out=out_dir, trust_imports=trust_imports, overrides=overrides)
    # the same command again continues: finished runs are kept, interrupted ones resumed (as sweep does)
    plan_file = out_dir / PLAN_FILE
    if out_dir.is_dir() and any(p.name != ".sweep.lock" for p in out_dir.iterdir()):
        earlier = _read_json(plan_file) if plan_file.is_file() else {}
        if (earlier.get("preset"), earlier.get("scale")) != (preset.name, scale):
            raise UserError(f"output directory {str(out_dir)!r} already exists and does not hold a run of "
                            f"preset {preset.name!r} at scale {scale!r}; choose another --out")
    states = [run_state(j.run_dir) for j in jobs]
    for job, state in zip(jobs, states):
        _same_config(job)  # a run made with another config (the preset file changed) is not reused
        if state not in FINAL:
            job.resume = Path(job.run_dir).is_dir()
    todo = [j for j, s in zip(jobs, states) if s not in FINAL]
    check_jobs(todo)
    fd = _sweep_lock(out_dir)
    try:
        _write_json(plan_file, {"preset": preset.name, "scale": scale, "source": preset.source})
        for job in todo:
            for leftover in ("error.json", "summary.json"):
                (Path(job.run_dir) / leftover).unlink(missing_ok=True)
        ran = iter(run_jobs(todo, workers=workers, progress=progress, stack=stack))
        summaries = [next(ran) if s not in FINAL else {**_read_json(Path(j.run_dir) / "summary.json"),
                                                       "run_dir": j.run_dir}
                     for j, s in zip(jobs, states)]
    finally:
        os.close(fd)
    metrics = sorted({preset.paper_results.get("metric", "test_accuracy"), "test_accuracy",
                      "best_test_accuracy", "grad_angle", *check_metrics(preset)})
    stats = aggregate(summaries, metrics)
    checks = evaluate_checks(preset, stats, scale)
    config, _ = preset.resolved(scale)
    report = {"preset": preset.name, "title": preset.title, "paper": preset.paper, "scale": scale,
              "commit": git_commit(),
              "seeds": sorted({j.seed for j in jobs}, key=[j.seed for j in jobs].index),
              "config": config.updated({}, overrides).to_dict() if overrides else config.to_dict(),
              "overrides": list(overrides or []), "stats": stats, "status": statuses(summaries),
              "paper_results": preset.paper_results, "checks": checks,
              "runs": [{"label": j.label, "dir": j.run_dir, "seed": j.seed} for j in jobs]}
    (out_dir / "reproduce.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "reproduce.md").write_text(format_report(report) + "\n")
    from .report import load_run, plot_curves

    plot_curves([load_run(j.run_dir, f"{j.label} (seed {j.seed})") for j in jobs],
                out_dir / "curves.png", preset.title)
    report["out_dir"] = str(out_dir)
    return report


def format_report(report: dict[str, Any]) -> str:
    metric = report["paper_results"].get("metric", "test_accuracy")
    values = report["paper_results"].get("values") or {}
    lines = [f"# {report['title']}", "", f"Preset `{report['preset']}`, scale `{report['scale']}`, "
             f"seeds {report['seeds']}. Paper: {report['paper']}."
             + (f" Commit: {report['commit']}." if report.get("commit") else ""), "",
             f"| run | ours: {metric_label(metric)}, mean ± std | paper | ours − paper | hidden-layer angle to BP (°) | status |",
             "|---|---|---|---|---|---|"]
    comparable = comparable_to_paper(report.get("scale"))
    for label, st in report["stats"].items():
        m, s, n = (tuple(st.get(metric, (None, None, None))) + (None,))[:3]
        ang = next(iter(st.get("grad_angle", (None, None))))
        d = metric_digits(metric)
        ours = mean_std_text(m, s, n, d)
        paper = values.get(label)
        diff = ("–" if m is None or paper is None else
                f"{m - paper:+.{d}f}" if comparable else NOT_COMPARABLE)
        lines.append(f"| {label} | {ours} | {'–' if paper is None else paper} | {diff} | "
                     f"{'–' if ang is None else f'{ang:.1f}'} | {', '.join(report['status'][label])} |")
    for label, paper in values.items():
        if label not in report["stats"] and paper is not None:
            lines.append(f"| {label} | not run (rule not in this preset) | {paper} | – | – | – |")
    note = report["paper_results"].get("note")
    if note:
        lines += ["", f"Paper values: {note}"]
    if report["checks"]:
        lines += ["", "Checks:"]
        from .verdicts import mark

        lines += [f"- [{mark(c)}] {c['text']}" for c in report["checks"]]
    return "\n".join(lines)
