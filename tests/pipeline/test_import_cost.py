"""The orchestration's entry points stay light: the run's config class is assembled from every stage's
sections, so a stage module that imported torch at load time would make `graine --help`, `graine status`
and every data task of a Slurm array pay for it (seconds, more on a cold shared filesystem)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["pipeline.cli", "pipeline.config", "pipeline.registry"])
def test_entry_points_do_not_import_torch(module):
    code = (f"import sys, {module}; from pipeline import registry; registry.builtin(); "
            "print(sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importing {module} loaded {out.stdout.strip()}"
