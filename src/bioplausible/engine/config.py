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
    logger: none        # tensorboard: also write the metrics as TensorBoard events (RUN_DIR/tensorboard)
    ...

``deterministic: true`` makes torch use deterministic algorithms for the run (same seed, same
bits); ``flush_denormal: true`` (default false) flushes subnormal floats to zero on the CPU,
which can make GEMMs several times faster in epochs where weights or errors decay towards zero
but changes results slightly. Both are applied by :func:`bioplausible.experiments.jobs.run_job` (and
:func:`bioplausible.fit`) for the run only. Every number in a config must be finite.

Sections ``dataset``, ``model``, ``rule``, ``optimizer`` and ``schedule`` accept extra keys that
are passed on (and validated) where they are used; every other key is checked here, by name and
by type, so a typo or ``--set optimizer.lr=abc`` fails before anything runs.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from .._io import yaml_load
from ..core.optim import check_optimizer_options
from ..errors import ConfigError

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
    "flush_denormal": False,
    "device": "cpu",
    "dtype": "float32",
    "probe_every": 0,
    "divergence_threshold": 1.0e8,
    "checkpoint_every": 1,
    "eval_train": False,
    "progress": True,
    "logger": "none",
    "out": None,
}

OPEN_SECTIONS = {"dataset", "model", "rule", "optimizer", "schedule"}

#: ``per_rule: {np: {optimizer: {groups: {feedback: {lr: 5e-4}}}}}``: settings for one rule only,
#: applied on top of everything else when the config's rule is that rule (``--set np:KEY=VALUE``).
PER_RULE = "per_rule"


def _normalize(mapping: dict[str, Any]) -> dict[str, Any]:
    """The shorthands ``rule: fa``, ``model: "mlp:784-500-10"``, ``dataset: mnist`` as mappings."""
    for key, field in (("rule", "name"), ("model", "spec"), ("dataset", "name")):
        if isinstance(mapping.get(key), str):
            mapping[key] = {field: mapping[key]}
    per = mapping.get(PER_RULE)
    if isinstance(per, dict):
        for rule, section in list(per.items()):
            if isinstance(section, dict):
                per[rule] = _normalize(section)
    return mapping


def rule_recommended(name: Any) -> dict[str, Any]:
    """The settings rule ``name`` declares it needs (:attr:`Rule.recommended`); {} for a name
    that is not a registered rule (the rule's own error comes when it is built)."""
    if not isinstance(name, str):
        return {}
    from ..rules.registry import RULES, list_rules

    list_rules()  # registers the built-in rules
    if name not in RULES:
        return {}
    return copy.deepcopy(getattr(RULES.get(name), "recommended", None) or {})


def resolve(user: dict[str, Any], recommended: bool = True) -> dict[str, Any]:
    """The full config for what the user set: DEFAULTS < the rule's recommended settings < the
    user's settings < the user's ``per_rule`` settings for this rule.

    A recommended ``model`` section applies only when the user chose no model settings (it
    describes the model the rule documents as its default).
    """
    per = user.get(PER_RULE) or {}
    if not isinstance(per, dict) or not all(isinstance(v, dict) for v in per.values()):
        raise ConfigError(f"{PER_RULE} must map rule names to settings, e.g. "
                          f"{{np: {{optimizer: {{lr: 0.01}}}}}} (or --set np:optimizer.lr=0.01)")
    if per:
        from ..rules.registry import RULES, list_rules

        list_rules()
        for rule in per:
            if str(rule) not in RULES:
                close = difflib.get_close_matches(str(rule).lower(), RULES.names(), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"--set {rule}:...: unknown rule {rule!r}{hint}; known rules: "
                                  f"{', '.join(RULES.names())}")
    mine = {k: v for k, v in user.items() if k != PER_RULE}
    name = _merge(DEFAULTS, mine)["rule"].get("name") if isinstance(mine.get("rule", {}), dict) else None
    rule_per = {k.lower(): v for k, v in per.items()}.get(str(name).lower(), {})
    if isinstance(rule_per.get("rule"), dict) and "name" in rule_per["rule"]:
        raise ConfigError(f"{PER_RULE}.{name}.rule.name: a rule's own settings cannot change the rule")
    rec = rule_recommended(name) if recommended else {}
    if mine.get("model") or rule_per.get("model"):
        rec.pop("model", None)
    return _merge(_merge(_merge(DEFAULTS, _unset(rec, mine)), mine), rule_per)


def _unset(rec: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
    """The recommended settings at paths the user did not set; a mapping the user set empty
    (``optimizer: {groups: {}}``) counts as set, so a full config keeps what it says."""
    out: dict[str, Any] = {}
    for key, value in rec.items():
        if key not in mine:
            out[key] = value
        elif isinstance(value, dict) and isinstance(mine[key], dict) and mine[key]:
            sub = _unset(value, mine[key])
            if sub:
                out[key] = sub
    return out


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
    elif isinstance(default, dict):  # noqa: SIM102 - one branch per default type, as above
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
    _check_finite(cfg, "")
    if cfg["optimizer"]["lr"] <= 0:
        raise ConfigError(f"optimizer.lr must be positive, got {cfg['optimizer']['lr']}")
    if cfg["divergence_threshold"] <= 0:
        raise ConfigError(f"divergence_threshold must be a positive number, got {cfg['divergence_threshold']}")
    if not 0 <= cfg["seed"] <= MAX_SEED:
        raise ConfigError(f"seed must be an integer from 0 to {MAX_SEED}, got {cfg['seed']}")
    if cfg["dtype"] not in ("float32", "float64", "float16", "bfloat16"):
        raise ConfigError(f"dtype must be float32, float64, float16 or bfloat16, got {cfg['dtype']!r}")
    if not _DEVICE.match(cfg["device"]):
        raise ConfigError(f"device must be cpu, cuda, cuda:N or auto, got {cfg['device']!r}")
    for key in ("root", "name", "normalize"):
        value = cfg["dataset"].get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"dataset.{key} must be a string, got {value!r}")
    if cfg["dataset"]["subset"] is not None and (
            isinstance(cfg["dataset"]["subset"], bool) or not isinstance(cfg["dataset"]["subset"], int)
            or cfg["dataset"]["subset"] < 1):
        raise ConfigError(f"dataset.subset must be a positive integer or null, got {cfg['dataset']['subset']!r}")
    if "augment" in cfg["dataset"]:
        from ..data.augment import parse_augment

        parse_augment(cfg["dataset"]["augment"])
    check_optimizer_options(cfg["optimizer"])
    from .loggers import logger_names

    logger_names(cfg["logger"])
    return cfg


MAX_SEED = 2**32 - 1
_DEVICE = re.compile(r"^(cpu|auto|cuda(:[0-9]+)?)$")


def _check_finite(node: Any, path: str) -> None:
    """Every number anywhere in the config is finite (nan and inf are never meant)."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, f"{path}{key}.")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _check_finite(value, f"{path}{i}.")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{path.rstrip('.')} must be a finite number, got {node}")


def key_path(key: str, item: str | None = None) -> list[str]:
    """``"optimizer.lr"`` -> ["optimizer", "lr"]; ``"np:optimizer.lr"`` (one rule's setting) ->
    ["per_rule", "np", "optimizer", "lr"]."""
    rule, colon, rest = key.strip().rpartition(":") if ":" in key else ("", "", key.strip())
    rule = rule.strip()
    parts = rest.strip().split(".")
    if (colon and not rule) or any(not part for part in parts):
        shown = item if item is not None else key
        raise ConfigError(f"--set {shown!r} must look like key=value or RULE:key=value, e.g. optimizer.lr=0.01 "
                          f"or np:optimizer.groups.feedback.lr=5e-4")
    return [PER_RULE, rule.lower(), *parts] if colon else parts


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optimizer.lr=0.01"`` -> (["optimizer", "lr"], 0.01); values are parsed as YAML scalars.

    ``"np:optimizer.lr=0.01"`` sets the key for rule ``np`` only (see :data:`PER_RULE`)."""
    key, eq, raw = item.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError(f"--set {item!r} must look like key=value, e.g. optimizer.lr=0.01")
    path = key_path(key, item)
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string; numbers are meant
        try:
            value = float(value)
        except ValueError:
            pass
    return path, value


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


class TrainConfig:
    """A validated configuration, immutable: ``config["optimizer"]`` returns a copy.

    Build one with :meth:`from_dict`; derive a changed one with :meth:`updated`. Values read
    from it (``config["rule"]``, ``config.data``, ``config.to_dict()``) are copies, so no caller
    can change a config another part of the program already holds.
    """

    __slots__ = ("_data", "_recommended", "_user")

    def __init__(self, data: dict[str, Any] | None = None, recommended: bool = True) -> None:
        user = _normalize(copy.deepcopy(data or {}))
        object.__setattr__(self, "_user", user)
        object.__setattr__(self, "_recommended", bool(recommended))
        object.__setattr__(self, "_data", _validate(resolve(user, recommended=bool(recommended))))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("TrainConfig is immutable; use config.updated({...})")

    def __reduce__(self):
        return (TrainConfig, (self._user, self._recommended))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainConfig) and self._data == other._data

    def __hash__(self) -> int:
        return hash(json.dumps(self._data, sort_keys=True, default=str))

    def __repr__(self) -> str:
        return f"TrainConfig({self._data!r})"

    @property
    def data(self) -> dict[str, Any]:
        """A copy of the full nested mapping."""
        return copy.deepcopy(self._data)

    @classmethod
    def from_dict(cls, mapping: dict[str, Any] | None = None, overrides: list[str] | None = None,
                  recommended: bool = True) -> TrainConfig:
        """A config from what the user set (``mapping``, then ``overrides``); everything else
        comes from the rule's recommended settings (:attr:`Rule.recommended`; not with
        ``recommended=False``), then :data:`DEFAULTS`."""
        cfg = _normalize(copy.deepcopy(dict(mapping or {})))
        if overrides:
            cfg = _merge(cfg, _normalize(overrides_to_dict(overrides)))
        return cls(cfg, recommended=recommended)

    def updated(self, mapping: dict[str, Any] | None = None, overrides: list[str] | None = None) -> TrainConfig:
        """This config with ``mapping`` and ``overrides`` set on top (as if the user set them)."""
        return TrainConfig.from_dict(_merge(self._user, _normalize(copy.deepcopy(dict(mapping or {})))),
                                     overrides, recommended=self._recommended)

    def explicit(self) -> dict[str, Any]:
        """What was set explicitly (files, flags, ``--set``, ``per_rule``), before defaults."""
        return copy.deepcopy(self._user)

    def frozen(self) -> TrainConfig:
        """This config, and every config derived from it, without rules' recommended settings:
        a preset states its settings, and a rule it names later takes none of its own."""
        return TrainConfig(self._user, recommended=False)

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return copy.deepcopy(value) if isinstance(value, (dict, list)) else value

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def rule_options(self) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in self._data["rule"].items() if k != "name"}

    def model_options(self) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in self._data["model"].items() if k != "spec"}

    def dataset_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`bioplausible.load_dataset` (``augment`` is the trainer's)."""
        return {k: copy.deepcopy(v) for k, v in self._data["dataset"].items()
                if k not in ("name", "augment")}

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(self._data)), sort_keys=False)


def load_config(path: str | Path, overrides: list[str] | None = None, recommended: bool = True, *,
                trust_imports: bool = False) -> TrainConfig:
    """Read a YAML (or JSON) training config and apply ``key=value`` overrides.

    A file that names an import-path model or dataset is refused unless ``trust_imports``
    (:func:`bioplausible.engine.trust.refuse_file_imports`); ``overrides`` are the caller's own.
    ``recommended=False`` for a run's own ``config.yaml``: it is complete, and a rule's
    recommended settings must not fill a key it left to the defaults."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        mapping = yaml_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not a text (YAML) file") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {first}") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"config file {str(p)!r} must contain a mapping of keys to values")
    from .trust import refuse_file_imports

    refuse_file_imports(mapping, f"config file {str(p)!r}", trust_imports)
    return TrainConfig.from_dict(mapping, overrides, recommended=recommended)
