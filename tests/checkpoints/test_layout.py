"""graine_state.json through its one reader (checkpoints.layout.read_state): typed fields, the raw object
for the training components, and one CheckpointError naming the file (and key) for a damaged one."""

from __future__ import annotations

import json

import pytest

from checkpoints.layout import STATE, read_state, write_state
from core.errors import CheckpointError

SAVED = {"step": 16, "consumed_samples": 64, "consumed_tokens": 2048, "fingerprint": "abc", "world_size": 2,
         "loss": 2.5, "skipped_steps": 1, "saved_at": "2024-01-01T00:00:00", "global_batch_size": 4,
         "lineage": {"tokenizer_model": "t"}, "throughput": {}, "lr_schedule": {"tokens": 2048}}


def test_fields_and_raw(tmp_path):
    write_state(tmp_path, SAVED)
    state = read_state(tmp_path)
    assert (state.folder, state.step, state.consumed_samples, state.consumed_tokens) == (tmp_path, 16, 64, 2048)
    assert (state.world_size, state.loss, state.skipped_steps, state.fingerprint) == (2, 2.5, 1, "abc")
    assert state.lineage == {"tokenizer_model": "t"} and state.raw == SAVED


def test_only_the_step_is_required(tmp_path):
    (tmp_path / STATE).write_text(json.dumps({"step": 3, "consumed_tokens": 96, "loss": None}))
    state = read_state(tmp_path)
    assert state.step == 3 and state.consumed_tokens == 96 and state.loss is None
    assert state.world_size is None and state.skipped_steps == 0 and state.lineage == {}


@pytest.mark.parametrize("text,match", [
    ("{not json", "cannot be read as graine's checkpoint state"),
    ("[1, 2]", "holds a list, not graine's checkpoint state"),
    ('{"loss": 2.5}', "has no `step`"),
    ('{"step": "16"}', "`step`='16' is not a step number"),
    ('{"step": 16, "world_size": true}', "`world_size`=True is not a number of ranks"),
    ('{"step": 16, "consumed_samples": -4}', "`consumed_samples`=-4 is not a sample count"),
])
def test_a_damaged_state_is_one_error_naming_the_file(tmp_path, text, match):
    (tmp_path / STATE).write_text(text)
    with pytest.raises(CheckpointError, match=match) as err:
        read_state(tmp_path)
    assert str(tmp_path / STATE) in str(err.value)


def test_a_missing_state(tmp_path):
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_state(tmp_path)
