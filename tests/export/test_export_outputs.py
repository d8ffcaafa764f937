"""``export gguf`` and ``merge`` write only what was named, refuse before any work, and leave nothing half.

Full disks are simulated: the library's writer writes part of its file and fails as a real full disk
makes it fail (ENOSPC from the GGUF writer; safetensors' own error, as measured on a full tmpfs).
"""

from __future__ import annotations

import os
import stat

import gguf
import pytest
from safetensors import SafetensorError
from typer.testing import CliRunner

import lorakit.export.gguf as gguf_export
import lorakit.export.gguf_adapter as gguf_adapter
from lorakit.cli import app
from lorakit.errors import LorakitError
from lorakit.export.gguf import export_gguf
from lorakit.export.gguf_adapter import export_adapter_gguf
from lorakit.export.merge import MergeError, merge_run
from lorakit.export.modelfile import write_modelfile
from lorakit.model.loader import load_tokenizer
from lorakit.outputs import OutputPathError, OutputWriteError
from tests.full_disk import no_space, write_half_then_fail


@pytest.fixture
def no_merging(monkeypatch):
    """A refusal must come before the merge: merging fails the test."""
    monkeypatch.setattr(gguf_export, "merged_model", lambda *a, **k: pytest.fail("merged before refusing"))


def test_an_existing_gguf_is_refused_and_overwrite_replaces_it(tiny_run, tmp_path, monkeypatch, no_merging):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"an older export")
    with pytest.raises(OutputPathError, match="--out .*model.gguf exists; pass --overwrite"):
        export_gguf(tiny_run, out, "q8_0")
    assert out.read_bytes() == b"an older export" and not (tmp_path / "model.Modelfile").exists()
    monkeypatch.undo()
    export_gguf(tiny_run, out, "q8_0", overwrite=True)
    assert gguf.GGUFReader(out).fields["general.architecture"].contents() == "llama"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.Modelfile", "model.gguf"]


def test_a_fifo_a_folder_or_a_link_at_out_is_refused_even_with_overwrite(tiny_run, tmp_path, no_merging):
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.gguf"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "theirs.gguf"
    target.write_bytes(b"not ours")
    link = tmp_path / "out" / "link.gguf"
    link.parent.mkdir()
    link.symlink_to(target)
    for out, reason in [(fifo, "is a FIFO"), (folder, "is a folder"), (link, "is a symbolic link")]:
        with pytest.raises(OutputPathError, match=reason):
            export_gguf(tiny_run, out, "q8_0", overwrite=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and folder.is_dir() and list(folder.iterdir()) == []
    assert link.is_symlink() and target.read_bytes() == b"not ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.gguf", "out", "outside", "pipe.gguf"]


def test_a_link_at_the_modelfile_path_is_not_followed(tiny_run, tmp_path, no_merging):
    target = tmp_path / "theirs.txt"
    target.write_text("not ours")
    (tmp_path / "model.Modelfile").symlink_to(target)
    with pytest.raises(OutputPathError, match="the Modelfile .*model.Modelfile is a symbolic link"):
        export_gguf(tiny_run, tmp_path / "model.gguf", overwrite=True)
    assert not (tmp_path / "model.gguf").exists()
    # Written anyway (no check before it), the Modelfile replaces the link and leaves its target alone.
    path = write_modelfile(tmp_path / "model.gguf", load_tokenizer(str(tiny_run)))
    assert not path.is_symlink() and path.read_text().startswith("FROM ./model.gguf")
    assert target.read_text() == "not ours"


def test_with_base_refuses_an_existing_base_gguf_before_loading_the_base(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_adapter, "load_run_base", lambda *a, **k: pytest.fail("loaded before refusing"))
    base = tmp_path / "model.f16.gguf"  # what the run's base (a folder named model) is written as
    base.write_bytes(b"an older base")
    with pytest.raises(OutputPathError, match="the base GGUF .*model.f16.gguf exists"):
        export_adapter_gguf(tiny_run, tmp_path / "style.gguf", with_base=True)
    assert base.read_bytes() == b"an older base" and sorted(p.name for p in tmp_path.iterdir()) == ["model.f16.gguf"]
    with pytest.raises(OutputPathError, match="the base GGUF and --out would both be written"):
        export_adapter_gguf(tiny_run, base, with_base=True, overwrite=True)


def test_the_command_refuses_a_device_in_one_line(tiny_run, tmp_path, no_merging):
    fifo = tmp_path / "full"
    os.mkfifo(fifo)  # a special file like /dev/full, without touching /dev
    result = CliRunner().invoke(app, ["export", "gguf", str(tiny_run), "--out", str(fifo), "--type", "q8_0",
                                      "--overwrite"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out ") and "is a FIFO (named pipe)" in lines[0]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not (tmp_path / "full.Modelfile").exists()


def _fill_the_disk_partway(writer: gguf.GGUFWriter, **kwargs) -> None:
    writer.fout[0].write(b"\0" * 4096)  # some tensor bytes reach the file first
    raise no_space()


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", _fill_the_disk_partway)
    out = tmp_path / "gguf" / "model.gguf"
    with pytest.raises(OutputWriteError) as caught:
        export_gguf(tiny_run, out, "q8_0")
    message = str(caught.value)
    assert message.startswith(f"could not write the q8_0 GGUF to {out}: the disk is full (it needs about ")
    assert message.endswith("; nothing partial was kept") and isinstance(caught.value, LorakitError)
    assert list(out.parent.iterdir()) == []
    result = CliRunner().invoke(app, ["export", "gguf", str(tiny_run), "--out", str(out), "--adapter-only"])
    assert result.exit_code == 2 and result.stderr.startswith("error: could not write the GGUF LoRA adapter to ")
    assert len(result.stderr.strip().splitlines()) == 1 and list(out.parent.iterdir()) == []


def test_a_full_disk_during_merge_leaves_no_folder(tiny_run, tmp_path, monkeypatch):
    import transformers.modeling_utils as modeling_utils

    def full(tensors, filename, metadata=None):
        try:
            write_half_then_fail(filename, b"\0" * 8192)
        except OSError:  # safetensors says it in its own words
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(modeling_utils, "safe_save_file", full)
    out = tmp_path / "merged"
    with pytest.raises(OutputWriteError, match=f"could not write the merged model to {out}: the disk is full "
                                               r"\(it needs about .* nothing partial was kept"):
        merge_run(tiny_run, out)
    assert list(tmp_path.iterdir()) == []


def test_merge_out_that_is_a_file_or_a_link_is_refused_before_merging(tiny_run, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    for out in (blocked, link):
        with pytest.raises(MergeError, match="is a file or a link, not a folder"):
            merge_run(tiny_run, out, overwrite=True)
    assert blocked.read_text() == "mine" and link.is_symlink()
