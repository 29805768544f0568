"""bioplausible: biologically plausible credit assignment for plain PyTorch models.

Every rule trains an ordinary ``nn.Module``; a rule is a gradient estimator that fills
``.grad`` and a standard ``torch.optim`` optimizer applies it. The public API is flat::

    import bioplausible as bp
    data = bp.load_dataset("mnist", flatten=True)
    model = bp.build_model("mlp:784-500-10", activation="sigmoid")
    result = bp.fit(model, "fa", data, epochs=1)

Names are imported lazily so that ``import bioplausible`` and the CLI start quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

_EXPORTS = {
    # registry and rules
    "register": "rules.registry", "make": "rules.registry", "list_rules": "rules.registry",
    "RULES": "rules.registry",
    "Rule": "core.rule", "StepResult": "core.rule", "FeedbackPair": "core.rule",
    # errors
    "UserError": "errors", "ConfigError": "errors", "DataError": "errors",
    "MissingDataError": "errors", "CorruptDataError": "errors", "UnknownNameError": "errors",
    "IncompatibleModelError": "errors", "DivergenceError": "errors",
    # losses and models
    "get_loss": "core.losses", "list_losses": "core.losses", "Loss": "core.losses",
    "build_model": "models", "list_models": "models", "MLP": "models", "LeNet5": "models",
    "NPConvNet": "models", "CifarResNet": "models",
    # data
    "load_dataset": "data", "list_datasets": "data", "resolve_root": "data", "as_bundle": "data",
    # feedback layers
    "convert": "rules.registry", "exact_backward": "nn", "to_plain": "nn", "plain_state_dict": "nn",
    # training, diagnostics, experiments
    "fit": "engine.trainer", "evaluate": "engine.trainer", "Trainer": "engine.trainer",
    "FitResult": "engine.trainer", "compare": "experiments.study",
    "TrainConfig": "engine.config", "load_config": "engine.config",
    "Probe": "core.probe", "gradient_angles": "core.probe",
    "list_presets": "experiments.presets", "get_preset": "experiments.presets",
}

__all__ = [*sorted(_EXPORTS), "__version__"]  # noqa: PLE0604 - the lazy exports' names, all strings


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bioplausible' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
