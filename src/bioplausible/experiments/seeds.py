"""Seed lists for many runs: distinct integers in [0, 2**32 - 1], from YAML or ``--seeds 0,1,2``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..engine.config import MAX_SEED
from ..errors import ConfigError


# ----------------------------------------------------------------------------- plan
def check_seeds(seeds: Iterable[Any], where: str = "seeds") -> list[int]:
    """Seeds as distinct integers in [0, 2**32 - 1]; ConfigError in one line otherwise."""
    out: list[int] = []
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise ConfigError(f"{where}: {s!r} is not a seed; seeds are integers from 0 to {MAX_SEED}")
        if s in out:
            raise ConfigError(f"{where}: seed {s} is listed twice")
        out.append(s)
    if not out:
        raise ConfigError(f"{where}: give at least one seed")
    return out


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; anything else is a ConfigError naming the bad item."""
    items = [t.strip() for t in str(text).split(",")]
    values: list[Any] = []
    for t in items:
        try:
            values.append(int(t))
        except ValueError:
            raise ConfigError(f"--seeds {text!r}: {t!r} is not an integer; use e.g. --seeds 0,1,2") from None
    return check_seeds(values, f"--seeds {text!r}")
