"""Training loop shared by every rule: ``fit(model, rule, data, ...)``.

The loop is the one a user would write — ``rule.train_step`` fills ``.grad``, a ``torch.optim``
optimizer steps, ``rule.after_step`` runs any post-step phase — plus the services a research run
needs: evaluation every epoch, a progress bar with samples/s, divergence detection, the probe,
a run directory (``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``checkpoint.pt`` written
atomically, ``model.pt``), and ``resume`` that continues an interrupted run to the same result.

Exact resume: each epoch's shuffle comes from a generator seeded by ``(seed, epoch)``, and the
checkpoint holds the model, optimizer, scheduler, rule state (its random streams) and torch's
global RNG state, so epoch ``k`` computes the same thing whether or not the run stopped before it.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .._io import atomic_torch_save, atomic_write_text
from ..core.angles import step_hidden_angle
from ..core.losses import Loss, get_loss
from ..core.optim import build_schedule
from ..core.probe import Probe, feedback_errors
from ..core.rule import Rule, call_prepare
from ..core.state_files import load_checkpoint_file
from ..errors import ConfigError, DivergenceError, StorageError, UserError
from ..rules.registry import make
from .config import TrainConfig
from .rundir import before_checkpoint, check_run_dir, read_metrics, run_lock
from .runtime import runtime
from .task import accuracy_counts, check_reconstruction_output, correct_counter, resolve_loss


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


# ----------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device; use cpu, cuda, cuda:0 or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return device


STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@torch.no_grad()
def evaluate(model: nn.Module, split: Any, loss: Loss | str, batch_size: int = 1000,
             task: str = "multiclass") -> dict[str, float]:
    """Loss per example (in the loss's own convention) and accuracy in percent on a split.

    For ``task="reconstruction"`` only the loss (the reconstruction error, lower is better):
    there is no accuracy to report.
    """
    loss = get_loss(loss)
    was_training = model.training
    model.eval()
    total, correct, n = 0.0, 0.0, 0
    outputs = []
    try:
        for xb, yb in split.batches(batch_size, shuffle=False):
            out = model(xb)
            total += float(loss.mean_per_example(out, yb)) * out.shape[0]
            if task != "reconstruction":
                correct += float(accuracy_counts(out, yb, task))
            n += out.shape[0]
            if task == "multilabel":
                outputs.append(out.float().cpu())
    finally:
        model.train(was_training)
    result = {"loss": total / max(n, 1)}
    if task != "reconstruction":
        result["accuracy"] = 100.0 * correct / max(n, 1)
    if task == "multilabel" and outputs:
        from ..data import multilabel_metrics

        result["auc"] = float(multilabel_metrics(torch.cat(outputs), split.y.float().cpu())["auc"])
    return result


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained model, per-epoch history and the run summary."""

    model: nn.Module
    rule: Rule
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    #: the probe's records (per-layer angles to BP, feedback errors), as in ``metrics.jsonl``
    probes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where stderr is no terminal but a bar is wanted)."""
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    try:
        return shell.get_ipython() is not None
    except Exception:  # noqa: BLE001
        return False


# ----------------------------------------------------------------------------- trainer
def augment_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of a run's augmentation draws in ``epoch`` (0-based): its own stream,
    fixed by (seed, epoch), so a resumed or stacked run draws what an uninterrupted one does."""
    gen = torch.Generator()
    gen.manual_seed(int(seed) * 1_000_033 + int(epoch) + 7_919)
    return gen


class Trainer:
    """Holds everything a run needs; :meth:`run` trains it to ``config['epochs']``."""

    def __init__(self, model: nn.Module, rule: Rule | str, data: Any, config: TrainConfig,
                 out: str | os.PathLike | None = None, progress: bool | None = None) -> None:
        self.config = config
        self.device = resolve_device(config["device"])
        self.dtype = DTYPES[config["dtype"]]
        self.task = getattr(getattr(data, "info", None), "task", "multiclass")
        self.loss = resolve_loss(config["loss"], self.task)
        self.rule = make(rule, **config.rule_options()) if isinstance(rule, str) else rule
        self.rule.set_seed(config["seed"])
        self.train_split = data.train.to(self.device, self.dtype)
        self.eval_splits = {}
        if getattr(data, "test", None) is not None:  # a user's loader may come without one
            self.eval_splits["test"] = data.test.to(self.device, self.dtype)
        if getattr(data, "val", None) is not None:
            self.eval_splits["val"] = data.val.to(self.device, self.dtype)
        self.plain_keys = list(model.state_dict().keys())
        from .provenance import describe_model, split_sizes

        self.model_record = describe_model(model)  # the module as given, before prepare
        self.data_sizes = split_sizes(self.train_split, self.eval_splits.get("val"),
                                      self.eval_splits.get("test"))
        #: what config.yaml records instead of the config (fit(): the user's module and data)
        self.recorded_config: dict[str, Any] | None = None
        model = model.to(device=self.device, dtype=self.dtype)
        example = next(iter(self.train_split.batches(2, shuffle=False)))[0]
        from ..data.augment import pad_fill, parse_augment

        self.augment = parse_augment(config["dataset"].get("augment"))
        self.augment_fill = pad_fill(getattr(data, "info", None))
        if self.augment is not None and example.dim() != 4:
            raise ConfigError(f"dataset.augment needs image inputs (N, C, H, W), but the training "
                              f"batches have shape {tuple(example.shape)}; set dataset.flatten=false")
        self.model = call_prepare(self.rule, model, example)
        if self.task == "reconstruction":
            check_reconstruction_output(self.model, example)
        self.rule.to(self.device, self.dtype)
        self.optimizer = self.rule.build_optimizer(self.model, config["optimizer"])
        self.schedule = build_schedule(self.optimizer, config["schedule"], config["epochs"])
        self.probe = Probe(config["probe_every"])
        self.progress = config["progress"] if progress is None else progress
        self.run_dir = Path(out) if out is not None else None
        self.epoch = 0
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.probe_records: list[dict[str, Any]] = []  # every probe of the run (the angle means derive from it)
        self.callbacks: list[Callable[[dict[str, Any]], None]] = []
        #: objects with ``log(record)``, called for every record written to metrics.jsonl
        self.loggers: list[Any] = []
        from .loggers import logger_names, require

        self.logger_names = logger_names(config["logger"])  # created by run() in the run directory
        for name in self.logger_names:
            require(name)  # a missing package is a user error before anything is written

    # -------------------------------------------------------------- run directory
    def _log(self, record: dict[str, Any]) -> None:
        """Append one JSON line; a kill mid-append leaves a torn last line that readers drop."""
        if self.run_dir is not None:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record, default=float) + "\n")
        for logger in self.loggers:
            logger.log(record)

    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "rule": self.rule.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "history": self.history,
        }

    def save_checkpoint(self) -> None:
        if self.run_dir is not None:
            atomic_torch_save(self._checkpoint_state(), self.run_dir / "checkpoint.pt")
            self._saved_epoch = self.epoch

    def load_checkpoint(self, path: Path) -> None:
        """Restore the state :meth:`save_checkpoint` wrote; drop metric lines written after it.

        The file is read with ``weights_only=True`` (tensors, numbers, strings, containers: a
        crafted checkpoint cannot run code); a file that cannot be read that way, or that does
        not hold this run's state, is a :class:`UserError` in one line.
        """
        state = load_checkpoint_file(path, self.device)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.schedule is not None and state.get("schedule") is not None:
                self.schedule.load_state_dict(state["schedule"])
            self.rule.load_state_dict(state["rule"])
            torch.set_rng_state(state["torch_rng"])
            if state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self._saved_epoch = self.epoch
            self.history = list(state["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            detail = " ".join(str(exc).split())[:160]
            raise UserError(f"checkpoint {str(path)!r} does not match this run ({type(exc).__name__}: "
                            f"{detail}); start a new run with --out") from None
        metrics = self.run_dir / "metrics.jsonl" if self.run_dir else None
        if metrics is not None and metrics.exists():  # drop lines written after the checkpoint
            kept = [r for r in read_metrics(metrics) if before_checkpoint(r, self.epoch, self.step)]
            self.probe_records = [r for r in kept if r.get("kind") == "probe"]
            atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def _write_summary(self, status: str, message: str = "", started: float | None = None) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        times = [h["epoch_time"] for h in self.history]
        tests = [h["test_accuracy"] for h in self.history if "test_accuracy" in h]
        # the hidden-layer angle of each probe from its per-layer angles (core.angles), and the
        # whole-network mean (a line written before that name existed called it grad_angle)
        angled = [r for r in self.probe_records if "grad_angle" in r]
        hidden = [v for v in (step_hidden_angle(r) for r in angled) if v is not None]
        whole = [r.get("grad_angle_all_layers", r["grad_angle"]) for r in angled]
        summary = {
            "status": status, "message": message,
            "rule": self.rule.name, "rule_config": self.rule.config,
            "dataset": self.config["dataset"]["name"],
            "model": (self.config["model"]["spec"] if self.recorded_config is None
                      else self.model_record["import_path"]),
            "model_info": {k: v for k, v in self.model_record.items()},
            "data_sizes": self.data_sizes,
            **({"data": self.recorded_config["dataset"]} if self.recorded_config is not None else {}),
            "epochs_completed": self.epoch, "epochs": self.config["epochs"], "steps": self.step,
            "final": last,
            "best_test_accuracy": max(tests) if tests else None,
            "mean_epoch_time": sum(times) / len(times) if times else None,
            # the hidden-layer angle to BP (bioplausible.core.angles), and the whole-network mean
            "grad_angle_mean": _mean(hidden),
            "grad_angle_all_layers_mean": _mean(whole),
            "total_time": (time.time() - started) if started else None,
            "parameters": self.model_record["parameters"],  # the model's own (no feedback tensors)
            "parameters_with_rule": sum(p.numel() for p in self.model.parameters()),
        }
        if self.run_dir is not None:
            atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
        return summary

    # -------------------------------------------------------------- training
    def _check(self, loss_value: float, where: str) -> None:
        if not math.isfinite(loss_value) or abs(loss_value) > self.config["divergence_threshold"]:
            raise DivergenceError(
                f"training diverged at {where}: loss = {loss_value:g} "
                f"(threshold {self.config['divergence_threshold']:g}); lower the learning rate "
                f"or change the rule's hyperparameters")

    def train_epoch(self, bar: Any = None) -> dict[str, Any]:
        """One pass over the training split; returns its loss, accuracy and timing."""
        cfg = self.config
        model, rule, opt, loss_fn = self.model, self.rule, self.optimizer, self.loss
        gen = torch.Generator()
        gen.manual_seed(cfg["seed"] * 1_000_003 + self.epoch)
        aug_gen = None if self.augment is None else augment_generator(cfg["seed"], self.epoch)
        model.train()
        # Per-step sums in the loss's own dtype (no type promotion per step), folded into
        # float64 every 50 steps so long epochs keep full precision.
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        loss_part: torch.Tensor | None = None
        summed = loss_fn.reduction == "sum"
        count_correct = correct_counter(self.task)
        correct = torch.zeros((), dtype=torch.float64 if self.task == "multilabel" else torch.int64,
                              device=self.device)
        n = 0
        probe_time = 0.0  # diagnostics are not part of the rule's cost: excluded from epoch_time
        start = time.perf_counter()
        for xb, yb in self.train_split.batches(cfg["batch_size"], shuffle=True, generator=gen):
            if aug_gen is not None:
                xb = self.augment(xb, aug_gen, self.augment_fill)
            self.step += 1
            probing = self.probe.due(self.step)
            if probing:  # BP's reference on the same batch, before the rule's step (like for like)
                probe_start = time.perf_counter()
                reference = self.probe.reference(rule, model, xb, yb, loss_fn)
                probe_time += time.perf_counter() - probe_start
            res = rule.train_step(model, xb, yb, loss_fn)
            if probing:
                probe_start = time.perf_counter()
                self.record_probe(self.probe.compare(rule, model, reference))
                probe_time += time.perf_counter() - probe_start
            opt.step()
            rule.after_step(model)
            batch = yb.shape[0]
            if loss_part is None:
                loss_part = torch.zeros((), dtype=res.loss.dtype, device=self.device)
            loss_part.add_(res.loss, alpha=1 if summed else batch)
            if count_correct is not None:
                correct.add_(count_correct(res.output, yb))
            n += batch
            if self.step % 50 == 0:
                loss_sum.add_(loss_part)
                loss_part.zero_()
                self._check(float(res.loss), f"epoch {self.epoch + 1}, step {self.step}")
                if bar is not None and not bar.disable:
                    bar.update(min(n - bar.n, bar.total - bar.n))
                    bar.set_postfix(loss=f"{float(loss_sum) / n:.4g}",
                                    samples_s=f"{n / (time.perf_counter() - start):.0f}")
        elapsed = time.perf_counter() - start - probe_time
        if loss_part is not None:
            loss_sum.add_(loss_part)
        train_loss = float(loss_sum) / max(n, 1)
        self._check(train_loss, f"the end of epoch {self.epoch + 1}")
        accuracy = {} if count_correct is None else {"train_accuracy": 100.0 * float(correct) / max(n, 1)}
        return {"train_loss": train_loss, **accuracy, "epoch_time": elapsed, "probe_time": probe_time,
                "samples_per_s": n / elapsed if elapsed > 0 else None}

    def record_probe(self, record: dict[str, Any], step: int | None = None) -> None:
        """Keep and log one probe comparison (at ``step``, default the trainer's own)."""
        record = {"kind": "probe", "epoch": self.epoch + 1, "step": self.step if step is None else step, **record}
        self.probe_records.append(record)
        self._log(record)

    def _open_run_dir(self, resume: bool) -> None:
        """Continue from the checkpoint (``resume``) or start clean; write ``config.yaml``."""
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ckpt = self.run_dir / "checkpoint.pt"
        if resume and ckpt.exists():
            self.load_checkpoint(ckpt)
        else:  # a fresh start, or a resume with nothing to resume from: no older lines kept
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            (self.run_dir / "summary.json").unlink(missing_ok=True)
            (self.run_dir / "model.pt").unlink(missing_ok=True)
            (self.run_dir / "rule_state.pt").unlink(missing_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", self.config.to_yaml() if self.recorded_config is None
                          else yaml.safe_dump(json.loads(json.dumps(self.recorded_config, default=str)),
                                              sort_keys=False))

    def _evaluate_epoch(self, record: dict[str, Any]) -> dict[str, Any]:
        """The epoch's record: training numbers, evaluation splits, feedback errors, rule metrics."""
        cfg = self.config
        t0 = time.perf_counter()
        for split_name, split in self.eval_splits.items():
            for k, v in evaluate(self.model, split, self.loss, cfg["eval_batch_size"], self.task).items():
                record[f"{split_name}_{k}"] = v
        if cfg["eval_train"]:
            for k, v in evaluate(self.model, self.train_split, self.loss, cfg["eval_batch_size"], self.task).items():
                record[f"train_eval_{k}"] = v
        record = {"kind": "epoch", "epoch": self.epoch, "step": self.step, **record,
                  "eval_time": time.perf_counter() - t0,
                  "lr": self.optimizer.param_groups[0]["lr"]}
        record.update(feedback_errors(self.rule, self.model))  # ‖W − B‖/‖W‖ after the epoch
        record.update({f"rule/{k}": v for k, v in self.rule.epoch_metrics(self.model).items()})
        return record

    def _print_epoch(self, record: dict[str, Any], stacked: bool = False) -> None:
        split = "test" if "test" in self.eval_splits else "val" if "val" in self.eval_splits else None
        test = ("" if split is None  # nothing to evaluate on: no made-up "nan%"
                else f"{split} loss {record[f'{split}_loss']:.4g}" if self.task == "reconstruction"
                else f"{split} acc {record[f'{split}_accuracy']:.2f}%")
        who = f"{self.rule.name} seed {self.config['seed']}" if stacked else self.rule.name
        msg = (f"[{who}] epoch {self.epoch}/{self.config['epochs']}  "
               f"loss {record['train_loss']:.4f}  {test}  "
               f"{record['epoch_time']:.1f}s ({record['samples_per_s']:.0f} ex/s{', stacked' if stacked else ''})")
        print(msg, flush=True)

    def _run_epoch(self) -> None:
        """Train one epoch, evaluate, log, step the schedule and checkpoint when due."""
        from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

        cfg = self.config
        bar = tqdm(total=len(self.train_split), desc=f"{self.rule.name} epoch {self.epoch + 1}/{cfg['epochs']}",
                   unit="ex", leave=False, mininterval=0.5,
                   disable=not (self.progress and (sys.stderr.isatty() or _in_notebook())))
        try:
            record = self.train_epoch(bar)
        finally:
            bar.close()
        self.end_epoch(record)

    def end_epoch(self, record: dict[str, Any], stacked: bool = False) -> None:
        """After a training epoch: evaluate, log, step the schedule, checkpoint when due.

        A non-finite evaluation loss is a :class:`DivergenceError`. The stacked runner
        (:mod:`bioplausible.experiments.runs`) calls this for each of its runs (``stacked=True``)."""
        cfg = self.config
        self.epoch += 1
        record = self._evaluate_epoch(record)
        if self.schedule is not None:
            if stacked:  # the stack steps the weights itself, never optimizer.step(): torch would
                # warn that the schedule steps first; the rates it sets are the same (the stack re-reads them)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                    self.schedule.step()
            else:
                self.schedule.step()
        self.history.append(record)
        self._log(record)
        for cb in self.callbacks:
            cb(record)
        bad = [k for k, v in record.items() if k.endswith("_loss") and isinstance(v, float)
               and not math.isfinite(v)]
        if bad:  # the data are finite (checked when loaded): the model's outputs overflowed
            raise DivergenceError(f"evaluation after epoch {self.epoch} gave {bad[0]} = "
                                  f"{record[bad[0]]:g}: the model's outputs are not finite; "
                                  f"lower the learning rate or change the rule's hyperparameters")
        if self.progress:
            self._print_epoch(record, stacked)
        if self.epoch % cfg["checkpoint_every"] == 0 or self.epoch == cfg["epochs"]:
            self.save_checkpoint()

    def _save_final(self) -> None:
        """The plain model (``model.pt``) and the rule's own tensors (``rule_state.pt``)."""
        plain = {k: v for k, v in self.model.state_dict().items() if k in set(self.plain_keys)}
        atomic_torch_save(plain, self.run_dir / "model.pt")
        owned = self.rule.owned.state_dict()
        if owned:  # the rule's own tensors beside the plain model
            atomic_torch_save(dict(owned), self.run_dir / "rule_state.pt")

    def run(self, resume: bool = False) -> FitResult:
        """Train to ``config["epochs"]`` (from the checkpoint with ``resume``); write the run directory."""
        started = time.time()
        self._open_run_dir(resume)
        from .loggers import make_logger

        made = [make_logger(name, self.run_dir, purge_step=self.step + 1 if self.step else None,
                            config=self.config.to_dict())
                for name in self.logger_names] if self.run_dir is not None else []
        self.loggers.extend(made)
        status, message = "completed", ""
        try:
            while self.epoch < self.config["epochs"]:
                self._run_epoch()
        except DivergenceError as exc:
            status, message = "diverged", str(exc)
            self._log({"kind": "event", "event": "diverged", "epoch": self.epoch + 1,
                       "step": self.step, "message": message})
        except OSError as exc:
            if exc.errno not in STORAGE_ERRNOS:
                raise
            saved = getattr(self, "_saved_epoch", 0)
            kept = (f"the checkpoint of epoch {saved} and the metrics up to it are intact: free space, then "
                    f"continue with --resume" if saved else "nothing was checkpointed yet: free space and start again")
            raise StorageError(f"cannot write to run directory {str(self.run_dir)!r} after epoch {self.epoch}: "
                               f"{exc.strerror}; {kept}") from None
        except KeyboardInterrupt:
            status, message = "interrupted", "interrupted by the user; continue with --resume"
            self._write_summary(status, message, started)
            raise
        finally:
            for logger in made:  # the loggers this run made (not those the caller passed in)
                logger.close()
                self.loggers.remove(logger)
        summary = self._write_summary(status, message, started)
        if self.run_dir is not None and status == "completed":
            self._save_final()
        return FitResult(self.model, self.rule, self.history, summary, self.run_dir, list(self.probe_records))


_SHORTCUTS = {"lr": ("optimizer", "lr"), "loss": ("loss",), "epochs": ("epochs",),
              "batch_size": ("batch_size",), "seed": ("seed",), "probe_every": ("probe_every",),
              "device": ("device",), "dtype": ("dtype",), "optimizer": ("optimizer", "name"),
              "deterministic": ("deterministic",)}


def fit_trainer(model: nn.Module, rule: Rule | str, data: Any, config: TrainConfig, *,
                out: str | os.PathLike | None = None, given: Any = None,
                load_options: dict[str, Any] | None = None) -> Trainer:
    """The :class:`Trainer` that :func:`fit` runs for ``model`` on the bundle ``data``.

    The summary names the data actually trained on, not the config's default; ``config.yaml``
    and ``summary.json`` record the module and the data that ran (``given``: what the caller
    passed, default ``data``), not the config's ``model.spec`` / dataset defaults.
    """
    from .provenance import describe_data

    config = config.updated({"dataset": {"name": str(data.info.name)}})
    torch.manual_seed(config["seed"])
    trainer = Trainer(model, rule, data, config, out=out)
    recorded = config.to_dict()
    recorded["model"] = {k: v for k, v in trainer.model_record.items()}
    recorded["dataset"] = describe_data(data if given is None else given, data, load_options)
    trainer.recorded_config = recorded
    return trainer


def fit(model: nn.Module, rule: Rule | str, data: Any, eval_data: Any = None, *,
        config: TrainConfig | dict | None = None, out: str | os.PathLike | None = None,
        resume: bool = False, loggers: list[Any] | None = None, verbose: bool = False,
        **options: Any) -> FitResult:
    """Train ``model`` with ``rule`` on ``data``.

    ``data`` is a dataset name, a DataBundle, a ``DataLoader``, a ``Dataset``, ``(X, y)``
    tensors or a dict ``{"train", "test", "val"}`` of these; ``eval_data`` (optional) is what
    to evaluate on every epoch as ``test``, or a dict with ``test``/``val``
    (:func:`bioplausible.data.as_bundle` explains batching and what ``resume`` guarantees).

    Keyword shortcuts override the config: ``lr``, ``loss``, ``epochs``, ``batch_size``,
    ``seed``, ``probe_every``, ``device``, ``dtype``, ``optimizer`` (a name). With ``out`` a run
    directory is written; ``resume=True`` continues from its checkpoint. ``loggers``: objects
    with ``log(record)`` given every metrics record, e.g. :class:`bioplausible.engine.loggers.TensorBoardLogger`.
    ``verbose``: a progress bar (a widget in Jupyter) and one line per epoch; only this switches
    printing on (a ``config`` with ``progress: true`` does not).

    The result holds the per-epoch records (``history``) and the probe's (``probes``).
    """
    if not isinstance(verbose, bool):
        raise ConfigError(f"fit(verbose=...) must be True or False, got {verbose!r}")
    if "progress" in options:
        raise ConfigError("fit() prints only with verbose=True; use verbose instead of progress")
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config or {})
    config = config.updated({"progress": verbose})
    update: dict[str, Any] = {}
    for key, value in options.items():
        if key not in _SHORTCUTS:
            raise ConfigError(f"fit() got an unknown option {key!r}; use {', '.join(sorted(_SHORTCUTS))} or config=")
        node = update
        path = _SHORTCUTS[key]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    if isinstance(rule, str):
        update.setdefault("rule", {})["name"] = rule
    if isinstance(data, str):
        update.setdefault("dataset", {})["name"] = data
    config = config.updated(update)
    given = data
    load_options = None
    if isinstance(data, str):
        from ..data import load_dataset

        load_options = {k: v for k, v in config.dataset_options().items() if v is not None}
        data = load_dataset(data, **load_options)
    from ..data.adapt import as_bundle

    data = as_bundle(data, eval_data)
    with runtime(config):  # threads, determinism and denormal flushing, as run_job applies them
        trainer = fit_trainer(model, rule, data, config, out=out, given=given, load_options=load_options)
        trainer.loggers.extend(loggers or [])
        if out is None:
            return trainer.run(resume=resume)
        run_dir = Path(out)
        check_run_dir(run_dir, resume=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(run_dir):
            return trainer.run(resume=resume)
