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

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig
from ..errors import ConfigError, DivergenceError, UnknownNameError, UserError
from ..core.losses import Loss, get_loss
from ..core.probe import Probe, feedback_errors
from .._registry import make
from ..core.rule import Rule, call_prepare

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


def build_optimizer(params: list[dict[str, Any]], options: dict[str, Any]) -> torch.optim.Optimizer:
    """``{"name": "sgd", "lr": 0.1, "momentum": 0.9}`` -> ``torch.optim.SGD(params, ...)``.

    The implementation is chosen per dtype and device: the fused kernel (one kernel per step)
    where it updates every element correctly — CUDA, or float32/float64 on the CPU — and the
    per-tensor loop otherwise. (In this torch the fused CPU SGD updates only a few elements of
    float16/bfloat16 tensors, so a half-precision run would silently train nothing.)
    """
    from .config import check_optimizer_options, optimizer_class

    check_optimizer_options(options)
    opts = {k: v for k, v in options.items() if k not in ("name", "groups")}
    name = str(options.get("name", "sgd"))
    cls = optimizer_class(name)
    tensors = [p for g in params for p in g["params"]]
    if opts.get("fused") and not _fused_ok(cls, tensors):
        raise ConfigError(f"optimizer {name!r}: fused=True does not update float16/bfloat16 tensors on the "
                          f"CPU correctly in this torch (SGD); remove the option")
    if "fused" not in opts and "foreach" not in opts and _fused_ok(cls, tensors) \
            and all(t.is_contiguous() for t in tensors):
        opts["fused"] = True  # same update up to rounding; makes KP's decay nearly free
    _check_half_eps(cls, name, opts, tensors)
    try:
        optimizer = cls(params, **opts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer {name!r}: {exc}") from None
    if opts.get("fused"):
        optimizer.register_step_pre_hook(_contiguous_grads)
    return optimizer


def _contiguous_grads(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Fused CPU SGD/Adam in this torch mis-step a parameter whose ``.grad`` (or which itself)
    is not contiguous — a transposed gradient a rule wrote moves the wrong entries. Make every
    gradient contiguous before a fused step (a no-op check for the usual contiguous ones)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            g = p.grad
            if g is not None and not g.is_contiguous():
                p.grad = g.contiguous()


_FUSABLE = {torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW}


def _check_half_eps(cls: type, name: str, opts: dict[str, Any], tensors: list[torch.Tensor]) -> None:
    """An adaptive optimizer stepping float16 tensors in float16 needs an eps float16 can hold."""
    import inspect

    if opts.get("fused") or not any(t.dtype == torch.float16 for t in tensors):
        return
    default = inspect.signature(cls.__init__).parameters.get("eps")
    if default is None:
        return
    eps = float(opts.get("eps", default.default))
    tiny = torch.finfo(torch.float16).tiny
    if eps < tiny:
        raise ConfigError(f"optimizer {name!r}: eps={eps:g} is below float16's smallest normal number "
                          f"({tiny:.2g}), so the step divides by zero; set optimizer.eps to 1e-4 or use "
                          f"dtype bfloat16/float32")


def _fused_ok(cls: type, tensors: list[torch.Tensor]) -> bool:
    """Whether ``cls(..., fused=True)`` updates every tensor in ``tensors`` correctly."""
    if cls not in _FUSABLE or not tensors:
        return False
    devices = {t.device.type for t in tensors}
    if len(devices) != 1 or devices.pop() not in ("cpu", "cuda"):
        return False
    half_broken = cls is torch.optim.SGD and tensors[0].device.type == "cpu"
    return all(t.is_floating_point() and not (half_broken and t.dtype in (torch.float16, torch.bfloat16))
               for t in tensors)


def build_schedule(optimizer: torch.optim.Optimizer, options: dict[str, Any], epochs: int):
    """Per-epoch LR schedule: none, step, multistep, exponential or cosine."""
    opts = {k: v for k, v in options.items() if k != "name"}
    name = str(options.get("name", "none")).lower()
    sched = torch.optim.lr_scheduler
    table: dict[str, Callable[..., Any]] = {
        "step": sched.StepLR, "multistep": sched.MultiStepLR, "exponential": sched.ExponentialLR,
        "cosine": lambda o, **kw: sched.CosineAnnealingLR(o, **{"T_max": epochs, **kw}),
    }
    if name == "none":
        if opts:
            raise ConfigError(f"schedule 'none' takes no options, got {sorted(opts)}")
        return None
    if name not in table:
        raise UnknownNameError(f"unknown schedule {name!r}; choose from none, {', '.join(table)}")
    try:
        return table[name](optimizer, **opts)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"schedule {name!r}: {exc}") from None


#: losses that compare class scores with a class: meaningless when the target is the input
CLASSIFICATION_LOSSES = ("cross_entropy",)


def resolve_loss(name: str, task: str) -> Loss:
    """``auto`` is cross-entropy for single-label data, sigmoid BCE for multi-label data and
    ``mse_batchmean`` (squared error summed over the outputs, batch mean) for reconstruction."""
    if name == "auto":
        name = {"multilabel": "bce", "reconstruction": "mse_batchmean"}.get(task, "cross_entropy")
    loss = get_loss(name)
    if task == "reconstruction" and loss.name in CLASSIFICATION_LOSSES:
        raise ConfigError(f"loss {loss.name!r} is a classification loss but the task is reconstruction "
                          f"(targets = inputs); use mse_sum, mse_batchmean, mse_half_sum, mse or bce")
    if task == "multilabel" and loss.name == "cross_entropy":
        raise ConfigError("this dataset is multi-label: use --loss bce (per-label sigmoid) or an mse loss")
    return loss


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint_file(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``; anything unreadable that way is one UserError line."""
    import pickle
    import zipfile

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, zipfile.BadZipFile, UnicodeDecodeError, OSError) as exc:
        first = (" ".join(str(exc).split()) or type(exc).__name__)[:160]
        raise UserError(f"checkpoint {str(path)!r} cannot be loaded safely ({first}); it is corrupt, "
                        f"truncated or not written by bioplausible: delete it to restart the run "
                        f"or start a new one with --out") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "step"} <= set(state):
        raise UserError(f"checkpoint {str(path)!r} is not a bioplausible checkpoint; delete it to restart "
                        f"the run or start a new one with --out")
    return state


def _before_checkpoint(record: dict[str, Any], epoch: int, step: int) -> bool:
    """Whether a metrics line describes training up to the checkpoint (epoch ``epoch``, step ``step``)."""
    if record.get("kind") == "probe":
        return int(record.get("step", 0)) <= step
    return int(record.get("epoch", 0)) <= epoch


def _accuracy_counts(output: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if task == "multilabel":
        return ((output > 0) == (y > 0.5)).to(torch.float64).mean(dim=1).sum()
    if y.dim() > 1:  # one-hot targets
        y = y.argmax(dim=1)
    return (output.argmax(dim=1) == y).sum()


def _correct_counter(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The per-batch correct count for ``task`` (class-index targets in three ops); ``None``
    for reconstruction, which has no accuracy."""
    if task == "reconstruction":
        return None
    if task == "multilabel":
        return lambda output, y: _accuracy_counts(output, y, task)

    def count(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.dim() > 1:
            y = y.argmax(dim=1)
        return torch.eq(output.argmax(dim=1), y).sum()

    return count


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
                correct += float(_accuracy_counts(out, yb, task))
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


@torch.no_grad()
def check_reconstruction_output(model: nn.Module, example: torch.Tensor) -> None:
    """A model trained to reconstruct its input must output as many numbers as the input has."""
    was_training = model.training
    model.eval()  # no dropout, no training-time noise: only the shape is wanted
    try:
        out = model(example)
    finally:
        model.train(was_training)
    want = example[0].numel()
    got = out[0].numel() if out.dim() > 0 and out.shape[0] == example.shape[0] else -1
    if got != want:
        raise ConfigError(f"the task is reconstruction (targets = inputs) but the model outputs "
                          f"{tuple(out.shape[1:])} per example for inputs of {want} numbers; give it "
                          f"{want} outputs (e.g. model autoencoder or mlp:...-{want})")


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
        model = model.to(device=self.device, dtype=self.dtype)
        example = next(iter(self.train_split.batches(2, shuffle=False)))[0]
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
        self.probe_records: list[dict[str, Any]] = []
        self.probe_angles: list[float] = []
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
            "history": self.history, "probe_angles": self.probe_angles,
        }

    def save_checkpoint(self) -> None:
        if self.run_dir is not None:
            _atomic_torch_save(self._checkpoint_state(), self.run_dir / "checkpoint.pt")

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
            self.history = list(state["history"])
            self.probe_angles = list(state.get("probe_angles", []))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            detail = " ".join(str(exc).split())[:160]
            raise UserError(f"checkpoint {str(path)!r} does not match this run ({type(exc).__name__}: "
                            f"{detail}); start a new run with --out") from None
        metrics = self.run_dir / "metrics.jsonl" if self.run_dir else None
        if metrics is not None and metrics.exists():  # drop lines written after the checkpoint
            from ..experiments.report import read_metrics

            kept = [r for r in read_metrics(metrics) if _before_checkpoint(r, self.epoch, self.step)]
            self.probe_records = [r for r in kept if r.get("kind") == "probe"]
            _atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def _write_summary(self, status: str, message: str = "", started: float | None = None) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        times = [h["epoch_time"] for h in self.history]
        tests = [h["test_accuracy"] for h in self.history if "test_accuracy" in h]
        summary = {
            "status": status, "message": message,
            "rule": self.rule.name, "rule_config": self.rule.config,
            "dataset": self.config["dataset"]["name"], "model": self.config["model"]["spec"],
            "epochs_completed": self.epoch, "epochs": self.config["epochs"], "steps": self.step,
            "final": last,
            "best_test_accuracy": max(tests) if tests else None,
            "mean_epoch_time": sum(times) / len(times) if times else None,
            "grad_angle_mean": (sum(self.probe_angles) / len(self.probe_angles)
                                if self.probe_angles else None),
            "total_time": (time.time() - started) if started else None,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "data": {"train": len(self.train_split), **{k: len(v) for k, v in self.eval_splits.items()}},
        }
        if self.run_dir is not None:
            _atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
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
        model.train()
        # Per-step sums in the loss's own dtype (no type promotion per step), folded into
        # float64 every 50 steps so long epochs keep full precision.
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        loss_part: torch.Tensor | None = None
        summed = loss_fn.reduction == "sum"
        count_correct = _correct_counter(self.task)
        correct = torch.zeros((), dtype=torch.float64 if self.task == "multilabel" else torch.int64,
                              device=self.device)
        n = 0
        probe_time = 0.0  # diagnostics are not part of the rule's cost: excluded from epoch_time
        start = time.perf_counter()
        for xb, yb in self.train_split.batches(cfg["batch_size"], shuffle=True, generator=gen):
            self.step += 1
            probing = self.probe.due(self.step)
            if probing:  # BP's reference on the same batch, before the rule's step (like for like)
                probe_start = time.perf_counter()
                reference = self.probe.reference(rule, model, xb, yb, loss_fn)
                probe_time += time.perf_counter() - probe_start
            res = rule.train_step(model, xb, yb, loss_fn)
            if probing:
                probe_start = time.perf_counter()
                record = self.probe.compare(rule, model, reference)
                if "grad_angle" in record:
                    self.probe_angles.append(record["grad_angle"])
                record = {"kind": "probe", "epoch": self.epoch + 1, "step": self.step, **record}
                self.probe_records.append(record)
                self._log(record)
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

    def run(self, resume: bool = False) -> FitResult:
        cfg = self.config
        started = time.time()
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt = self.run_dir / "checkpoint.pt"
            if resume and ckpt.exists():
                self.load_checkpoint(ckpt)
            else:  # a fresh start, or a resume with nothing to resume from: no older lines kept
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
                (self.run_dir / "summary.json").unlink(missing_ok=True)
                (self.run_dir / "model.pt").unlink(missing_ok=True)
                (self.run_dir / "rule_state.pt").unlink(missing_ok=True)
            _atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml())
        from .loggers import make_logger

        made = [make_logger(name, self.run_dir, purge_step=self.step + 1 if self.step else None,
                            config=cfg.to_dict())
                for name in self.logger_names] if self.run_dir is not None else []
        self.loggers.extend(made)
        status, message = "completed", ""
        try:
            from tqdm.auto import tqdm  # a widget in Jupyter, text on a terminal

            while self.epoch < cfg["epochs"]:
                bar = tqdm(total=len(self.train_split), desc=f"{self.rule.name} epoch {self.epoch + 1}/{cfg['epochs']}",
                           unit="ex", leave=False, mininterval=0.5,
                           disable=not (self.progress and (sys.stderr.isatty() or _in_notebook())))
                try:
                    record = self.train_epoch(bar)
                finally:
                    bar.close()
                self.epoch += 1
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
                record.update({f"rule/{k}": v for k, v in self.rule.metrics(self.model).items()})
                if self.schedule is not None:
                    self.schedule.step()
                self.history.append(record)
                self._log(record)
                for cb in self.callbacks:
                    cb(record)
                if self.progress:
                    split = "test" if "test" in self.eval_splits else "val" if "val" in self.eval_splits else None
                    test = ("" if split is None  # nothing to evaluate on: no made-up "nan%"
                            else f"{split} loss {record[f'{split}_loss']:.4g}" if self.task == "reconstruction"
                            else f"{split} acc {record[f'{split}_accuracy']:.2f}%")
                    msg = (f"[{self.rule.name}] epoch {self.epoch}/{cfg['epochs']}  "
                           f"loss {record['train_loss']:.4f}  {test}  "
                           f"{record['epoch_time']:.1f}s ({record['samples_per_s']:.0f} ex/s)")
                    print(msg, flush=True)
                if self.epoch % cfg["checkpoint_every"] == 0 or self.epoch == cfg["epochs"]:
                    self.save_checkpoint()
        except DivergenceError as exc:
            status, message = "diverged", str(exc)
            self._log({"kind": "event", "event": "diverged", "epoch": self.epoch + 1,
                       "step": self.step, "message": message})
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
            plain = {k: v for k, v in self.model.state_dict().items() if k in set(self.plain_keys)}
            _atomic_torch_save(plain, self.run_dir / "model.pt")
            owned = self.rule.owned.state_dict()
            if owned:  # the rule's own tensors beside the plain model
                _atomic_torch_save(dict(owned), self.run_dir / "rule_state.pt")
        return FitResult(self.model, self.rule, self.history, summary, self.run_dir, list(self.probe_records))


_SHORTCUTS = {"lr": ("optimizer", "lr"), "loss": ("loss",), "epochs": ("epochs",),
              "batch_size": ("batch_size",), "seed": ("seed",), "probe_every": ("probe_every",),
              "device": ("device",), "dtype": ("dtype",), "optimizer": ("optimizer", "name"),
              "deterministic": ("deterministic",)}


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
    if isinstance(data, str):
        from ..data import load_dataset

        data = load_dataset(data, **{k: v for k, v in config.dataset_options().items() if v is not None})
    from ..data.adapt import as_bundle
    from ..experiments.jobs import check_run_dir, run_lock, runtime

    data = as_bundle(data, eval_data)
    # the summary names the data actually trained on, not the config's default
    config = config.updated({"dataset": {"name": str(data.info.name)}})
    with runtime(config):  # threads, determinism and denormal flushing, as run_job applies them
        torch.manual_seed(config["seed"])
        trainer = Trainer(model, rule, data, config, out=out)
        trainer.loggers.extend(loggers or [])
        if out is None:
            return trainer.run(resume=resume)
        run_dir = Path(out)
        check_run_dir(run_dir, resume=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(run_dir):
            return trainer.run(resume=resume)
