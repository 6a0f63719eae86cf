"""The output-folder lock, against a real second process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchqwen.errors import LockHeld
from batchqwen.lock import LOCK_NAME, RunLock


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """A second process that takes the lock on tmp_path/out, says "held", and keeps it until stdin closes."""
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from batchqwen.lock import RunLock
        with RunLock(Path({str(out)!r})):
            print("held", flush=True)
            sys.stdin.read()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def test_lock_held_by_another_process_raises_with_its_pid(holder: tuple[subprocess.Popen[str], Path]) -> None:
    proc, out = holder
    with pytest.raises(LockHeld, match=rf"pid {proc.pid} on .*started .*--wait-lock"), RunLock(out):
        pytest.fail("acquired a lock that another process holds")


def test_wait_mode_acquires_after_release(holder: tuple[subprocess.Popen[str], Path]) -> None:
    proc, out = holder
    assert proc.stdin is not None
    with pytest.raises(LockHeld):
        RunLock(out).acquire()
    proc.stdin.close()  # the holder leaves its with block and exits
    start = time.monotonic()
    with RunLock(out, wait=True, timeout=20) as lock:
        assert lock.held
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid()
    assert time.monotonic() - start < 20
    assert (out / LOCK_NAME).read_text() == ""  # details cleared on release; the file itself stays


def test_wait_mode_times_out(holder: tuple[subprocess.Popen[str], Path]) -> None:
    _, out = holder
    start = time.monotonic()
    with pytest.raises(LockHeld, match=r"after waiting 0\.3 s"), RunLock(out, wait=True, timeout=0.3):
        pytest.fail("acquired a lock that another process holds")
    assert 0.25 < time.monotonic() - start < 5


def test_a_killed_holder_leaves_no_stale_lock(holder: tuple[subprocess.Popen[str], Path]) -> None:
    proc, out = holder
    proc.kill()  # SIGKILL: no cleanup code runs
    proc.wait(timeout=10)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == proc.pid  # its details are still there
    with RunLock(out) as lock:
        assert lock.held


def test_same_process_second_lock_is_refused_and_lock_is_reusable(tmp_path: Path) -> None:
    with RunLock(tmp_path / "new" / "out"), pytest.raises(LockHeld), RunLock(tmp_path / "new" / "out"):
        pass
    with RunLock(tmp_path / "new" / "out"):
        pass
