"""A manifest catches missing, truncated and corrupted files; the latest pointer is replaced atomically."""

from __future__ import annotations

import json

from checkpoints import manifest
from checkpoints.checkpointer import latest_checkpoint_info
from checkpoints.layout import read_latest, write_latest


def published(tmp_path):
    folder = tmp_path / "global_step3"
    (folder / "rng").mkdir(parents=True)
    (folder / "a.pt").write_bytes(b"a" * 100)
    (folder / "rng" / "rank00000.pt").write_bytes(b"r" * 10)
    (folder / "graine_state.json").write_text(json.dumps({"step": 3, "consumed_tokens": 96, "loss": 2.5}))
    files = manifest.list_files(folder)
    manifest.write_manifest(folder, manifest.hash_share(folder, files, 0, 1, fsync=True))
    return folder


def test_valid_then_damaged(tmp_path):
    folder = published(tmp_path)
    assert manifest.verify(folder) is None
    data = bytearray((folder / "a.pt").read_bytes())
    data[50] ^= 1
    (folder / "a.pt").write_bytes(bytes(data))
    assert "sha256" in manifest.verify(folder)
    assert manifest.verify(folder, full=False) is None  # same size: only the checksum sees it
    (folder / "a.pt").write_bytes(b"a" * 99)
    assert "99 bytes" in manifest.verify(folder, full=False)
    (folder / "a.pt").write_bytes(b"a" * 100)
    (folder / "rng" / "rank00000.pt").unlink()
    assert "rank00000.pt is missing" in manifest.verify(folder, full=False)


def test_missing_or_unreadable_manifest(tmp_path):
    folder = published(tmp_path)
    (folder / manifest.MANIFEST).write_text("{not json")
    assert "unreadable" in manifest.verify(folder)
    (folder / manifest.MANIFEST).unlink()
    assert "did not finish" in manifest.verify(folder)


def test_hash_shares_cover_every_file_once(tmp_path):
    folder = published(tmp_path)
    files = manifest.list_files(folder)
    shares = [manifest.hash_share(folder, files, r, 2) for r in range(2)]
    assert sorted(list(shares[0]) + list(shares[1])) == files
    entries = {**shares[0], **shares[1]}
    assert all(manifest.check_entries(folder, entries, r, 2) is None for r in range(2))


def test_latest_pointer_and_status_helper(tmp_path):
    assert latest_checkpoint_info(tmp_path) is None
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    published(ckpt)
    assert latest_checkpoint_info(tmp_path)["step"] == 3  # no `latest`: newest with a manifest
    write_latest(ckpt, "global_step3")
    assert read_latest(ckpt) == "global_step3"
    info = latest_checkpoint_info(tmp_path)
    assert info["tokens"] == 96 and info["loss"] == 2.5
    assert not list(ckpt.glob(".latest*"))
