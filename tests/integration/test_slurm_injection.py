"""Config strings with shell payloads, through both ways a config reaches a job on the real local Slurm:
the script `graine sbatch` renders, submitted with sbatch, and `graine run --executor slurm` (submitit's
setup lines). The stage runs to completion and no payload executes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import runner
from pipeline.config import load_config
from tests.integration.test_multinode import REPO, sbatch, wait_job

pytestmark = pytest.mark.slurm


def hostile_config(base: Path, corpus: Path, marker: Path) -> Path:
    payloads = [f"$(touch {marker}-1)", f"`touch {marker}-2`", f"x; touch {marker}-3", f"x' ; touch {marker}-4 ; echo '"]
    tiny = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    tiny.update(run_dir=str(base / "run"))
    tiny.setdefault("clean", {}).update(inputs=[f"{corpus}/raw/**/*"], num_tasks=2)
    tiny["cluster"] = {"profile": "local-cluster", "account": payloads[0], "slurm": {"comment": payloads[1]},
                       "cpu": {"env": {f"PAYLOAD{i}": p for i, p in enumerate(payloads)}}}
    path = base / "hostile.yaml"
    path.write_text(yaml.safe_dump(tiny))
    return path


def test_payloads_in_a_config_never_run_on_the_cluster(slurm_cluster, prepared, tmp_path):
    marker = tmp_path / "pwned"
    cfg_path = hostile_config(tmp_path, prepared / "corpus", marker)
    # 1. the rendered script, submitted as is
    import subprocess

    script = tmp_path / "clean.sbatch"
    script.write_text(subprocess.run([sys.executable, "-m", "pipeline.cli", "sbatch", "clean", "-c", cfg_path.name],
                                     cwd=tmp_path, capture_output=True, text=True, check=True).stdout)
    job = sbatch(script)
    wait_job(job, tmp_path / f"graine-clean-{job}.out", timeout=300)
    assert json.loads((tmp_path / "run" / "clean" / "_COMPLETE.json").read_text())["num_tasks"]["filter"] == 2
    # 2. submitit's jobs, whose setup lines export the same environment
    cfg = load_config(cfg_path, [f"run_dir={tmp_path / 'run2'}"])
    runner.run(cfg, ["clean"], executor="slurm", wait=True)
    assert (tmp_path / "run2" / "clean" / "_COMPLETE.json").is_file()
    ran = sorted(p.name for p in tmp_path.glob("pwned*"))
    assert not ran, f"payloads ran: {ran}"
