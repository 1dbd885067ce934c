"""jaxscale.files: what other processes read is there whole or not at all."""
import socket

import pytest

from jaxscale import files


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError), files.replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]
    files.write_atomic(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_create_once_keeps_whichever_came_first(tmp_path):
    path = tmp_path / "sweep.json"
    assert files.create_once(path, "first")
    assert not files.create_once(path, "second")
    assert path.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["sweep.json"]


def test_two_hosts_with_the_same_pid_write_different_temporaries(tmp_path, monkeypatch):
    # workers of a SLURM array share the sweep directory (and often $HOME's token cache) over the network
    path = tmp_path / "train.npy"
    names = set()
    for host in ("node01", "node02"):
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        names.add(files.tmp_beside(path))
    assert len(names) == 2 and all(p.parent == tmp_path and p.name.startswith(".train.npy.") for p in names)


def test_create_once_without_hard_links_still_creates_once(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")  # what a FUSE mount without links answers

    monkeypatch.setattr(files.os, "link", no_links)
    path = tmp_path / "sweep.json"
    assert files.create_once(path, "first") and not files.create_once(path, "second")
    assert path.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["sweep.json"]
