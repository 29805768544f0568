"""Write up a finished full-scale sweep of a preset: report, curves, per-seed summaries, verdicts.

    python benchmarks/paper_scale/collect.py runs/paper-scale/np_fig2_mnist [ROW_DIR ...]
        [--out benchmarks/results/paper_scale] [--reproduction REPRODUCTION.md] [--partial]

For each sweep folder ROW_DIR (written by ``bioplausible sweep`` on a preset at scale ``full``,
e.g. by ``benchmarks/paper_scale/run.sh``) it writes ``<out>/<row>/``:

- ``report.md``: ours (mean ± std, n) beside the paper's number, the difference, the tolerance
  and the verdict per run (the preset's ``paper`` check), the preset's other checks, the
  preset's settings at full scale, the commit the runs were made at, the exact command, and
  the time per run (from each run's summary) and of the whole row (the driver's ``.time`` file);
- ``report.json``: the same numbers;
- ``curves.png`` (test accuracy or loss and training loss per epoch, mean ± std over seeds)
  and ``angles.png`` (angle of the hidden layers' update to BP's gradient);
- ``seeds/<label>-seed<k>/summary.json`` and ``config.yaml`` of every run (no checkpoints);

and replaces (or adds) the row's "Full scale" section of ``--reproduction`` (REPRODUCTION.md).

Every run's stored config must equal the preset's full scale with its seed (what ``sweep``
planned): a folder made with other settings is refused in one line. An unfinished sweep is
refused unless ``--partial`` (the report then says how many runs are missing).
The commit is read from the driver's log beside the row (``== <row> <time> commit <hash>``
lines of ``run.sh``) unless ``--commit`` gives it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from bioplausible.errors import UserError

BEGIN = "<!-- full-scale:{row} begin -->"
END = "<!-- full-scale:{row} end -->"
from bioplausible.experiments.reproduce import FULL_SCALE_BEGIN as PART_BEGIN
from bioplausible.experiments.reproduce import FULL_SCALE_END as PART_END

_SKIP = {"progress", "dataset.root", "out"}
# keys that change what a run records, not how it trains (a probe leaves training unchanged): a
# difference is reported, not refused
_RECORDING = {"probe_every", "checkpoint_every", "logger", "eval_train"}


# ------------------------------------------------------------------------------------ reading
def read_sweep(row_dir: Path) -> tuple[dict[str, Any], Any]:
    """The sweep index and its preset; a folder that is not a preset's sweep is a UserError."""
    from bioplausible.experiments.presets import get_preset
    from bioplausible.experiments.sweep import read_index

    if not (row_dir / "sweep.json").is_file():
        raise UserError(f"{str(row_dir)!r} has no sweep.json: pass a folder written by `bioplausible sweep`")
    index = read_index(row_dir)
    if not index.get("preset"):
        raise UserError(f"{str(row_dir)!r} is a sweep of a config, not of a preset: nothing to compare with a paper")
    if (index.get("spec") or {}).get("grid"):
        raise UserError(f"{str(row_dir)!r} sweeps a grid: a full-scale row runs the preset as it is")
    return index, get_preset(index["preset"])


def config_mismatches(row_dir: Path, index: dict[str, Any], preset: Any,
                      keys: str = "training") -> list[str]:
    """``run: key stored != wanted`` for every run whose config.yaml differs from the preset's plan:
    in the settings of training (``keys="training"``) or in what is recorded (``"recording"``)."""
    from bioplausible.engine.config import load_config
    from bioplausible.experiments.jobs import _flat, plan

    jobs = plan(preset, index.get("scale"), seeds=index.get("seeds"), out=row_dir)
    out = []
    for job in jobs:
        path = Path(job.run_dir) / "config.yaml"
        if not path.is_file():
            continue
        stored, wanted = _flat(load_config(path, recommended=False).to_dict()), _flat(job.train_config().to_dict())
        for k in sorted(set(stored) | set(wanted)):
            if k not in _SKIP and (k in _RECORDING) == (keys == "recording") and stored.get(k) != wanted.get(k):
                out.append(f"{Path(job.run_dir).name}: {k} = {stored.get(k)!r}, the preset says {wanted.get(k)!r}")
    return out


def driver_launches(row_dir: Path, log: Path | None = None) -> list[tuple[str, str]]:
    """``(time, commit)`` of each launch of this row by the driver (``== <row> <time> commit <hash>``)."""
    log = log or row_dir.parent / "driver.log"
    if not log.is_file():
        return []
    pattern = re.compile(rf"^== {re.escape(row_dir.name)} (\S+) commit (\S+)")
    return [(m.group(1), m.group(2)) for m in map(pattern.match, log.read_text(errors="replace").splitlines()) if m]


def driver_args(row_dir: Path, log: Path | None = None) -> str:
    """The ``SWEEP_ARGS`` the driver passed to ``sweep`` for this row (after ``commit <hash>`` on
    its launch lines, e.g. ``--stack``), the distinct ones joined, or ``""``."""
    log = log or row_dir.parent / "driver.log"
    if not log.is_file():
        return ""
    pattern = re.compile(rf"^== {re.escape(row_dir.name)} \S+ commit \S+ *(.*)$")
    seen: list[str] = []
    for m in map(pattern.match, log.read_text(errors="replace").splitlines()):
        if m and m.group(1).strip() and m.group(1).strip() not in seen:
            seen.append(m.group(1).strip())
    return " ".join(seen)


def driver_commits(row_dir: Path, log: Path | None = None) -> list[str]:
    """The distinct commits of the driver's launches of this row, in order."""
    seen: list[str] = []
    for _, commit in driver_launches(row_dir, log):
        if commit not in seen:
            seen.append(commit)
    return seen


def driver_time(row_dir: Path) -> dict[str, Any]:
    """User / system CPU seconds, wall clock, peak memory and exit status of ``/usr/bin/time -v``."""
    path = row_dir.parent / f"{row_dir.name}.time"
    if not path.is_file():
        return {}
    keys = {"User time (seconds)": "user_s", "System time (seconds)": "system_s",
            "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall", "Maximum resident set size (kbytes)": "max_rss_kb",
            "Exit status": "exit_status"}
    out: dict[str, Any] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.strip().partition(": ")
        if key in keys:
            value = value.strip()
            out[keys[key]] = value if keys[key] == "wall" else float(value)
    return out


def run_rows(row_dir: Path, index: dict[str, Any]) -> list[dict[str, Any]]:
    """Per run: label, seed, status, summary (None when unfinished)."""
    rows = []
    for entry in index["runs"]:
        path = row_dir / entry["dir"] / "summary.json"
        summary = None
        if path.is_file():
            try:
                summary = json.loads(path.read_text())
            except ValueError:
                summary = None
        status = (summary or {}).get("status") if summary and summary.get("job") else entry.get("status", "new")
        rows.append({"label": entry["label"], "seed": entry["seed"], "dir": entry["dir"], "status": status,
                     "summary": summary})
    return rows


# ------------------------------------------------------------------------------------ numbers
def statistics(preset: Any, rows: list[dict[str, Any]]) -> dict[str, dict[str, tuple]]:
    """``{label: {metric: (mean, std, n)}}`` over the completed seeds, for every metric a check uses."""
    from bioplausible.core.metrics import metric_value
    from bioplausible.experiments.jobs import mean_std
    from bioplausible.experiments.presets import check_metrics

    metric = preset.paper_results.get("metric", "test_accuracy")
    extra = {"relative_error_mean"} if metric.startswith("relative_error") else set()
    metrics = sorted({metric, "test_accuracy", "best_test_accuracy", "grad_angle", "train_accuracy",
                      *extra, *check_metrics(preset)})
    out: dict[str, dict[str, tuple]] = {}
    for label in preset.runs:
        done = [r["summary"] for r in rows if r["label"] == label and r["status"] == "completed"]
        out[label] = {m: mean_std(metric_value(s, m) for s in done) for m in metrics}
        out[label]["_time"] = mean_std(s.get("total_time") for s in done)
    return out


def _fmt(ms: tuple, d: int = 2) -> str:
    mean, std, n = ms
    if mean is None:
        return "–"
    return f"{mean:.{d}f} ± {std:.{d}f}" if n > 1 else f"{mean:.{d}f}"


def _seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def collect_row(row_dir: Path, out_root: Path, partial: bool = False, commit: str | None = None,
                driver_log: Path | None = None) -> dict[str, Any]:
    """Write ``out_root/<row>/`` for sweep folder ``row_dir``; return its numbers and section text."""
    from bioplausible.experiments.presets import evaluate_checks, metric_digits, metric_label
    from bioplausible.experiments.sweep_report import collect as collect_groups
    from bioplausible.experiments.sweep_report import plot
    from bioplausible.experiments.verdicts import FAIL, PASS, mark

    row_dir = Path(row_dir)
    row = row_dir.name
    index, preset = read_sweep(row_dir)
    scale = index.get("scale")
    wrong = config_mismatches(row_dir, index, preset)
    if wrong:
        raise UserError(f"{str(row_dir)!r}: {len(wrong)} setting(s) differ from preset {preset.name!r} at scale "
                        f"{scale!r}, e.g. {wrong[0]}; the preset changed since the runs: rerun the row")
    recorded = config_mismatches(row_dir, index, preset, keys="recording")
    rows = run_rows(row_dir, index)
    missing = [r for r in rows if r["status"] in ("new", "partial", None)]
    if missing and not partial:
        raise UserError(f"{str(row_dir)!r}: {len(missing)} of {len(rows)} runs not finished (e.g. {missing[0]['dir']}); "
                        f"wait for the sweep or pass --partial")
    stats = statistics(preset, rows)
    _, groups = collect_groups(row_dir)
    checks = evaluate_checks(preset, stats, scale)
    metric = preset.paper_results.get("metric", "test_accuracy")
    d = metric_digits(metric)
    values = preset.paper_results.get("values") or {}
    verdicts = {c["run"]: c for c in checks if c["type"] == "paper"}
    commits = [commit] if commit else driver_commits(row_dir, driver_log)
    launches = driver_launches(row_dir, driver_log)
    timing = driver_time(row_dir)
    config, seeds = preset.resolved(scale)
    # the preset's runs this sweep planned (a sweep file's runs: may keep only some)
    labels = [label for label in preset.runs if label in (index.get("labels") or preset.runs)]

    folder = out_root / row
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "seeds").mkdir(parents=True)
    for r in rows:
        src = row_dir / r["dir"]
        if r["summary"] is None:
            continue
        dst = folder / "seeds" / r["dir"]
        dst.mkdir()
        for name in ("summary.json", "config.yaml"):
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
    figs = plot(groups, folder, preset.title)
    (folder / "time.png").unlink(missing_ok=True)  # curves and angles are the ones the write-up shows

    parts = row_dir.resolve().parts
    where = "/".join(parts[-3:]) if len(parts) >= 3 and parts[-3] == "runs" else str(row_dir)
    extra = driver_args(row_dir, driver_log)
    command = (f"bioplausible sweep SWEEP.yaml --out {where}{' ' + extra if extra else ''}  "
               f"# SWEEP.yaml = {json.dumps({k: v for k, v in (index.get('spec') or {}).items() if v not in (None, [], {})})}")
    driver = f"ROWS={row}{f' SWEEP_ARGS={extra}' if extra else ''} benchmarks/paper_scale/run.sh"
    same = (f"bioplausible reproduce {preset.name} --scale {scale} --seeds {','.join(map(str, index.get('seeds') or seeds))}"
            f"{' ' + extra if extra else ''}")
    restricted = ""
    if (index.get("spec") or {}).get("runs"):
        restricted = " restricted to " + ", ".join(
            f"{label} (seeds {', '.join(str(s) for s in sorted(r['seed'] for r in rows if r['label'] == label))})"
            for label in labels)

    lines = [f"# Full scale: {preset.title}", "",
             (f"Preset `{preset.name}` at scale `{scale}` ({config['epochs']} epochs), seeds {index.get('seeds')}. "
             f"Paper: {preset.paper}."), "",
             f"| run | ours: {metric_label(metric)} (mean ± std, n) | paper | ours − paper | tolerance | verdict |",
             "|---|---|---|---|---|---|"]
    for label in labels:
        st = stats[label][metric]
        ref = values.get(label)
        v = verdicts.get(label)
        diff = "–" if st[0] is None or ref is None else f"{st[0] - ref:+.{d}f}"
        verdict = v["text"].split(": ", 1)[1] if v else ("no paper number" if ref is None else "–")
        verdict = verdict.split(" (", 1)[0] if verdict.startswith(("reproduced", "not reproduced", "ranking")) else verdict
        if v and mark(v) == FAIL and st[0] is not None and ref is not None:
            verdict = f"not reproduced (ours {'above' if st[0] > ref else 'below'} by {abs(st[0] - ref):.{d}f})"
        lines.append(f"| {label} | {_fmt(st, d)} (n={st[2]}) | {'–' if ref is None else ref} | {diff} | "
                     f"{v['tol'] if v else '–'} | {verdict} |")
    note = preset.paper_results.get("note")
    if note:
        lines += ["", f"Paper values: {note}."]
    others = [c for c in checks if c["type"] != "paper"]
    # a check on runs this row's sweep did not plan (its sweep file keeps only some of the preset's
    # runs) is listed apart, not as a failure of the row
    from bioplausible.experiments.presets import check_runs

    outside = [c for c in others if any(r not in labels for r in check_runs(c))]
    others = [c for c in others if c not in outside]
    lines += ["", "The preset's other checks (the paper's claims on the ranking):", ""]
    from bioplausible.experiments.reproduce import _check_text

    lines += [f"- [{mark(c)}] {_check_text(c)}" for c in others] or ["- none"]
    if outside:
        lines += ["", "Checks on runs this row does not train (its sweep file keeps "
                  f"{', '.join(labels)}): " + "; ".join(
                      f"{c['type']} on {', '.join(check_runs(c))}" for c in outside) + "."]
    from bioplausible.core.angles import hidden_angle
    from bioplausible.experiments.jobs import mean_std

    hidden = {label: mean_std(hidden_angle(r["run"].probes) for r in groups.get(label, [])
                              if r["status"] == "completed" and r["run"] is not None) for label in labels}
    feedback_row = metric.startswith("relative_error")  # the feedback is the result (e.g. W fixed)
    other = {label: ", ".join(
        ([f"relative error of B to W, mean over the layers {_fmt(stats[label]['relative_error_mean'], 4)}"]
         if feedback_row and stats[label]["relative_error_mean"][0] is not None else [])
        + ([f"best test acc. {_fmt(stats[label]['best_test_accuracy'])}"]
           if stats[label]["best_test_accuracy"][0] is not None and not feedback_row else [])
        + ([f"hidden-layer angle to BP {_fmt(hidden[label], 1)}°"] if hidden[label][0] is not None else []))
        for label in labels}
    if any(other.values()):  # a reconstruction task has neither
        lines += ["", "Other metrics (mean ± std over seeds): "
                  + "; ".join(f"{label}: {text}" for label, text in other.items() if text)
                  + ". Hidden-layer angle: the mean over probes of the angle between the rule's update and BP's "
                    "gradient, over the weight layers not exact by construction.", ""]
    else:
        lines.append("")
    if recorded:
        lines += [(f"Recording settings that differ from the preset's (training is the same): {len(recorded)} runs, e.g. "
                  f"{recorded[0]}."), ""]
    if missing:
        lines += [f"**Partial**: {len(missing)} of {len(rows)} runs unfinished: "
                  + ", ".join(r["dir"] for r in missing), ""]
    bad = [r for r in rows if r["status"] not in ("completed", "new", "partial", None)]
    if bad:
        lines += ["Runs that did not complete: " + ", ".join(f"{r['dir']} ({r['status']}: "
                                                             f"{(r['summary'] or {}).get('message', '')})" for r in bad), ""]
    lines += ["![curves](curves.png)", "", "![angles](angles.png)", "", "## How it was run", "",
              f"- Commit: {', '.join(commits) if commits else 'not recorded (no driver log; pass --commit)'}",
              f"- Command: `{driver}`, i.e. `{command}`; the same runs as `{same}`{restricted}",
              "- Time per run (wall clock of training on one thread, mean over seeds, from each run's summary; "
              "the machine's 2 cores were shared with other work): "
              + "; ".join(f"{label} {_seconds(stats[label]['_time'][0])}" for label in labels)]
    if timing:
        lines.append(f"- Whole row (`/usr/bin/time -v` of the driver's sweep process): CPU {_seconds(timing.get('user_s', 0) + timing.get('system_s', 0))} "
                     f"(user {timing.get('user_s', 0):.0f} s, system {timing.get('system_s', 0):.0f} s), wall "
                     f"{timing.get('wall', '?')}, peak memory {timing.get('max_rss_kb', 0) / 1024:.0f} MiB"
                     + (f"; the row was launched {len(launches)} times (resumed, finished runs skipped) and this "
                        f"covers the last launch only" if len(launches) > 1 else ""))
    lines += ["- Per-seed summaries and configs: `seeds/<run>-seed<k>/` (a copy of each run folder's small files)", "",
              "Preset settings at this scale:", "", "```yaml",
              _yaml({"config": config.to_dict(), "runs": preset.runs, "seeds": index.get("seeds")}).rstrip(),
              "```", ""]
    (folder / "report.md").write_text("\n".join(lines))
    judged = [c for run, c in verdicts.items() if run in labels]  # the paper's numbers for runs this row trains
    tally = {"reproduced": sum(mark(c) == PASS for c in judged),
             "not_reproduced": sum(mark(c) == FAIL for c in judged),
             "other": sum(mark(c) not in (PASS, FAIL) for c in judged)}
    result = {"row": row, "preset": preset.name, "scale": scale, "seeds": index.get("seeds"), "commits": commits,
              "metric": metric, "stats": {k: {m: list(v) for m, v in s.items()} for k, s in stats.items()},
              "checks": [{k: v for k, v in c.items()} for c in checks], "tally": tally, "driver_time": timing,
              "missing": [r["dir"] for r in missing], "command": driver, "sweep_spec": index.get("spec"),
              "runs": [{k: r[k] for k in ("label", "seed", "dir", "status")} for r in rows]}
    (folder / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    result["section"] = section(row, preset, lines, folder, tally)
    result["figures"] = {k: str(v) for k, v in figs.items() if k != "time"}
    return result


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=None, width=100)


def section(row: str, preset: Any, report_lines: list[str], folder: Path, tally: dict[str, int]) -> str:
    """The row's REPRODUCTION.md section: the report's table and checks, figures linked from the results folder."""
    rel = folder.relative_to(ROOT) if folder.is_absolute() and ROOT in folder.parents else folder
    body = []
    for line in report_lines[1:]:
        if line.startswith(("![", "Preset settings at this scale")):
            break
        body.append(line)
    how = [ln for ln in report_lines if ln.startswith(("- Commit", "- Command", "- Time per run"))]
    head = (f"{tally['reproduced']} reproduced, {tally['not_reproduced']} not reproduced"
            + (f", {tally['other']} ranking only / not compared" if tally["other"] else "")
            if sum(tally.values()) else "the paper gives no number to compare (curves only): the checks below carry the comparison")
    return "\n".join([BEGIN.format(row=row), f"### Full scale: {preset.title}", "",
                      (f"Verdict against the paper: {head}. Files: `{rel}/` (report.md with the preset's settings, "
                      f"per-seed summaries)."), "", *body[1:], *how, "", f"![curves]({rel}/curves.png)", "",
                      END.format(row=row)])


def update_reproduction(path: Path, row: str, text: str) -> None:
    """Replace the row's full-scale section in ``path`` (or add it to the full-scale part, made if absent)."""
    doc = path.read_text() if path.is_file() else "# Reproduction\n"
    begin, end = BEGIN.format(row=row), END.format(row=row)
    if begin in doc and end in doc:
        a, b = doc.index(begin), doc.index(end) + len(end)
        doc = doc[:a] + text + doc[b:]
    else:
        if PART_BEGIN not in doc:
            part = (f"{PART_BEGIN}\n## Full scale: the papers' settings\n\nRows run at the preset's full scale "
                    "(the paper's epochs, data and seeds, or the stated deviations of the preset), written up by "
                    "`python benchmarks/paper_scale/collect.py ROW_DIR`. Verdict per run: **reproduced** when "
                    "|ours − paper| is within the tolerance (the paper's spread where it reports one, otherwise "
                    "0.5 point), **not reproduced** (by how much) otherwise, **ranking only** where the paper's "
                    "normalisation is unknown. The quick-scale sections further down are short runs: their "
                    f"checks compare rankings, never the papers' numbers.\n\n{PART_END}\n")
            lines = doc.split("\n")
            # after the title paragraph (the first blank line after the first non-title paragraph)
            cut = next((i for i, ln in enumerate(lines) if ln.startswith("## ")), len(lines))
            doc = "\n".join(lines[:cut]) + ("\n" if cut < len(lines) else "") + part + "\n" + "\n".join(lines[cut:])
        doc = doc.replace(PART_END, text + "\n\n" + PART_END, 1)
    path.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rows", nargs="+", help="sweep folders of presets at full scale (runs/paper-scale/<row>)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "paper_scale"))
    ap.add_argument("--reproduction", default=str(ROOT / "REPRODUCTION.md"),
                    help="the Markdown file whose full-scale sections are updated ('' for none)")
    ap.add_argument("--partial", action="store_true", help="write up an unfinished sweep, saying so")
    ap.add_argument("--commit", help="the commit the runs were made at (default: from the driver's log)")
    args = ap.parse_args(argv)
    try:
        for row in args.rows:
            res = collect_row(Path(row), Path(args.out), partial=args.partial, commit=args.commit)
            if args.reproduction:
                update_reproduction(Path(args.reproduction), res["row"], res["section"])
            print(f"{res['row']}: {Path(args.out) / res['row']}/report.md; {res['tally']['reproduced']} reproduced, "
                  f"{res['tally']['not_reproduced']} not reproduced")
    except UserError as exc:
        print(f"collect: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
