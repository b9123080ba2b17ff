"""One server per data directory: an exclusive flock on DATA_DIR/privtext.lock.

SQLite alone would let two servers share a store, but two servers would each resume the same
unfinished jobs and race on their groups. The lock is held for the server's lifetime and the
kernel drops it when the process dies (SIGKILL included), so a restart never finds it stale.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "privtext.lock"


class DataDirBusy(Exception):
    """Another process holds the data directory's lock."""


class DataDirLock:
    """Take the lock now (DataDirBusy if another process has it; OSError if the directory
    cannot be written); `release` (or process exit) gives it back."""

    def __init__(self, data_dir: str | os.PathLike):
        self.path = Path(data_dir) / LOCK_FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(f"data_dir must be used by one server at a time, got {str(Path(data_dir))!r} "
                              f"in use by another privtext server (pid {holder}, lock {str(self.path)!r})") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # for people: who holds it
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
