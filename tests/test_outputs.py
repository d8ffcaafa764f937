"""Outputs: no write over what the user did not name, and a full disk is one line that leaves nothing half."""

from __future__ import annotations

import errno
import os
import stat
from collections import namedtuple

import pytest

import lorakit.outputs as outputs
from lorakit.errors import LorakitError
from lorakit.outputs import (
    OutputPathError, OutputWriteError, atomic_output, check_output_file, check_output_files, staged_into, write_text,
    writing,
)
from tests.full_disk import no_space, write_half_then_fail


def test_a_new_path_passes_and_an_existing_file_needs_overwrite(tmp_path):
    check_output_file(tmp_path / "new" / "model.gguf", overwrite=False)
    existing = tmp_path / "model.gguf"
    existing.write_bytes(b"mine")
    with pytest.raises(OutputPathError, match="model.gguf exists; pass --overwrite"):
        check_output_file(existing, overwrite=False)
    check_output_file(existing, overwrite=True)
    assert issubclass(OutputPathError, LorakitError)


def test_no_folder_fifo_link_or_file_in_the_way_even_with_overwrite(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    target = tmp_path / "elsewhere.gguf"
    target.write_bytes(b"theirs")
    link = tmp_path / "link.gguf"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.gguf"
    dangling.symlink_to(tmp_path / "nowhere")
    blocked = tmp_path / "file"
    blocked.write_text("x")
    for path, reason in [(folder, "is a folder"), (fifo, "is a FIFO"), (link, "is a symbolic link"),
                         (dangling, "is a symbolic link"), (blocked / "model.gguf", "a folder on that path is a file")]:
        with pytest.raises(OutputPathError, match=reason):
            check_output_file(path, overwrite=True)
    if os.path.exists("/dev/null"):
        with pytest.raises(OutputPathError, match="character device"):
            check_output_file(os.path.realpath("/dev/null"), overwrite=True)


def test_two_outputs_on_one_path_are_refused(tmp_path):
    with pytest.raises(OutputPathError, match="the Modelfile and --out would both be written"):
        check_output_files({"--out": tmp_path / "x.Modelfile", "the Modelfile": tmp_path / "x.Modelfile"}, False)


def test_a_full_disk_partway_removes_the_partial_and_says_what_and_how_much(tmp_path):
    out = tmp_path / "model.gguf"
    with pytest.raises(OutputWriteError) as caught:
        with atomic_output(out, "the f16 GGUF") as job:
            job.needed = 3 * 2**20
            write_half_then_fail(job.tmp, b"x" * 1000)
    message = str(caught.value)
    assert message.startswith(f"could not write the f16 GGUF to {out}: the disk is full (it needs about 3.0 MiB, ")
    assert message.endswith("free there); nothing partial was kept") and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # neither the file nor the folder it was written in


def test_an_unknown_size_is_said_so(tmp_path):
    with pytest.raises(OutputWriteError, match="how much room it needs is not known in advance"):
        with writing("checkpoint 4", tmp_path / "checkpoint-4"):
            raise no_space()


def test_a_place_that_may_not_be_written_is_said_so(tmp_path):
    with pytest.raises(OutputWriteError, match="could not write the Modelfile to .*: permission denied"):
        with atomic_output(tmp_path / "m.Modelfile", "the Modelfile"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    assert list(tmp_path.iterdir()) == []


def test_a_failure_without_errno_is_a_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch):
    """torch.save says ``unexpected pos 576 vs 534`` when the disk fills; only the free space tells."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 4096, 4096))
    partial = tmp_path / "optimizer.pt"
    with pytest.raises(OutputWriteError, match="the disk is full .*4,096 bytes free there"):
        with writing("checkpoint 2", tmp_path, undo=partial):
            partial.write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert not partial.exists()

    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage(2**30, 0, 2**30))
    with pytest.raises(RuntimeError, match="a bug"):  # a bug keeps its own error, but leaves nothing half
        with writing("checkpoint 2", tmp_path, undo=partial):
            partial.write_bytes(b"half")
            raise RuntimeError("a bug")
    assert not partial.exists()


def test_text_is_written_whole_and_a_link_in_the_way_is_replaced_not_followed(tmp_path):
    target = tmp_path / "theirs.txt"
    target.write_text("theirs")
    link = tmp_path / "summary.json"
    link.symlink_to(target)
    write_text(link, "{}", "the run summary")
    assert not link.is_symlink() and link.read_text() == "{}" and target.read_text() == "theirs"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(link.stat().st_mode) == 0o666 & ~mask  # a file's ordinary mode, not mkdtemp's folder's


def test_staged_files_move_in_only_when_all_are_written(tmp_path):
    (tmp_path / "lorakit.yaml").write_text("kept")
    with staged_into(tmp_path, "the trained adapter") as job:
        (job.tmp / "adapter_config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "lorakit.yaml"]
    with pytest.raises(OutputWriteError, match="could not write the trained adapter"):
        with staged_into(tmp_path, "the trained adapter") as job:
            write_half_then_fail(job.tmp / "adapter_model.safetensors", b"x" * 100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "lorakit.yaml"]
