"""TrainConfig is immutable, and every number in it is checked before anything runs."""

from __future__ import annotations

import pickle

import pytest

from bioplausible.core.optim import check_optimizer_options
from bioplausible.engine.config import DEFAULTS, TrainConfig
from bioplausible.errors import ConfigError, UnknownNameError


def test_a_config_cannot_be_changed_through_what_it_returns():
    cfg = TrainConfig.from_dict({"optimizer": {"name": "sgd", "lr": 0.1, "groups": {"feedback": {"lr": 0.01}}}})
    cfg["optimizer"]["lr"] = 99.0
    cfg["optimizer"]["groups"]["feedback"]["lr"] = -5.0
    cfg.data["epochs"] = 0
    cfg.rule_options()["x"] = 1
    assert cfg["optimizer"]["lr"] == 0.1 and cfg["optimizer"]["groups"]["feedback"]["lr"] == 0.01
    assert cfg["epochs"] == DEFAULTS["epochs"] and cfg.rule_options() == {}
    with pytest.raises(AttributeError):
        cfg.data = {}
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_flush_denormal_is_off_by_default_and_a_bool():
    assert TrainConfig.from_dict({})["flush_denormal"] is False
    assert TrainConfig.from_dict({"flush_denormal": True})["flush_denormal"] is True
    with pytest.raises(ConfigError, match="flush_denormal"):
        TrainConfig.from_dict({"flush_denormal": "yes"})


@pytest.mark.parametrize("section,needle", [
    ({"name": "sgd", "lr": 0.1, "momentun": 0.9}, "momentun"),
    ({"name": "sgd", "lr": 0.1, "weight_decay": -1e-4}, "weight_decay must be >= 0"),
    ({"name": "adam", "lr": 0.1, "betas": [0.9, 1.5]}, "betas"),
    ({"name": "adam", "lr": 0.1, "betas": 0.9}, "betas"),
    ({"name": "sgd", "lr": 0.1, "groups": {"feedback": {"lr": "x"}}}, "must be a number"),
    ({"name": "sgd", "lr": 0, "groups": {"feedback": {"lr": 0.1}}}, "optimizer.lr must be positive"),
    ({"name": "sgd", "lr": 0.1, "groups": {"feedback": 0.1}}, "must map options"),
    ({"name": "sgd", "lr": 0.1, "groups": [1]}, "optimizer.groups must map"),
])
def test_optimizer_options_are_checked_by_name_type_and_range(section, needle):
    with pytest.raises(ConfigError, match=needle):
        check_optimizer_options(section)


def test_valid_optimizer_options_pass():
    check_optimizer_options({"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                             "groups": {"forward.1": {"lr": 0.01, "weight_decay": 0.0}, "feedback": {"lr": 0}}})
    with pytest.raises(UnknownNameError):
        check_optimizer_options({"name": "sgdd"})


@pytest.mark.parametrize("mapping,needle", [
    ({"optimizer": {"lr": float("nan")}}, "optimizer.lr must be a finite"),
    ({"rule": {"name": "kp", "decay": float("inf")}}, "rule.decay must be a finite"),
    ({"divergence_threshold": 0}, "divergence_threshold must be a positive"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**32}, "seed"),
    ({"device": "cuda:x"}, "device"),
    ({"dataset": {"root": 5}}, "dataset.root must be a string"),
    ({"dataset": {"subset": 0}}, "dataset.subset"),
])
def test_numbers_and_types_are_checked(mapping, needle):
    with pytest.raises(ConfigError, match=needle):
        TrainConfig.from_dict(mapping)
