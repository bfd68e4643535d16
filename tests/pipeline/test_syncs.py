"""The training loop reads device scalars to the host at most once per optimizer step outside logging,
evaluation and checkpoint steps (on a GPU each read stalls the device): counted on CPU by
tests/benchmarks/count_syncs.py, which runs the real loop and attributes every read."""

import pytest

from tests.benchmarks.count_syncs import measure


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_at_most_one_host_read_per_step_in_graines_loop(zero_stage):
    counts = measure(zero_stage, steps=5)
    graine = [counts[s]["graine"] for s in range(2, 6)]
    assert max(graine) <= 1, f"graine's own host reads per step: {graine}"
    # The probe sees reads where there are some (DeepSpeed's ZeRO overflow checks, torch's CPU AdamW).
    assert sum(counts[s]["deepspeed"] + counts[s]["torch.optim"] for s in range(2, 6)) > 0
