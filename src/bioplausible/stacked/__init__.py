"""Many runs as one: seeds and learning rates of one rule trained as one stacked model.

Runs that differ only by seed (initialisation, data order, the rule's own randomness) and by
learning rate train in one process as one model whose every weight, feedback matrix and rule
state carries a leading run dimension; each step is a few batched products (``torch.bmm``,
``baddbmm``) over the runs instead of R small steps one after another. Each run's batches are
gathered from the one shared data tensor by that run's own permutation.

Nothing about the results changes: each run starts from the initialisation it gets unstacked
(copied from its own prepared model), draws its randomness from its own generators in the same
order, and writes the same run directory (:mod:`.runner`). ``run_jobs(jobs, stack=True)`` and
the CLI's ``--stack`` use it; a rule or model that cannot stack says so in one line and runs
unstacked (:mod:`.support`).
"""

from __future__ import annotations

from .mlp import StackedMLP, epoch_order, epoch_orders, gather, mlp_layers
from .runner import group_key, plan_groups, run_jobs_stacked, run_stacked
from .support import STACKED, config_reason, make_stack, model_reason, stack_from, stackable_rules

__all__ = ["STACKED", "StackedMLP", "config_reason", "epoch_order", "epoch_orders", "gather", "group_key",
           "make_stack", "mlp_layers", "model_reason", "plan_groups", "run_jobs_stacked", "run_stacked",
           "stack_from", "stackable_rules"]
