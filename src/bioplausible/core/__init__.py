"""The rule contract and what every rule shares: optimizers, typed losses, metrics, the probe.

Nothing here imports a rule family, the training engine or the experiment tools.
"""
