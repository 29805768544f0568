"""The README's Python examples run as written (those that need no dataset)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_convert_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    runnable = [b for b in blocks if "bp.convert" in b]
    assert runnable, "the README lost its convert example"
    for block in runnable:
        exec(compile(block, "README.md", "exec"), {})  # noqa: S102 - the README's own example, run as a user would
