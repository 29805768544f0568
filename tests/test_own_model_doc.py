"""The README's "your own model and data" example runs and gives back the user's own class."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "README.md"


def test_own_model_and_data_example_runs():
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
              if "plain_state_dict" in b]
    assert len(blocks) == 1, "the README lost its own-model example"
    scope: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), scope)  # noqa: S102 - the documented example
    net, plain, result = scope["net"], scope["plain"], scope["result"]
    x = scope["x"][:8]
    net.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(net(x), result.model.eval()(x)) and torch.equal(plain(x), net(x))
