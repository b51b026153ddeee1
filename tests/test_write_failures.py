"""A full disk is reported as one: torch.save's own error on ENOSPC reads "unexpected pos ..." or
"file write failed", naming neither the cause nor the file. The failure is simulated where the
disk fills (torch.save raising torch's error, the file system reporting no free space)."""

import errno
import shutil
from collections import namedtuple

import pytest
import torch

from abkd import engine as E
from abkd.run import atomic_save

Usage = namedtuple("Usage", "total used free")
TORCH_ENOSPC = "[enforce fail at inline_container.cc:664] . unexpected pos 6912 vs 6806"


def _disk(monkeypatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - free, free))


def _torch_save_fails(monkeypatch, error: BaseException) -> None:
    def save(payload, path):
        open(path, "wb").write(b"partial")
        raise error

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_names_the_file_and_the_cause(tmp_path, monkeypatch):
    _torch_save_fails(monkeypatch, RuntimeError(TORCH_ENOSPC))
    _disk(monkeypatch, free=4096)
    target = tmp_path / "ckpt_epoch_3.pth"
    with pytest.raises(OSError, match=rf"no space left on device while writing {target} \(4096 bytes free; the write failed with: .*unexpected pos") as error:
        atomic_save({"x": 1}, target)
    assert error.value.errno == errno.ENOSPC
    assert not target.exists() and not list(tmp_path.iterdir())  # the partial temporary file is removed


def test_enospc_is_reported_whatever_the_free_space(tmp_path, monkeypatch):
    _torch_save_fails(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    _disk(monkeypatch, free=10**9)  # e.g. a quota, or space freed since
    with pytest.raises(E.DiskFull, match="no space left on device while writing"):
        atomic_save({"x": 1}, tmp_path / "a.pt")


def test_other_write_errors_pass_unchanged(tmp_path, monkeypatch):
    _torch_save_fails(monkeypatch, RuntimeError("something else"))
    _disk(monkeypatch, free=10**9)
    with pytest.raises(RuntimeError, match="^something else$"):
        atomic_save({"x": 1}, tmp_path / "a.pt")
    assert not list(tmp_path.iterdir())


def test_a_full_disk_while_deepspeed_saves_a_checkpoint(tmp_path, monkeypatch):
    class Engine:
        def save_checkpoint(self, directory, tag, client_state, save_latest):
            raise RuntimeError(TORCH_ENOSPC)

    _disk(monkeypatch, free=0)
    with pytest.raises(E.DiskFull, match=rf"no space left on device while writing {tmp_path / '.incomplete' / 'step4'}"):
        E.save_checkpoint(Engine(), tmp_path, "step4", {})
