"""Run a group of jobs as one stacked model and write every run's directory as an unstacked run would.

:func:`run_stacked` takes jobs that differ only by seed and learning rate (see :func:`group_key`),
builds every run exactly as :func:`bioplausible.experiments.jobs.run_job` does (same seeding, same model
initialisation, same ``prepare`` of the rule, same optimizer), copies them into one stacked model
(:mod:`bioplausible.engine.stacked.steps`) and trains them together. After every epoch the stack is written back into the
runs' own models and rules, and each run's :class:`~bioplausible.engine.trainer.Trainer` evaluates, logs
``metrics.jsonl``, checkpoints and at the end writes ``summary.json``, ``model.pt`` and
``rule_state.pt`` — the same files with the same keys. ``epoch_time`` of a stacked run is the
stack's epoch time divided by the number of runs in it (each run's share of the machine), and
``samples_per_s`` follows from it.

A run that diverges leaves the stack at that step with the status and event an unstacked run
writes; the others go on. Resume loads every run's checkpoint and continues the stack when all of
them stopped at the same epoch (otherwise the group runs unstacked).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..engine.stacked import support
from ..engine.stacked.losses import correct_counts
from ..engine.stacked.mlp import epoch_orders, gather
from ..engine.stacked.relaxation import RunsDiverged
from ..errors import ConfigError, DivergenceError, UserError
from .jobs import run_job, run_job_in_worker


def _message(where: str, value: float, threshold: float) -> str:
    """The trainer's divergence message (:meth:`bioplausible.train.Trainer._check`)."""
    return str(DivergenceError(
        f"training diverged at {where}: loss = {value:g} (threshold {threshold:g}); lower the learning "
        f"rate or change the rule's hyperparameters"))


def group_key(config: dict[str, Any]) -> str:
    """Jobs with the same key can share a stack: the config without its seed and learning rates
    (the optimizer's) and the rule options a stacked step reads run by run (the ghost rules'
    ``eta_w`` / ``eta_v``, node perturbation's ``c_h``: ``PER_RUN_OPTIONS``)."""
    cfg = copy.deepcopy(config)
    cfg.pop("seed", None)
    cfg.pop("progress", None)
    rule = cfg.get("rule")
    if isinstance(rule, dict):
        for key in support.PER_RUN_OPTIONS.get(rule.get("name"), ()):
            rule.pop(key, None)
    opt = cfg.get("optimizer") or {}
    opt.pop("lr", None)
    for options in (opt.get("groups") or {}).values():
        if isinstance(options, dict):
            options.pop("lr", None)
    return json.dumps(cfg, sort_keys=True, default=str)


def plan_groups(jobs: list) -> list[list[int]]:
    """Indices of ``jobs`` grouped by :func:`group_key`, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(group_key(job.config), []).append(i)
    return list(groups.values())


def _no_events(kind: str, k: int, summary: dict[str, Any] | None = None) -> None:
    return None


def _one_by_one(jobs: list, progress: bool | None, events) -> list[dict[str, Any]]:
    """``jobs`` unstacked, one after another, each announced (``start``, ``end``) as it runs."""
    summaries = []
    for k, job in enumerate(jobs):
        events("start", k)
        summaries.append(run_job(job, progress=progress))
        events("end", k, summaries[-1])
    return summaries


def run_jobs_stacked(jobs: list, progress: bool | None = None, say=None, events=None) -> list[dict[str, Any]]:
    """Every job, stacked with the others of its group where the rule and model allow it.

    A group that cannot stack (or a group of one) runs unstacked through
    :func:`~bioplausible.jobs.run_job`, after one line on ``say`` (stderr by default) saying why.
    ``events(kind, k, summary=None)`` hears when job ``k`` (its position in ``jobs``) starts
    (``"start"``) and finishes (``"end"``, with its summary): a stack's runs start together and each
    ends when it leaves the stack; runs that cannot stack start and end one by one.
    """
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    events = events or _no_events
    out: list[dict[str, Any] | None] = [None] * len(jobs)
    for group in plan_groups(jobs):
        members = [jobs[i] for i in group]

        def relay(kind: str, k: int, summary: dict[str, Any] | None = None, group=group) -> None:
            events(kind, group[k], summary)

        reason = support.config_reason(members[0].train_config()) if len(members) > 1 else None
        if reason is not None:
            say(f"--stack: {members[0].label}: {reason}; running its {len(members)} run(s) one after another")
        summaries = (run_stacked(members, progress=progress, say=say, events=relay)
                     if reason is None and len(members) > 1 else _one_by_one(members, progress, relay))
        for i, summary in zip(group, summaries):
            out[i] = summary
    return out  # type: ignore[return-value]


def run_stacked(jobs: list, progress: bool | None = None, say=None, events=None) -> list[dict[str, Any]]:
    """Train ``jobs`` (one group) as one stack; returns their summaries as ``run_job`` would
    (``events`` as :func:`run_jobs_stacked` describes)."""
    from ..data import DataBundle
    from ..engine.rundir import check_run_dir, run_lock
    from ..engine.runtime import check_device, runtime
    from .jobs import _build, load_data

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    events = events or _no_events
    configs = [job.train_config() for job in jobs]
    first = configs[0]
    check_device(first["device"])
    run_dirs = [Path(job.run_dir) for job in jobs]
    if len(set(map(str, run_dirs))) != len(run_dirs):
        raise UserError("--stack: two runs of one stack share a run directory; give each its own --out")
    for job, run_dir in zip(jobs, run_dirs):
        check_run_dir(run_dir, resume=job.resume)
    with runtime(first):
        data = load_data(first)
        from ..engine.trainer import DTYPES, resolve_device

        device, dtype = resolve_device(first["device"]), DTYPES[first["dtype"]]
        shared = DataBundle(train=data.train.to(device, dtype),
                            test=None if data.test is None else data.test.to(device, dtype),
                            val=None if getattr(data, "val", None) is None else data.val.to(device, dtype),
                            info=data.info)
        created = [not d.exists() for d in run_dirs]
        trainers = [_build(job, shared, cfg, out=d, progress=progress) for job, cfg, d in zip(jobs, configs, run_dirs)]
        reason = support.model_reason(trainers)
        if reason is not None:
            say(f"--stack: {jobs[0].label}: {reason}; running its {len(jobs)} run(s) one after another")
            return _one_by_one(jobs, progress, events)
        try:
            for d in run_dirs:
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run directory: {exc.strerror}; choose another --out") from None
        try:
            with contextlib.ExitStack() as locks:
                for job, d in zip(jobs, run_dirs):
                    locks.enter_context(run_lock(d))
                    check_run_dir(d, resume=job.resume)
                summaries = StackedTraining(jobs, trainers, say, events).run()
        except UserError:
            for d, made in zip(run_dirs, created):
                if made:
                    shutil.rmtree(d, ignore_errors=True)
            raise
    return summaries


class StackedTraining:
    """The epoch loop of :meth:`bioplausible.train.Trainer.run` for R trainers and one stack."""

    def __init__(self, jobs: list, trainers: list, say, events=None) -> None:
        self.jobs, self.trainers, self.say = list(jobs), list(trainers), say
        self.events = events or _no_events

    # ------------------------------------------------------------------ start
    def _start(self, trainer, resume: bool) -> None:
        # the trainer's own start: resume from its checkpoint or start clean, write config.yaml
        # (the recorded config of a run made from a Python model, as fit() writes it)
        trainer._open_run_dir(resume)

    def _finish(self, i: int, status: str, message: str = "") -> dict[str, Any]:
        from .._io import atomic_torch_save as _atomic_torch_save
        from .._io import atomic_write_json as _write_json

        t, job = self.trainers[i], self.jobs[i]
        summary = dict(t._write_summary(status, message, self.started))
        if status == "completed":
            plain = {k: v for k, v in t.model.state_dict().items() if k in set(t.plain_keys)}
            _atomic_torch_save(plain, t.run_dir / "model.pt")
            owned = t.rule.owned.state_dict()
            if owned:
                _atomic_torch_save(dict(owned), t.run_dir / "rule_state.pt")
        summary["job"] = {"label": job.label, "seed": job.seed, "preset": job.preset, "scale": job.scale}
        _write_json(t.run_dir / "summary.json", summary)
        summary["run_dir"] = str(t.run_dir)
        self.events("end", i, summary)
        return summary

    # ------------------------------------------------------------------ run
    def run(self) -> list[dict[str, Any]]:
        from ..engine.loggers import make_logger

        self.started = time.time()
        for job, t in zip(self.jobs, self.trainers):
            self._start(t, job.resume)
        epochs = {t.epoch for t in self.trainers}
        if len(epochs) > 1:
            self.say(f"--stack: {self.jobs[0].label}: the runs stopped at different epochs "
                     f"({', '.join(map(str, sorted(epochs)))}); resuming them one after another")
            from .._io import atomic_write_json as _write_json

            summaries = []
            for i, (j, t) in enumerate(zip(self.jobs, self.trainers)):
                self.events("start", i)
                summary = dict(t.run(resume=True).summary)
                summary["job"] = {"label": j.label, "seed": j.seed, "preset": j.preset, "scale": j.scale}
                _write_json(t.run_dir / "summary.json", summary)
                summaries.append({**summary, "run_dir": str(t.run_dir)})
                self.events("end", i, summaries[-1])
            return summaries
        from ..engine.stacked.support import make_stack

        self.stack = make_stack(self.trainers)
        self.active = list(range(len(self.trainers)))
        for i in self.active:  # the runs start together: each one's time is its share of the stack's
            self.events("start", i, {"stacked": len(self.active)})
        results: dict[int, dict[str, Any]] = {}
        made = []
        for t in self.trainers:
            loggers = [make_logger(name, t.run_dir, purge_step=t.step + 1 if t.step else None)
                       for name in t.logger_names]
            t.loggers.extend(loggers)
            made.append(loggers)
        cfg = self.trainers[0].config
        try:
            while self.active and self.trainers[self.active[0]].epoch < cfg["epochs"]:
                records = self.train_epoch(results)
                if not self.active:
                    break
                self.stack.unstack()
                diverged: dict[int, str] = {}
                for k, (i, record) in enumerate(zip(list(self.active), records)):
                    try:
                        self.end_epoch(i, record)
                    except DivergenceError as exc:  # a non-finite evaluation, as an unstacked run
                        diverged[k] = str(exc)
                if diverged:
                    self._diverge(diverged, self.trainers[self.active[0]].step, results)
                    if not self.active:
                        break
                self.stack.refresh_rates()
        except KeyboardInterrupt:
            self.stack.unstack()
            for i in self.active:
                self.trainers[i]._write_summary("interrupted", "interrupted by the user; continue with --resume",
                                                self.started)
            raise
        finally:
            for t, loggers in zip(self.trainers, made):
                for logger in loggers:
                    logger.close()
                    t.loggers.remove(logger)
        for i in self.active:
            results[i] = self._finish(i, "completed")
        return [results[i] for i in range(len(self.trainers))]

    def train_epoch(self, results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
        """One epoch of every active run; a run that diverges is finished and leaves the stack."""
        lead = self.trainers[self.active[0]]
        cfg, split = lead.config, lead.train_split
        x, y = split.x, split.y
        n, bs = len(split), int(cfg["batch_size"])
        device = x.device
        seeds = [self.trainers[i].config["seed"] for i in self.active]
        order = epoch_orders(seeds, lead.epoch, n, device)
        # data augmentation as each run's trainer draws it: its own CPU generator seeded with its
        # seed and the epoch, one draw per batch (Trainer.train_epoch)
        augs = None
        if lead.augment is not None:
            from ..engine.trainer import augment_generator

            augs = [augment_generator(s, lead.epoch) for s in seeds]
        summed = lead.loss.reduction == "sum"
        counting = lead.task != "reconstruction"
        R = len(self.active)
        loss_sum = torch.zeros(R, dtype=torch.float64, device=device)
        correct = torch.zeros(R, dtype=torch.int64, device=device)
        step = lead.step
        threshold = cfg["divergence_threshold"]
        probe_time = 0.0
        start = time.perf_counter()
        for lo in range(0, n, bs):
            idx = order[:, lo:lo + bs]
            xb, yb = gather(x, y, idx)
            if augs is not None:
                xb = torch.stack([lead.augment(xb[k], g, lead.augment_fill) for k, g in enumerate(augs)])
            probing = lead.probe.due(step + 1)
            if probing:
                began = time.perf_counter()
                refs = self._probe_references(xb, yb)
                probe_time += time.perf_counter() - began
            rule_diverged: dict[int, str] = {}
            try:
                loss, out = self.stack.step(xb, yb)
            except RunsDiverged as exc:  # the rule's own check failed for some runs
                loss, out, rule_diverged = exc.losses, exc.outputs, exc.messages
            step += 1
            if probing:
                began = time.perf_counter()
                self._probe_compare(refs, step)
                probe_time += time.perf_counter() - began
            batch = idx.shape[1]
            loss_sum.add_(loss.to(torch.float64), alpha=1 if summed else batch)
            if counting:
                correct.add_(correct_counts(out, yb))
            if rule_diverged or step % 50 == 0:
                values = loss.tolist()
                bad = dict(rule_diverged)
                if step % 50 == 0:
                    for k, v in enumerate(values):
                        if k not in bad and (not math.isfinite(v) or abs(v) > threshold):
                            bad[k] = _message(f"epoch {lead.epoch + 1}, step {step}", v, threshold)
                if bad:
                    keep = self._diverge(bad, step, results)
                    if not self.active:
                        return []
                    order, loss_sum, correct = order[keep], loss_sum[keep], correct[keep]
                    if augs is not None:
                        augs = [augs[k] for k in keep]
                    R = len(self.active)
        elapsed = time.perf_counter() - start - probe_time
        train_loss = (loss_sum / max(n, 1)).tolist()
        bad = {k: _message(f"the end of epoch {lead.epoch + 1}", v, threshold)
               for k, v in enumerate(train_loss) if not math.isfinite(v) or abs(v) > threshold}
        if bad:
            for i in self.active:
                self.trainers[i].step = step
            keep = self._diverge(bad, step, results)
            train_loss = [train_loss[k] for k in keep]
            correct = correct[keep]
        for i in self.active:
            self.trainers[i].step = step
        per_run = elapsed / max(R, 1)
        accuracy = (100.0 * correct.to(torch.float64) / max(n, 1)).tolist()
        records = []
        for k in range(len(self.active)):
            record = {"train_loss": train_loss[k]}
            if counting:
                record["train_accuracy"] = accuracy[k]
            record.update({"epoch_time": per_run, "probe_time": probe_time / max(R, 1),
                           "samples_per_s": n / per_run if per_run > 0 else None})
            records.append(record)
        return records

    def _probe_references(self, xb: torch.Tensor, yb: torch.Tensor) -> list:
        """BP's gradients of every run on its batch, before the step (each run's own probe)."""
        self.stack.unstack()
        refs = []
        for k, i in enumerate(self.active):
            t = self.trainers[i]
            refs.append(t.probe.reference(t.rule, t.model, xb[k], yb[k], t.loss))
        self.stack.capture = True
        return refs

    def _probe_compare(self, refs: list, step: int) -> None:
        """Each run's update of this step against its reference, logged as the unstacked probe logs it."""
        from ..engine.stacked.nodepert import _NPMixin

        stack = self.stack
        stack.capture = False
        if stack.forward_in_step:  # the unstacked probe sees the weights the rule already stepped
            stack.captured = {}
            stack.net.unstack()
        else:
            stack.write_grads()
        if stack.feedback_in_step:
            stack.write_feedback()
        stack.unstack_rule()
        in_step = isinstance(stack, _NPMixin)
        for k, i in enumerate(self.active):
            t = self.trainers[i]
            if in_step:
                t.rule._in_step = True
            record = t.probe.compare(t.rule, t.model, refs[k])
            if in_step:
                t.rule._in_step = False
            t.record_probe(record, step)
            for p in t.model.parameters():
                p.grad = None

    def _diverge(self, bad: dict[int, str], step: int, results) -> list[int]:
        """Finish the runs at positions ``bad`` of the stack (with their messages) as diverged;
        returns the kept positions."""
        self.stack.unstack()
        for k, message in bad.items():
            i = self.active[k]
            t = self.trainers[i]
            t.step = step
            t._log({"kind": "event", "event": "diverged", "epoch": t.epoch + 1, "step": step, "message": message})
            results[i] = self._finish(i, "diverged", message)
        keep = [k for k in range(len(self.active)) if k not in bad]
        self.active = [self.active[k] for k in keep]
        if keep:
            self.stack.select(keep)
        return keep

    def end_epoch(self, i: int, record: dict[str, Any]) -> None:
        """What :meth:`Trainer.run` does after a training epoch, for run ``i`` (its own trainer's
        :meth:`~bioplausible.engine.trainer.Trainer.end_epoch`)."""
        self.trainers[i].end_epoch(record, stacked=True)




def run_sweep_stacked(work: list, on_event, say=None) -> None:
    """The sweep executor for ``--stack``: the sweep's unfinished jobs (``(index, job_dict)``) in
    stacks of one group each, in this process; ``on_event`` as :mod:`bioplausible.experiments.executors` calls it.

    A group's failure (an exception other than a user interrupt) is recorded for each of its runs
    (``error.json``) as the unstacked executor records one run's, and the sweep goes on.
    """
    from .executors import record_failure as _record_failure
    from .jobs import Job

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    jobs = [Job(**data) for _, data in work]
    for group in plan_groups(jobs):
        members = [jobs[k] for k in group]
        indices = [work[k][0] for k in group]
        for job in members:
            for name in ("error.json", "summary.json"):
                (Path(job.run_dir) / name).unlink(missing_ok=True)
            job.resume = Path(job.run_dir).is_dir()
        began: dict[int, tuple[float, int]] = {}
        ended: set[int] = set()

        def relay(kind: str, k: int, summary: dict[str, Any] | None = None, indices=indices, began=began,
                  ended=ended) -> None:
            # each run is announced when it starts and when it ends: a stack's runs start together
            # and end as each leaves the stack; runs that cannot stack go one by one, so the sweep's
            # progress and index follow them instead of waiting for the whole group
            if kind == "start":
                began[k] = (time.time(), int((summary or {}).get("stacked", 1)))
                on_event("start", indices[k], {})
                return
            ended.add(k)
            summary = summary or {}
            t0, together = began[k]
            on_event("end", indices[k], {"status": summary.get("status"), "message": summary.get("message", ""),
                                         "seconds": (time.time() - t0) / max(together, 1), "skipped": False})

        try:
            run_jobs_stacked(members, progress=False, say=say, events=relay)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a failed group is recorded, the sweep goes on
            for k, job in enumerate(members):
                if k in ended:
                    continue
                if k not in began:
                    relay("start", k)
                relay("end", k, _record_failure(job, exc))


def run_jobs(jobs: Sequence[Any], workers: int = 1, progress: bool | None = None,
             stack: bool = False) -> list[dict[str, Any]]:
    """Run ``jobs`` in this process (``workers=1``) or in a pool of ``workers`` spawned processes.

    Each worker runs :func:`run_job_in_worker` (one torch thread unless ``$BIOPLAUSIBLE_THREADS``
    says otherwise, no progress bar); summaries come back in the order of ``jobs``. ``stack=True``
    trains jobs that differ only by seed and learning rate as one stacked model in this process
    (:mod:`bioplausible.engine.stacked`; the same run directories), the others one after another; with
    ``stack`` everything runs in this process (``workers`` is not used).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    if stack:
        return run_jobs_stacked(list(jobs), progress=progress)
    if workers == 1 or len(jobs) <= 1:
        return [run_job(job, progress=progress) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(run_job_in_worker, jobs))


__all__ = ["StackedTraining", "group_key", "plan_groups", "run_jobs", "run_jobs_stacked", "run_stacked",
           "run_sweep_stacked"]
