"""Freed activation memory stays in the heap between steps on glibc."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from glow_repro.run.allocator import retain_freed_memory

# Holds 25 buffers of 1-40 MB at once and frees them, as a forward and backward pass does, ten
# times; prints the page faults those ten "steps" cost.
_FAULTS = """
import resource, sys, torch
from glow_repro.run.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
def step():  # 1-8 MB, and one 40 MB block (an evaluation batch)
    kept = [torch.ones(2**18 * (1 + k % 8)) for k in range(24)] + [torch.ones(10 * 2**20)]
    return sum(t[0] for t in kept)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1])


@pytest.mark.slow  # two fresh processes, each importing torch
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_freed_buffers_are_reused_without_new_page_faults():
    assert retain_freed_memory() and retain_freed_memory()  # idempotent
    default, retained = _faults("default"), _faults("retain")
    # glibc's default hands most of the ~150 MB per step back to the kernel (4 KB pages)
    assert default > 50_000
    assert retained < default / 20
