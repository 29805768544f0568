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


def scalars(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """``(tag, value)`` for every number in ``record``: nested dicts become ``a/b`` tags.

    The axis keys (``kind``, ``epoch``, ``step``), booleans, strings, ``None`` and lists are
    left out; non-finite numbers are kept (a diverging loss should show).
    """
    for key, value in record.items():
        if not prefix and key in AXIS_KEYS:
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, f"{tag}/")
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

    Tags are the ``metrics.jsonl`` keys unchanged (``train_loss``, ``test_accuracy``,
    ``grad_angle/<param>``, ``grad_angle`` — the hidden-layer angle of :mod:`bioplausible.core.angles`
    — ``grad_angle_all_layers``, ``rule/<metric>``, ...). Other records (events such as
    ``diverged``) are written as text under ``event``. The event file is flushed after every
    epoch record and on :meth:`close`.
    """

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None) -> None:
        require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = str(log_dir)
        # purge_step: a resumed run drops the events it wrote at steps >= purge_step before
        # it stopped (the probe records of the unfinished epoch), so no point appears twice.
        self.writer = SummaryWriter(log_dir=self.log_dir, purge_step=purge_step)

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
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLogger:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Names accepted by the config key ``logger`` / the CLI flag ``--logger`` (comma-separated).
LOGGERS = ("none", "tensorboard")


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


def make_logger(name: str, run_dir: str | os.PathLike, purge_step: int | None = None) -> TensorBoardLogger:
    """The logger called ``name`` (``tensorboard``: events in ``run_dir/tensorboard``)."""
    if name == "tensorboard":
        return TensorBoardLogger(os.path.join(os.fspath(run_dir), "tensorboard"), purge_step=purge_step)
    raise ConfigError(f"unknown logger {name!r}; accepted: tensorboard")


__all__ = ["AXIS_KEYS", "LOGGERS", "TensorBoardLogger", "logger_names", "make_logger", "record_step",
           "require", "scalars"]
