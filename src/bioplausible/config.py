"""Training configuration: one nested mapping, validated, with YAML files and dotted overrides.

A configuration is the same whether it comes from CLI flags, ``--config run.yaml``, ``--set
key=value`` overrides or a preset::

    dataset:   {name: mnist, normalize: standardize, flatten: false, val_size: 0, subset: null}
    model:     {spec: "mlp:784-500-10", activation: sigmoid}   # other keys: model options
    rule:      {name: fa}                                      # other keys: rule hyperparameters
    loss:      auto                # cross_entropy, or bce for multi-label data
    optimizer: {name: sgd, lr: 0.1, groups: {feedback: {lr: 0.01}}}  # other keys: optimizer options
    schedule:  {name: none}                                    # step | cosine | exponential | multistep
    epochs: 10
    batch_size: 100
    ...

Sections ``dataset``, ``model``, ``rule``, ``optimizer`` and ``schedule`` accept extra keys that
are passed on (and validated) where they are used; every other key is checked here, by name and
by type, so a typo or ``--set optimizer.lr=abc`` fails before anything runs.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "dataset": {"name": "mnist", "root": None, "normalize": "standardize", "flatten": False,
                "val_size": 0, "subset": None},
    "model": {"spec": "mlp:784-500-10"},
    "rule": {"name": "bp"},
    "loss": "auto",
    "optimizer": {"name": "sgd", "lr": 0.1, "groups": {}},
    "schedule": {"name": "none"},
    "epochs": 10,
    "batch_size": 100,
    "eval_batch_size": 1000,
    "seed": 0,
    "deterministic": False,
    "device": "cpu",
    "dtype": "float32",
    "probe_every": 0,
    "divergence_threshold": 1.0e8,
    "checkpoint_every": 1,
    "eval_train": False,
    "progress": True,
    "out": None,
}

OPEN_SECTIONS = {"dataset", "model", "rule", "optimizer", "schedule"}
class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-4`` as a float (YAML 1.2 behaviour)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


_NULLABLE = {"out", "dataset.root", "dataset.subset"}
_POSITIVE = {"epochs", "batch_size", "eval_batch_size", "checkpoint_every"}


def _type_name(value: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a mapping"}.get(type(value), type(value).__name__)


def _check_value(path: str, value: Any, default: Any) -> Any:
    if value is None and (path in _NULLABLE or default is None):
        return None
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
    raise ConfigError(f"{path} must be {_type_name(default)}, got {value!r}")


def _merge(base: dict[str, Any], update: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{prefix}{key}"
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value, path + ".")
        elif isinstance(out.get(key), dict) and isinstance(value, str) and key in ("model", "rule", "dataset"):
            # shorthand: rule: fa, model: "mlp:784-500-10", dataset: mnist
            out[key] = {**out[key], ("spec" if key == "model" else "name"): value}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _validate(cfg: dict[str, Any]) -> dict[str, Any]:
    for key in cfg:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(key, list(DEFAULTS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}; known keys: {', '.join(DEFAULTS)}")
    for key, default in DEFAULTS.items():
        if isinstance(default, dict):
            section = cfg[key]
            if not isinstance(section, dict):
                raise ConfigError(f"{key} must be a mapping, got {section!r}")
            for sub, sub_default in default.items():
                section[sub] = _check_value(f"{key}.{sub}", section.get(sub), sub_default)
            if key not in OPEN_SECTIONS:
                extra = sorted(set(section) - set(default))
                if extra:
                    raise ConfigError(f"unknown key {key}.{extra[0]}")
        else:
            cfg[key] = _check_value(key, cfg[key], default)
    for key in _POSITIVE:
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be at least 1, got {cfg[key]}")
    if cfg["probe_every"] < 0:
        raise ConfigError(f"probe_every must be >= 0, got {cfg['probe_every']}")
    if cfg["optimizer"]["lr"] <= 0:
        raise ConfigError(f"optimizer.lr must be positive, got {cfg['optimizer']['lr']}")
    if cfg["dtype"] not in ("float32", "float64", "float16", "bfloat16"):
        raise ConfigError(f"dtype must be float32, float64, float16 or bfloat16, got {cfg['dtype']!r}")
    if not isinstance(cfg["optimizer"].get("groups", {}), dict):
        raise ConfigError("optimizer.groups must map a group name to options, e.g. {feedback: {lr: 0.01}}")
    return cfg


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optimizer.lr=0.01"`` -> (["optimizer", "lr"], 0.01); values are parsed as YAML scalars."""
    key, eq, raw = item.partition("=")
    key = key.strip()
    if not eq or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r} must look like key=value, e.g. optimizer.lr=0.01")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string; numbers are meant
        try:
            value = float(value)
        except ValueError:
            pass
    return key.split("."), value


def overrides_to_dict(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r} conflicts with another override")
        node[path[-1]] = value
    return out


@dataclass(frozen=True)
class TrainConfig:
    """A validated configuration; ``data`` holds the full nested mapping."""

    data: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULTS))

    @classmethod
    def from_dict(cls, mapping: dict[str, Any] | None = None, overrides: list[str] | None = None) -> TrainConfig:
        cfg = _merge(DEFAULTS, dict(mapping or {}))
        if overrides:
            cfg = _merge(cfg, overrides_to_dict(overrides))
        return cls(_validate(cfg))

    def updated(self, mapping: dict[str, Any] | None = None, overrides: list[str] | None = None) -> TrainConfig:
        return TrainConfig.from_dict(_merge(self.data, dict(mapping or {})), overrides)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)

    def rule_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.data["rule"].items() if k != "name"}

    def model_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.data["model"].items() if k != "spec"}

    def dataset_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.data["dataset"].items() if k not in ("name",)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(self.data)), sort_keys=False)


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML (or JSON) training config and apply ``key=value`` overrides."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        mapping = yaml_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {first}") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"config file {str(p)!r} must contain a mapping of keys to values")
    return TrainConfig.from_dict(mapping, overrides)
