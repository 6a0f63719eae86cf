"""One run per output folder: an ``fcntl.flock`` on ``OUT/.batchqwen.lock``.

The OS drops a flock when its holder dies, however it dies, so there are no stale locks to clean up and
the pid in the file is information for the user, never the lock itself. The file is never deleted:
unlinking a locked file would let a second run lock a new inode under the same name.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from batchqwen.errors import LockHeld

LOCK_NAME = ".batchqwen.lock"
POLL_SECONDS = 0.1


def _holder_text(info: dict[str, Any]) -> str:
    if not info:
        return "another process (its details are not written yet)"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started_at', '?')}"


class RunLock:
    """Exclusive lock on an output folder for the length of a ``with`` block.

    Not waiting (the default), a held lock raises LockHeld at once. With ``wait=True`` it polls until the
    lock is free, or until ``timeout`` seconds have passed (then LockHeld); ``timeout=None`` waits forever.
    """

    def __init__(self, out_dir: Path, *, wait: bool = False, timeout: float | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.wait = wait
        self.timeout = timeout
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        """What the current holder wrote into the lock file ({} if nothing readable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self) -> None:
        """Take the lock (see the class docstring for waiting); write pid, host and start time into it."""
        if self._fd is not None:
            raise RuntimeError("RunLock is not reentrant")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not self.wait:
                        raise LockHeld(
                            f"output folder {self.out_dir} is in use by another batchqwen run "
                            f"({_holder_text(self.holder())}); let it finish, use another output folder, "
                            "or pass --wait-lock to wait for it"
                        ) from None
                    if deadline is not None and time.monotonic() >= deadline:
                        raise LockHeld(
                            f"output folder {self.out_dir} is still in use by another batchqwen run "
                            f"({_holder_text(self.holder())}) after waiting {self.timeout:g} s"
                        ) from None
                    time.sleep(POLL_SECONDS)
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Clear the holder details and drop the lock (closing the descriptor releases the flock)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
