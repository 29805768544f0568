"""Node-perturbation-learned feedback and its controls (Lansdell, Prakash & Kording 2020).

``np``, ``np-dfa``, ``sg``, ``sg-dfa`` (:mod:`.rule`); ``matched``, ``bp-noise``, ``fa-noise``,
``dae`` (:mod:`.controls`); the estimator and regression mathematics (:mod:`.estimator`).
"""

from . import controls, rule  # noqa: F401  (registers the rules)
from .estimator import (
    RidgeState,
    loss_difference,
    np_estimate,
    per_example_losses,
    regression_grad,
    ridge_update,
)

__all__ = ["RidgeState", "loss_difference", "np_estimate", "per_example_losses", "regression_grad", "ridge_update"]
