"""SAL, the self-assembling four-matrix learning circuit (Liao et al. 2024): rule ``sal``, its
update operations (:mod:`.sal_ops`) and diagnostics (:mod:`.sal_diag`)."""

from . import sal  # noqa: F401  (registers the rule)
