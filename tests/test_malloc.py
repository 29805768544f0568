"""``keep_freed_memory``: a training step's freed blocks are reused, not fresh pages every step."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc's")

# a step's pattern: two 40 MiB temporaries freed together, twenty times; minor page faults
# counted. glibc by default maps every block over 32 MiB afresh (its mmap threshold never rises
# above that), so the count does not depend on what the process allocated before
PROBE = """
import resource, torch
from bioplausible.engine.runtime import keep_freed_memory
kept = keep_freed_memory()
def step():
    ts = [torch.ones(10 << 20) for _ in range(2)]
    del ts
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(int(kept), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(malloc: str) -> tuple[int, int]:
    env = dict(os.environ, BIOPLAUSIBLE_MALLOC=malloc)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return int(kept), int(faults)


def test_freed_blocks_are_reused_unless_the_system_allocator_is_asked_for():
    kept, faults = _probe("")
    system_kept, system_faults = _probe("system")
    assert (kept, system_kept) == (1, 0)
    # glibc's defaults return the 80 MiB to the kernel after each step: 20k pages touched anew per
    # step (400k in all); kept, the steps reuse the same pages
    assert system_faults > 20 * 20 * 1024 * 0.9
    assert faults < system_faults / 4
