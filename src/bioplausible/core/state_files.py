"""Reading a run's tensor files (``rule_state.pt``) safely: ``weights_only=True``, one-line errors.

A run folder may come from anyone: nothing in it is unpickled beyond tensors and plain
containers, and a truncated, random or foreign file is a :class:`~bioplausible.errors.UserError`
that names it, never a traceback.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError


def load_tensor_dict(path: str | Path, what: str = "state file") -> dict[str, torch.Tensor]:
    """``{name: tensor}`` from ``path`` (``torch.load(..., weights_only=True)`` on the CPU)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, zipfile.BadZipFile, UnicodeDecodeError, OSError) as exc:
        first = (" ".join(str(exc).split()) or type(exc).__name__)[:160]
        raise UserError(f"{what} {str(path)!r} cannot be loaded safely ({first}); it is corrupt, truncated "
                        f"or not written by bioplausible") from None
    if not (isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in state.items())):
        raise UserError(f"{what} {str(path)!r} is not a bioplausible rule state (a mapping of names to "
                        f"tensors)")
    return state



def load_checkpoint_file(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``; anything unreadable that way is one UserError line."""
    import pickle
    import zipfile

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, zipfile.BadZipFile, UnicodeDecodeError, OSError) as exc:
        first = (" ".join(str(exc).split()) or type(exc).__name__)[:160]
        raise UserError(f"checkpoint {str(path)!r} cannot be loaded safely ({first}); it is corrupt, "
                        f"truncated or not written by bioplausible: delete it to restart the run "
                        f"or start a new one with --out") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "epoch", "step"} <= set(state):
        raise UserError(f"checkpoint {str(path)!r} is not a bioplausible checkpoint; delete it to restart "
                        f"the run or start a new one with --out")
    return state

__all__ = ["load_checkpoint_file", "load_tensor_dict"]
