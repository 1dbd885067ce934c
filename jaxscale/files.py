"""Files that other processes may read while they are written (the workers of a sweep, on one host or on several
sharing a file system, and sweeps sharing the token cache): each is there whole, or not at all."""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path


def tmp_beside(path: Path) -> Path:
    """A name beside `path` that no other process writes, on any host sharing the directory."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


@contextlib.contextmanager
def replacing(path: Path):
    """Write into the path this yields; when the block ends without error it replaces `path` in one step, and
    when it raises, `path` is as it was and no temporary file is left."""
    tmp = tmp_beside(path)
    try:
        yield tmp
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def create_once(path: Path, text: str) -> bool:
    """Write `path` whole unless it exists, also where processes on several hosts try at once (a hard link
    fails where the name is taken); False if another process created it first."""
    tmp = tmp_beside(path)
    tmp.write_text(text)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links (some FUSE mounts): not atomic, as good as it gets there
        if path.exists():
            return False
        tmp.replace(path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
