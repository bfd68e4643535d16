"""Published outputs against their records: the cheap check every task makes of its upstream stages
(sizes, sampled blocks) and the full one (`verify_inputs: full`, `graine verify`)."""

from __future__ import annotations

import json

import pytest

from core import lineage
from core.errors import DataError, StageError
from core.lineage import check_inputs
from core.verify import BLOCK, WHOLE, block_offsets, check_folder
from pipeline import registry, runner
from pipeline.config import load_config

pytestmark = pytest.mark.usefixtures("toys")


def published(tmp_path, files: dict[str, bytes]):
    folder = tmp_path / "run" / "toy-parts"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    fp = lineage.Fingerprint({}, "cfg", [])
    return folder, lineage.write_record(folder, registry.get("toy-parts"), fp, 0.0)


def flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset:offset + 16] = bytes(b ^ 0xFF for b in data[offset:offset + 16])
    path.write_bytes(bytes(data))


def test_small_files_are_checked_whole_by_the_cheap_check(tmp_path):
    folder, record = published(tmp_path, {"a.bin": bytes(range(256)) * 100})
    assert check_folder(folder, record) == []
    flip(folder / "a.bin", 5000)  # 16 bytes, as in the report
    assert check_folder(folder, record) == [f"{folder / 'a.bin'} does not match its sha256"]


def test_large_files_cheap_check_covers_size_and_sampled_blocks_full_check_every_byte(tmp_path):
    size = 3 * WHOLE + 12345
    folder, record = published(tmp_path, {"big.bin": bytes(i * 7 % 251 for i in range(size))})
    offsets = block_offsets(size)
    assert len(record["samples"]["big.bin"]) == len(offsets) and offsets[-1] == size - BLOCK
    between = offsets[1] + BLOCK + 100  # a byte no sampled block covers
    assert between < offsets[2]
    flip(folder / "big.bin", between)
    assert check_folder(folder, record) == []  # the stated limit of the cheap check
    assert check_folder(folder, record, full=True) == [f"{folder / 'big.bin'} does not match its sha256"]
    flip(folder / "big.bin", between)  # undo
    flip(folder / "big.bin", offsets[3] + 10)
    assert f"differs from its record in the block at byte {offsets[3]}" in check_folder(folder, record)[0]
    (folder / "big.bin").write_bytes((folder / "big.bin").read_bytes()[:-1])
    assert "has" in check_folder(folder, record)[0] and "its record says" in check_folder(folder, record)[0]


def test_a_task_refuses_an_upstream_output_changed_after_publication(tmp_path):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "clean.num_tasks=2"])
    runner.run(cfg, ["toy-parts"], executor="inline")
    part = next(p for p in sorted((tmp_path / "run" / "toy-parts").iterdir()) if p.name != lineage.RECORD
                and p.name != lineage.RESOLVED_CONFIG)
    part.write_bytes(part.read_bytes() + b"x")
    with pytest.raises(DataError, match=rf"{part.name} has .* bytes.*stage toy-parts changed after it was published"):
        check_inputs({"toy-parts": tmp_path / "run" / "toy-parts"})
    with pytest.raises(StageError, match=part.name):
        runner.run(cfg, ["toy-sum"], executor="inline")
    assert json.loads((tmp_path / "run" / "toy-parts" / lineage.RECORD).read_text())["files"]


def test_pretrain_refuses_a_modified_shard(tmp_path):
    from tests.support import tiny_run

    cfg = tiny_run.prepare(tmp_path / "run", tmp_path / "corpus")
    shard = sorted((tmp_path / "run" / "shards" / "train").glob("*.bin"))[0]
    flip(shard, 64)  # 16 bytes of token ids
    cfg = tiny_run.config(tmp_path / "run", tmp_path / "corpus", "train.devices_per_node=1")
    with pytest.raises(StageError, match=rf"{shard.name} does not match its sha256.*stage preprocess changed"):
        runner.run(cfg, ["pretrain"], executor="inline")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_warnings_reach_the_console(tmp_path, caplog):
    from tests.support import tiny_run

    tiny_run.prepare(tmp_path / "run", tmp_path / "corpus")
    cfg = tiny_run.config(tmp_path / "run", tmp_path / "corpus", "train.devices_per_node=1")
    runner.run(cfg, ["pretrain"], executor="local")
    from checkpoints.checkpointer import latest_checkpoint_info
    from pipeline.checkpoint_cli import format_list

    latest = tmp_path / "run" / "checkpoints" / "global_step16"
    damaged = next(p for p in sorted(latest.rglob("*.pt")))
    flip(damaged, 200)
    cheap, full = format_list(cfg).splitlines(), format_list(cfg, full=True).splitlines()
    row = next(line for line in cheap if line.strip().startswith("16 "))
    assert "valid" in row and "INVALID" not in row and "checksums not recomputed" in cheap[-2]
    row = next(line for line in full if line.strip().startswith("16 "))
    assert "INVALID" in row and "does not match its sha256" in row and "sha256 checksums match" in full[-2]
    damaged.write_bytes(damaged.read_bytes()[:-1])  # now its size differs too: even the cheap check sees it
    assert latest_checkpoint_info(tmp_path / "run")["step"] == 12  # what `graine status` names
    longer = tiny_run.config(tmp_path / "run", tmp_path / "corpus", "train.devices_per_node=1",
                             "train.train_tokens=2560", "train.decay_tokens=2560")
    with caplog.at_level("WARNING", logger="graine"):
        runner.run(longer, ["pretrain"], executor="local", force=True)
    relayed = [r.getMessage() for r in caplog.records if "training job (job" in r.getMessage()]
    assert any("resuming from global_step12 instead of the damaged global_step16" in m for m in relayed), relayed


def test_graine_verify_rehashes_every_published_file(tmp_path, capsys):
    from pipeline.cli import main

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nclean:\n  num_tasks: 2\n")
    runner.run(load_config(cfg), ["toy-parts"], executor="inline")
    assert main(["verify", "toy-parts", "-c", str(cfg)]) == 0
    assert "toy-parts   OK" in capsys.readouterr().out
    out = tmp_path / "run" / "toy-parts" / "all.txt"
    flip(out, 10)  # same size: only a checksum sees it
    assert main(["verify", "toy-parts", "-c", str(cfg)]) == 1
    printed = capsys.readouterr().out
    assert "CHANGED" in printed and f"{out} does not match its sha256" in printed
