"""A run's output folder in a bucket (``--out s3://bucket/prefix``): local state, uploads, the lock object.

The run itself writes to a local **state directory** (``--state-dir``, default
``$XDG_STATE_HOME/batchqwen/<bucket-prefix>-<hash of the URL>``): the journal, the local run lock (an
``flock``), ``results.parquet``, ``summary.json``, the event log. :class:`RemoteOut` keeps OUT in step:

* each WAV is uploaded as soon as it is written, before its item's journal record (an item is never done
  before its WAV is stored); the local copy is then removed, so the state directory stays small;
* at every checkpoint ``journal.jsonl``, ``results.parquet`` and ``run_events.jsonl`` are uploaded, so a run
  on a new host with an empty state directory resumes from OUT (:meth:`RemoteOut.open` takes the journal
  in OUT when it is longer than the local one);
* at the end every file left in the state directory (``summary.json``, ``report.html``, ...) is uploaded.

Two hosts on one OUT are kept apart by ``OUT/.batchqwen.lock``, an object written with a conditional
put (``If-None-Match: *``, taken over only with ``If-Match`` on the ETag seen). Its holder renews it at
every checkpoint and checks that it is still its own; a lock whose holder is gone (same host and its
process dead, or not renewed for ``stale_seconds``) is taken over with a warning. A store that ignores
conditional puts (``gs://`` here, where pyarrow offers none, and S3-compatible stores without the feature)
gets a write followed by a read-back, so a second host starting more than a moment later still sees the
first; two hosts starting at the same instant are then not reliably kept apart (see ``docs/storage.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batchqwen.errors import FetchFailed, InputFileError, LockHeld, OutputUnwritable, UsageError
from batchqwen.storage.fetch import Storage, StorageOptions, boto3_client
from batchqwen.storage.locations import Remote, display_url

log = logging.getLogger("batchqwen")

LOCK_OBJECT = ".batchqwen.lock"
LOCAL_LOCK = ".batchqwen.lock"  # batchqwen.lock.LOCK_NAME: never uploaded
JOURNAL = "journal.jsonl"
CHECKPOINT_FILES = ("journal.jsonl", "results.parquet", "run_events.jsonl")
STALE_SECONDS = 600.0  # a lock not renewed for this long is its dead holder's
WAIT_POLL_SECONDS = 2.0


def state_dir_for(out: Remote, root: Path | None = None) -> Path:
    """The local state directory of remote OUT ``out``: ``root`` (``--state-dir``) if given, else one per
    output URL under ``$XDG_STATE_HOME/batchqwen`` (``~/.local/state/batchqwen``)."""
    if root is not None:
        return root
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "batchqwen"
    plain = display_url(out.url).removesuffix("?…")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{out.host}-{out.key}").strip("-.")[:60] or "out"
    digest = hashlib.sha256(plain.encode("utf-8")).hexdigest()[:12]
    return base / f"{slug}-{digest}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _S3Objects:
    """Conditional puts and deletes on one bucket through boto3 (pyarrow offers no preconditions)."""

    def __init__(self, options: StorageOptions) -> None:
        self.client = boto3_client(options)

    def get(self, ref: Remote) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=ref.host, Key=ref.key)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return answer["Body"].read(), str(answer.get("ETag") or "")

    def put(self, ref: Remote, body: bytes, *, if_match: str | None = None, if_absent: bool = False) -> bool:
        """Write ``body``; False when the precondition failed (someone else's lock is there, or changed)."""
        from botocore.exceptions import ClientError

        extra: dict[str, str] = {}
        if if_absent:
            extra["IfNoneMatch"] = "*"
        if if_match:
            extra["IfMatch"] = if_match
        try:
            self.client.put_object(Bucket=ref.host, Key=ref.key, Body=body, ContentType="application/json", **extra)
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
                return False
            raise
        return True

    def delete(self, ref: Remote, *, if_match: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=ref.host, Key=ref.key, IfMatch=if_match)
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                return  # not ours any more, or gone: nothing to release
            if _code(exc) in ("NotImplemented", "501", "InvalidArgument"):
                self.client.delete_object(Bucket=ref.host, Key=ref.key)  # a store without conditional deletes
                return
            raise


def _code(exc: Any) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code") or getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode"))


class _PyarrowObjects:
    """The same on a store reached through pyarrow only (``gs://``): no preconditions, best effort."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def get(self, ref: Remote) -> tuple[bytes, str] | None:
        try:
            data = self.storage.read_bytes(ref, limit=1 << 20)
        except InputFileError as exc:
            if "not found" in str(exc):
                return None
            raise
        return data, hashlib.md5(data, usedforsecurity=False).hexdigest()

    def put(self, ref: Remote, body: bytes, *, if_match: str | None = None, if_absent: bool = False) -> bool:
        current = self.get(ref)
        if (if_absent and current is not None) or (if_match and (current is None or current[1] != if_match)):
            return False
        with tempfile.TemporaryDirectory(prefix="batchqwen-") as folder:
            path = Path(folder) / "lock"
            path.write_bytes(body)
            self.storage.upload(path, ref)
        return True

    def delete(self, ref: Remote, *, if_match: str) -> None:
        current = self.get(ref)
        if current is not None and current[1] == if_match:
            self.storage.filesystem(ref).delete_file(ref.fs_path)


class RemoteLock:
    """``OUT/.batchqwen.lock``: who runs on OUT, taken with a conditional put (see the module docstring)."""

    def __init__(
        self,
        out: Remote,
        storage: Storage,
        state_dir: Path,
        *,
        wait: bool = False,
        timeout: float | None = None,
        stale_seconds: float = STALE_SECONDS,
    ) -> None:
        self.ref = out.join(LOCK_OBJECT)
        self.out = out
        self.state_dir = str(state_dir.absolute())
        self.wait = wait
        self.timeout = timeout
        self.stale_seconds = stale_seconds
        self.objects: _S3Objects | _PyarrowObjects = (
            _S3Objects(storage.options) if out.scheme == "s3" else _PyarrowObjects(storage)
        )
        self.token = uuid.uuid4().hex
        self.started_at = _now()
        self.etag: str | None = None

    def _body(self) -> bytes:
        info = {
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state_dir": self.state_dir,
            "started_at": self.started_at,
            "renewed_at": _now(),
            "renewed_unix": time.time(),
        }
        return (json.dumps(info) + "\n").encode()

    def _holder(self, data: bytes) -> dict[str, Any]:
        try:
            info = json.loads(data.decode("utf-8") or "{}")
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    def _gone(self, info: dict[str, Any]) -> str | None:
        """Why the holder of ``info`` no longer runs, or None when it may still."""
        if not info:
            return "its lock object is unreadable"
        if info.get("host") == socket.gethostname():
            if info.get("state_dir") == self.state_dir:
                return "it ran on this host with this state directory, whose local lock is now ours"
            pid = info.get("pid")
            if isinstance(pid, int) and not _pid_alive(pid):
                return f"its process {pid} on this host is gone"
        renewed = info.get("renewed_unix")
        if isinstance(renewed, int | float) and time.time() - renewed > self.stale_seconds:
            return f"it was last renewed at {info.get('renewed_at')}, over {self.stale_seconds:g} s ago"
        return None

    def acquire(self) -> None:
        """Take the lock or raise LockHeld (with ``wait``: poll until it is free, or ``timeout`` passes)."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                if self._try_acquire():
                    return
                current = self.objects.get(self.ref)
            except (FetchFailed, InputFileError, OSError) as exc:
                raise OutputUnwritable(f"cannot take the lock {self.ref}: {exc}") from None
            except Exception as exc:  # botocore's errors: say what, never the request's headers
                raise OutputUnwritable(f"cannot take the lock {self.ref}: {type(exc).__name__}: {exc}") from None
            info = self._holder(current[0]) if current else {}
            holder = (
                f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started_at', '?')}, "
                f"renewed {info.get('renewed_at', '?')}"
            )
            if not self.wait:
                raise LockHeld(
                    f"output {self.out} is in use by another batchqwen run ({holder}); let it finish, use "
                    "another --out, or pass --wait-lock to wait for it"
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise LockHeld(f"output {self.out} is still in use by another batchqwen run ({holder})")
            time.sleep(WAIT_POLL_SECONDS)

    def _try_acquire(self) -> bool:
        body = self._body()
        if self.objects.put(self.ref, body, if_absent=True):
            return self._verify()
        current = self.objects.get(self.ref)
        if current is None:
            return False  # released in between: the next round takes it
        data, etag = current
        info = self._holder(data)
        reason = self._gone(info)
        if reason is None:
            return False
        if not self.objects.put(self.ref, body, if_match=etag):
            return False  # someone else took it over first
        log.warning(
            "took over the lock of %s from pid %s on %s: %s", self.out, info.get("pid"), info.get("host"), reason
        )
        return self._verify()

    def _verify(self) -> bool:
        """Read the lock back: ours only if it holds our token (a store may ignore the precondition)."""
        current = self.objects.get(self.ref)
        if current is None or self._holder(current[0]).get("token") != self.token:
            return False
        self.etag = current[1]
        return True

    def renew(self) -> None:
        """At a checkpoint: still ours? (else OutputUnwritable: the run must stop) then a fresh renewal time."""
        current = self.objects.get(self.ref)
        if current is None or self._holder(current[0]).get("token") != self.token:
            info = self._holder(current[0]) if current else {}
            who = f"pid {info.get('pid', '?')} on {info.get('host', '?')}" if info else "nobody (it was removed)"
            raise OutputUnwritable(f"lost the lock of {self.out}: it is now held by {who}")
        if self.objects.put(self.ref, self._body(), if_match=current[1]):
            self._verify()

    def release(self) -> None:
        if self.etag is None:
            return
        etag, self.etag = self.etag, None
        with contextlib.suppress(Exception):  # best effort: a lock left behind is taken over as stale
            current = self.objects.get(self.ref)
            if current is not None and self._holder(current[0]).get("token") == self.token:
                self.objects.delete(self.ref, if_match=current[1] or etag)


class RemoteOut:
    """OUT in a bucket, mirrored from the local state directory ``local`` (see the module docstring)."""

    def __init__(
        self,
        out: Remote,
        local: Path,
        storage: Storage,
        *,
        wait_lock: bool = False,
        stale_seconds: float = STALE_SECONDS,
    ) -> None:
        if not out.is_object:
            raise UsageError(f"--out {out}: a remote output folder must be s3:// or gs://")
        self.out = out
        self.local = local
        self.storage = storage
        self.lock = RemoteLock(out, storage, local, wait=wait_lock, stale_seconds=stale_seconds)
        self.uploaded: set[str] = set()  # names stored in OUT by this run (WAVs): not uploaded again
        self._stamps: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) when last stored

    def open(self) -> None:
        """Take the lock object, then take OUT's journal if it is ahead of the local one."""
        self.local.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._take_journal()
        except BaseException:
            self.lock.release()
            raise

    def _take_journal(self) -> None:
        remote = self.out.join(JOURNAL)
        local = self.local / JOURNAL
        try:
            if not self.storage.exists(remote):
                return
            fetched = self.local / f".{JOURNAL}.from-out"
            self.storage.download(remote, fetched)
        except (FetchFailed, InputFileError) as exc:
            raise OutputUnwritable(f"cannot read the journal in {self.out}: {exc}") from None
        local_size = local.stat().st_size if local.exists() else -1
        if fetched.stat().st_size > local_size:
            os.replace(fetched, local)
            log.info("resuming from the journal in %s (%d bytes)", self.out, local.stat().st_size)
        else:
            fetched.unlink()

    def _name(self, path: Path) -> str:
        return path.relative_to(self.local).as_posix()

    def store(self, path: Path, *, remove: bool = True) -> None:
        """Upload ``path`` (under the state directory) to the same name in OUT; OutputUnwritable if it
        cannot be stored after its retries (the item is then not done: it runs again)."""
        name = self._name(path)
        try:
            self.storage.upload(path, self.out.join(name))
        except (FetchFailed, InputFileError) as exc:
            raise OutputUnwritable(str(exc)) from None
        self.uploaded.add(name)
        if remove:
            path.unlink(missing_ok=True)

    def _store_if_changed(self, path: Path) -> None:
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        name = self._name(path)
        if self._stamps.get(name) != stamp:
            self.store(path, remove=False)
            self._stamps[name] = stamp

    def checkpoint(self) -> None:
        """Renew the lock and upload the journal, results.parquet and the event log (those changed since)."""
        self.lock.renew()
        for name in CHECKPOINT_FILES:
            path = self.local / name
            if path.is_file():
                self._store_if_changed(path)

    def finish(self) -> None:
        """Upload every file left in the state directory (but the local lock and partial files)."""
        for path in sorted(self.local.rglob("*")):
            name = self._name(path)
            skip = name == LOCAL_LOCK or name in CHECKPOINT_FILES or name in self.uploaded
            if skip or not path.is_file() or path.name.startswith("."):
                continue
            remove = name.startswith("audio/")  # a WAV whose upload had failed earlier
            self.store(path, remove=remove)
        for name in CHECKPOINT_FILES:  # the final versions, when changed since a checkpoint stored them
            path = self.local / name
            if path.is_file():
                self._store_if_changed(path)

    def close(self) -> None:
        self.lock.release()


def download_out(out: Remote, storage: Storage, folder: Path, names: tuple[str, ...]) -> Path:
    """The files ``names`` of remote OUT copied into ``folder`` (those that exist; the first must), for
    ``report``."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, name in enumerate(names):
        ref = out.join(name)
        if storage.exists(ref):
            storage.download(ref, folder / name)
        elif number == 0:
            raise UsageError(f"no results in {out}: {name} not found (has a run finished there?)")
    return folder
