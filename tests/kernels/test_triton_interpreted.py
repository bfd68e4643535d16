"""Runs tests/kernels/interpreted_cases.py (the Triton kernels against their references) on CPU under
TRITON_INTERPRET=1, in a child process because the interpreter is chosen when triton is imported."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.dispatch import has_triton

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not has_triton(), reason="triton is not installed; the torch paths are tested instead")
def test_triton_kernels_interpreted_on_cpu():
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "kernels" / "interpreted_cases.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
