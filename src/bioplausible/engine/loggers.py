"""Loggers that receive every record the trainer writes to ``metrics.jsonl``.

A logger is any object with ``log(record: dict)``; the trainer calls it for each record
(``Trainer.loggers``). :class:`TensorBoardLogger` writes the records' numbers as TensorBoard
scalars, so a long run can be watched where other runs are watched::

    trainer = bp.Trainer(model, "fa", data, config, out="runs/fa")
    trainer.loggers.append(TensorBoardLogger("runs/fa/tensorboard"))
    trainer.run()                       # then: tensorboard --logdir runs

It needs the optional ``tensorboard`` package (``pip install "bioplausible[tensorboard]"``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError

#: Keys that place a record on the time axis rather than being plotted.
AXIS_KEYS = ("kind", "epoch", "step")


_TIME_KEYS = ("epoch_time", "eval_time", "probe_time", "samples_per_s", "total_time")


def group_tag(key: str) -> str:
    """A ``metrics.jsonl`` key as a grouped dashboard tag: ``test_accuracy`` -> ``accuracy/test``,
    ``train_loss`` -> ``loss/train``, ``epoch_time`` -> ``time/epoch_time``, ``lr`` ->
    ``optimizer/lr``, ``relative_error_top`` -> ``feedback/relative_error_top``, ``grad_angle``
    (the hidden-layer angle) -> ``grad_angle/hidden_layers``, ``grad_angle_all_layers`` ->
    ``grad_angle/all_layers``; keys that
    already name a group (``grad_angle/1.weight``, ``rule/...``) are kept."""
    if "/" in key:
        return key
    if key == "grad_angle":  # the hidden-layer angle of bioplausible.core.angles
        return "grad_angle/hidden_layers"
    if key == "grad_angle_all_layers":
        return "grad_angle/all_layers"
    for metric in ("accuracy", "loss", "auc"):
        if key.endswith(f"_{metric}"):
            return f"{metric}/{key[: -len(metric) - 1]}"
    if key in _TIME_KEYS:
        return f"time/{key}"
    if key == "lr":
        return "optimizer/lr"
    if key.startswith(("relative_error", "sign_congruence")):
        return f"feedback/{key}"
    return f"metrics/{key}"


def scalars(record: dict[str, Any], prefix: str = "", grouped: bool = True) -> Iterator[tuple[str, float]]:
    """``(tag, value)`` for every number in ``record``: nested dicts become ``a/b`` tags, and
    top-level keys are grouped by :func:`group_tag` (``grouped=False``: the keys unchanged).

    The axis keys (``kind``, ``epoch``, ``step``), booleans, strings, ``None`` and lists are
    left out; non-finite numbers are kept (a diverging loss should show).
    """
    for key, value in record.items():
        if not prefix and key in AXIS_KEYS:
            continue
        tag = f"{prefix}{key}" if prefix or not grouped or isinstance(value, dict) else group_tag(key)
        if isinstance(value, dict):
            yield from scalars(value, f"{tag}/", grouped)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield tag, float(value)
        elif hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # 0-d tensor or array
            yield tag, float(value.item())


def record_step(record: dict[str, Any]) -> int | None:
    """The x-axis value: epoch records by ``epoch``, probe records by ``step``; else None."""
    kind = record.get("kind")
    if kind == "epoch":
        return int(record["epoch"])
    if kind == "probe":
        return int(record["step"])
    return None


class TensorBoardLogger:
    """Writes the numbers of epoch records (x: epoch) and probe records (x: step) to TensorBoard.

    Tags are the ``metrics.jsonl`` keys grouped by :func:`group_tag` (``loss/train``,
    ``accuracy/test``, ``time/epoch_time``, ``grad_angle/<param>``, ``grad_angle/hidden_layers`` —
    the hidden-layer angle of :mod:`bioplausible.core.angles` —, ``grad_angle/all_layers``,
    ``rule/<metric>``, ...), so
    the dashboard shows one section per kind. Other records (events such as ``diverged``) are
    written as text under ``event``. The event file is flushed after every epoch record and on
    :meth:`close`. With ``hparams`` (a flat mapping of the run's settings: rule, rate, batch
    size, ...), :meth:`close` also writes them with the last epoch's accuracies and losses for
    TensorBoard's HParams view, where runs of different rules can be compared side by side.
    """

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None,
                 hparams: dict[str, Any] | None = None) -> None:
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = str(log_dir)
        # purge_step: a resumed run drops the events it wrote at steps >= purge_step before
        # it stopped (the probe records of the unfinished epoch), so no point appears twice.
        self.writer = SummaryWriter(log_dir=self.log_dir, purge_step=purge_step)
        self.hparams = dict(hparams or {})
        self._last_epoch: dict[str, Any] = {}

    def log(self, record: dict[str, Any]) -> None:
        step = record_step(record)
        if step is None:
            message = record.get("message") or record.get("event")
            if message:
                self.writer.add_text("event", str(message), global_step=record.get("step"))
            return
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, global_step=step)
        if record.get("kind") == "epoch":
            self._last_epoch = record
            self.writer.flush()

    def close(self) -> None:
        if self.hparams and self._last_epoch:
            metrics = {f"hparam/{group_tag(k)}": float(v) for k, v in self._last_epoch.items()
                       if k.endswith(("_accuracy", "_loss")) and isinstance(v, (int, float))}
            self.writer.add_hparams(self.hparams, metrics, run_name=".")
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Names accepted by the config key ``logger`` / the CLI flag ``--logger`` (comma-separated).
LOGGERS = ("none", "tensorboard", "wandb")


def logger_names(value: str) -> list[str]:
    """``"tensorboard"`` -> ``["tensorboard"]``; ``"none"`` -> ``[]``; unknown names: ConfigError."""
    names = [n.strip().lower() for n in str(value).split(",") if n.strip()]
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"unknown logger {name!r}; accepted: {', '.join(LOGGERS)}")
    return [n for n in names if n != "none"]


def require(name: str) -> None:
    """Raise a one-line ConfigError now if logger ``name`` cannot work here (missing package)."""
    import importlib.util

    if name == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("TensorBoard logging needs the tensorboard package: "
                          "pip install 'bioplausible[tensorboard]'")
    if name == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ConfigError("Weights & Biases logging needs the wandb package: pip install 'bioplausible[wandb]'")


class WandbLogger:
    """Weights & Biases: one W&B run per training run, the config as its hyperparameters, epoch
    records at x = epoch and probe records at x = step, with the grouped tags of
    :func:`group_tag` (W&B draws one panel section per group).

    The W&B project comes from ``$WANDB_PROJECT`` (default ``bioplausible``); ``WANDB_MODE=offline``
    writes the run under ``RUN_DIR/wandb`` without a network (``wandb sync`` uploads it later).
    """

    def __init__(self, run_dir: str | os.PathLike, config: dict[str, Any] | None = None,
                 project: str | None = None, name: str | None = None) -> None:
        require("wandb")
        import wandb

        self.run = wandb.init(project=project or os.environ.get("WANDB_PROJECT", "bioplausible"),
                              dir=os.fspath(run_dir), name=name or os.path.basename(os.fspath(run_dir)),
                              config=hparams_of(config) if config else None, reinit="create_new")
        self.run.define_metric("epoch")
        self.run.define_metric("step")
        for group in ("accuracy", "loss", "auc", "time", "optimizer", "feedback", "metrics", "rule"):
            self.run.define_metric(f"{group}/*", step_metric="epoch")
        self.run.define_metric("grad_angle/*", step_metric="step")

    def log(self, record: dict[str, Any]) -> None:
        step = record_step(record)
        if step is None:
            return
        axis = {"epoch": step} if record.get("kind") == "epoch" else {"step": step}
        self.run.log({**dict(scalars(record)), **axis})

    def close(self) -> None:
        self.run.finish()

    def __enter__(self) -> WandbLogger:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hparams_of(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that tell runs apart, flat (``rule``, ``rule.decay``, ``optimizer.lr``, ...),
    as numbers, strings or booleans (what the HParams view takes)."""
    out: dict[str, Any] = {}
    rule = dict(config.get("rule") or {})
    out["rule"] = str(rule.pop("name", "?"))
    for key, value in rule.items():
        out[f"rule.{key}"] = value
    opt = config.get("optimizer") or {}
    out.update({"optimizer": str(opt.get("name")), "optimizer.lr": opt.get("lr")})
    for group, opts in (opt.get("groups") or {}).items():
        for key, value in (opts or {}).items():
            out[f"optimizer.groups.{group}.{key}"] = value
    out.update({"model": str((config.get("model") or {}).get("spec")),
                "dataset": str((config.get("dataset") or {}).get("name")),
                "batch_size": config.get("batch_size"), "epochs": config.get("epochs"), "seed": config.get("seed"),
                "loss": str(config.get("loss"))})
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in out.items() if v is not None}


def make_logger(name: str, run_dir: str | os.PathLike, purge_step: int | None = None,
                config: dict[str, Any] | None = None) -> Any:
    """The logger called ``name`` (``tensorboard``: events in ``run_dir/tensorboard``; ``wandb``:
    Weights & Biases, see :class:`WandbLogger`); ``config``: the run's config, logged as its
    hyperparameters."""
    if name == "tensorboard":
        return TensorBoardLogger(os.path.join(os.fspath(run_dir), "tensorboard"), purge_step=purge_step,
                                 hparams=hparams_of(config) if config else None)
    if name == "wandb":
        return WandbLogger(run_dir, config=config)
    raise ConfigError(f"unknown logger {name!r}; accepted: tensorboard, wandb")


__all__ = ["AXIS_KEYS", "LOGGERS", "TensorBoardLogger", "WandbLogger", "group_tag", "hparams_of", "logger_names",
           "make_logger", "record_step", "require", "scalars"]
