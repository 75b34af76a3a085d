"""A file written with `ferry.atomic_files` appears under its name whole, or not at all, and leaves no temp name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferry.atomic_files import PART_SUFFIX, PendingFile, atomic_write, link_into_place, temp_beside


class Interrupted(Exception):
    pass


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_the_file_appears_under_its_name_when_the_block_ends(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_write(target) as file:
        file.write(b"part one, ")
        assert not target.exists(), "nothing is visible under the name while the file is written"
        file.write(b"part two")
    assert target.read_bytes() == b"part one, part two"
    assert names(tmp_path) == ["out.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_name(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(Interrupted), atomic_write(target) as file:
        file.write(b"half of the new")
        raise Interrupted
    assert target.read_bytes() == b"old"
    assert names(tmp_path) == ["out.bin"]


def test_replacing_is_the_default(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_write(target, sync_folder=True) as file:
        file.write(b"new")
    assert target.read_bytes() == b"new"
    assert names(tmp_path) == ["out.bin"]


def test_without_replace_a_file_that_appeared_meanwhile_is_kept_and_the_write_fails(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(FileExistsError), atomic_write(target, replace=False) as file:
        file.write(b"mine")
        target.write_bytes(b"theirs")  # another writer got there first
    assert target.read_bytes() == b"theirs"
    assert names(tmp_path) == ["out.bin"]


def test_a_file_without_an_fsync_still_appears_whole(tmp_path):
    target = tmp_path / "record.json"
    with atomic_write(target, durable=False, suffix=".tmp") as file:
        file.write(b"{}")
    assert target.read_bytes() == b"{}"
    assert names(tmp_path) == ["record.json"]


def test_the_temp_name_is_hidden_beside_the_target_and_ends_in_its_suffix(tmp_path):
    temp = temp_beside(tmp_path / "out.bin")
    assert temp.parent == tmp_path
    assert temp.name.startswith(".out.bin.") and temp.name.endswith(PART_SUFFIX)
    assert temp_beside(tmp_path / "out.bin") != temp


def test_a_pending_file_never_writes_into_a_file_already_there(tmp_path):
    taken = tmp_path / ".taken.ferry-part"
    taken.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        PendingFile(taken)
    assert taken.read_bytes() == b"someone else's"


def test_a_pending_file_can_be_discarded_after_its_commit(tmp_path):
    target = tmp_path / "out.bin"
    pending = PendingFile(temp_beside(target))
    pending.file.write(b"done")
    pending.sync()
    assert pending.commit(target) == target
    pending.discard()
    assert target.read_bytes() == b"done"
    assert names(tmp_path) == ["out.bin"]


def test_a_discarded_pending_file_leaves_nothing(tmp_path):
    pending = PendingFile(temp_beside(tmp_path / "out.bin"))
    pending.file.write(b"abandoned")
    pending.discard()
    assert names(tmp_path) == []


def test_a_link_into_place_is_the_same_file_and_leaves_no_temp_name(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"shared")
    target = tmp_path / "target.bin"
    target.write_bytes(b"old")
    link_into_place(source, target, temp_beside(target))
    assert target.samefile(source)
    assert names(tmp_path) == ["source.bin", "target.bin"]


def test_linking_onto_a_link_of_the_same_file_leaves_no_temp_name(tmp_path):
    # A rename onto another link of the same file does nothing (POSIX): the temp link is still there after it.
    source = tmp_path / "source.bin"
    source.write_bytes(b"shared")
    target = tmp_path / "target.bin"
    os.link(source, target)
    link_into_place(source, target, temp_beside(target))
    assert target.samefile(source)
    assert names(tmp_path) == ["source.bin", "target.bin"]
