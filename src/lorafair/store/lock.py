"""One process per run folder: the lock every command that writes a run directory holds."""

from __future__ import annotations

import os
from pathlib import Path

from lorafair.errors import UserError

LOCK_NAME = ".lock"


class RunLock:
    """One process per run folder: an exclusive, non-blocking `flock` on `<output>/.lock`, which
    holds the holder's pid. The kernel drops the lock when its process dies, however it dies, so
    a stale lock file is simply taken over."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UserError(f"{self.path.parent}: another lorafair process (pid {holder}) is running on this "
                                "output folder; wait for it to finish or stop it, then run again") from None
            try:  # the holder before us may have removed the file while we waited: lock the one in place
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None
