"""Reading remote files: buckets through pyarrow's filesystems, URLs through httpx; ranged reads, downloads.

* ``s3://`` goes through :class:`pyarrow.fs.S3FileSystem` (the AWS SDK: signing, the standard credential
  chain of environment variables, ``~/.aws`` profiles and instance roles, and its own retry strategy);
  ``--s3-endpoint`` (or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) points it at Alibaba Cloud OSS,
  MinIO or any S3-compatible store. ``gs://`` goes through :class:`pyarrow.fs.GcsFileSystem`.
* ``https://`` and ``http://`` go through httpx with a connection guard: every address a host name resolves
  to is checked (:func:`~batchqwen.storage.locations.address_refusal`) before a socket is opened, on every
  connection, redirects included, and the socket is opened to the checked address (no second lookup a
  rebinding DNS could answer differently). No proxy from the environment is used for media URLs (a proxy
  would resolve the name where it cannot be checked).
* Transient failures (connection refused or dropped, timeouts, HTTP 5xx/429/408) are retried with
  exponential backoff and jitter by ``stamina``; 401/403/404/410 are the row's plain error at once.

Messages name files by their display URL (:func:`~batchqwen.storage.locations.display_url`): never a
credential, a signed query string or a token.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import io
import logging
import os
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchqwen.errors import FetchFailed, InputFileError, MediaRefused, OutputUnwritable, UsageError
from batchqwen.items import Item
from batchqwen.storage.locations import Remote, display_url

if TYPE_CHECKING:
    import httpx

# httpx, httpcore and stamina are imported where a URL is first read: a run or an estimate of local files
# (and every estimate worker process) starts without them
log = logging.getLogger("batchqwen")

FIRST_READ_BYTES = 4_096  # a ranged read starts small (a WAV, PNG or JPEG header fits) ...
MAX_READ_BYTES = 1 << 20  # ... and doubles while a probe keeps reading, up to this
RANGED_CACHE_BYTES = 8 << 20  # what one open remote file keeps of what it read
DOWNLOAD_CHUNK_BYTES = 1 << 20
OBJECT_CHUNK_BYTES = 8 << 20  # one ranged GET per chunk of a bucket's object
MAX_ROOM_WAIT_SECONDS = 30.0  # a download waits this long for room in the cache, then goes over its cap
DEFAULT_CACHE_BYTES = 2 << 30  # --cache-size
DEFAULT_ATTEMPTS = 5
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})  # as results.DISK_FULL_ERRNOS


@dataclass(frozen=True)
class StorageOptions:
    """How remote files are reached; plain data, so it travels to worker processes. No secrets in it:
    credentials come from the environment, profiles or instance roles, read by the AWS / Google SDKs."""

    s3_endpoint: str | None = None  # None: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS itself
    s3_region: str | None = None  # None: AWS_REGION / AWS_DEFAULT_REGION / the profile's
    s3_virtual_hosted: bool = False  # bucket.endpoint/key instead of endpoint/bucket/key (OSS wants it)
    ca_bundle: Path | None = None  # CA certificates for HTTPS (and an https S3 endpoint); None: SSL_CERT_FILE, certifi
    allow_local_media: bool = False  # a manifest from a bucket or URL may name local files
    allow_private_urls: bool = False  # URL media may be on loopback / private / link-local addresses
    timeout: float = 30.0  # seconds to connect, and of silence while reading
    attempts: int = DEFAULT_ATTEMPTS  # tries of one request on transient errors
    cache_dir: Path | None = None  # downloads of a run (None: the system's temporary folder)
    cache_bytes: int = DEFAULT_CACHE_BYTES

    def endpoint(self) -> str | None:
        return self.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None

    def region(self) -> str | None:
        return self.s3_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None

    def cafile(self) -> str | None:
        if self.ca_bundle is not None:
            return str(self.ca_bundle)
        return os.environ.get("SSL_CERT_FILE") or None


class _TransientStatus(Exception):
    """An HTTP status worth another try (5xx, 429, 408)."""


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, MediaRefused | InputFileError):
        return False
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return False  # our disk, not the network
    import httpx

    if isinstance(exc, _TransientStatus | httpx.TransportError):
        return not isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL)
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | PermissionError):
        return _denied_or_missing(exc) is None  # pyarrow's AWS errors after the SDK's own retries
    return False


def _denied_or_missing(exc: BaseException) -> str | None:
    text = str(exc)
    if isinstance(exc, FileNotFoundError) or "NOT_FOUND" in text or "NoSuchKey" in text or "NoSuchBucket" in text:
        return "not found (404)"
    if isinstance(exc, PermissionError) or "ACCESS_DENIED" in text or "AccessDenied" in text or " 403" in text:
        return "access denied (403)"
    return None


def _reason(exc: BaseException) -> str:
    """A short reason for a message: the first line, with anything URL-shaped shown without its query."""
    text = (str(exc) or type(exc).__name__).strip().splitlines()[0]
    words = [display_url(w) if "://" in w else w for w in text.split()]
    return " ".join(words)[:300]


def _retrying(options: StorageOptions) -> Iterable[Any]:
    """stamina's retry context for one request (or one download): backoff from 0.2 s doubling to 5 s,
    with jitter, ``options.attempts`` tries."""
    import stamina

    return stamina.retry_context(
        on=_is_transient, attempts=max(1, options.attempts), timeout=None, wait_initial=0.2, wait_max=5.0
    )


# --------------------------------------------------------------------------------------------- HTTP


def _status_error(status: int, ref: Remote) -> Exception:
    meaning = {401: "unauthorized (401)", 403: "access denied (403)", 404: "not found (404)", 410: "gone (410)"}
    if status in _TRANSIENT_STATUS:
        return _TransientStatus(f"HTTP {status} from {ref}")
    return InputFileError(f"{meaning.get(status, f'HTTP {status}')}: {ref}")


# --------------------------------------------------------------------------------------------- storage


class Storage:
    """The clients for remote files, made on first use; safe to share between threads."""

    def __init__(self, options: StorageOptions | None = None) -> None:
        self.options = options or StorageOptions()
        self._lock = threading.Lock()
        self._s3: Any = None
        self._gcs: Any = None
        self._http: httpx.Client | None = None

    # clients -------------------------------------------------------------------------------------

    def filesystem(self, ref: Remote) -> Any:
        """The pyarrow filesystem of an ``s3://`` or ``gs://`` location."""
        import pyarrow.fs as pafs

        with self._lock:
            if ref.scheme == "gs":
                if self._gcs is None:
                    limit = timedelta(seconds=self.options.timeout * self.options.attempts)
                    self._gcs = pafs.GcsFileSystem(retry_time_limit=limit)
                return self._gcs
            if self._s3 is None:
                opts = self.options
                endpoint = opts.endpoint()
                kwargs: dict[str, Any] = {
                    "region": opts.region() or ("us-east-1" if endpoint else None),
                    "connect_timeout": opts.timeout,
                    "request_timeout": opts.timeout,
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max(1, opts.attempts)),
                }
                if opts.s3_virtual_hosted:
                    kwargs["force_virtual_addressing"] = True
                if endpoint:
                    kwargs["endpoint_override"] = endpoint
                    kwargs["scheme"] = "http" if endpoint.lower().startswith("http://") else "https"
                if opts.cafile():
                    kwargs["tls_ca_file_path"] = opts.cafile()
                profile = os.environ.get("AWS_PROFILE")
                if profile and not os.environ.get("AWS_ACCESS_KEY_ID"):
                    log.debug("S3 credentials from profile %s", profile)
                self._s3 = pafs.S3FileSystem(**kwargs)
            return self._s3

    def http(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                import certifi
                import httpx

                from batchqwen.storage.http import GuardedTransport

                context = ssl.create_default_context(cafile=self.options.cafile() or certifi.where())
                self._http = httpx.Client(
                    transport=GuardedTransport(context, allow_private=self.options.allow_private_urls),
                    timeout=httpx.Timeout(self.options.timeout),
                    follow_redirects=True,
                    max_redirects=5,
                    trust_env=False,
                    headers={"User-Agent": "batchqwen"},
                )
            return self._http

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    # reading -------------------------------------------------------------------------------------

    def open_ranged(self, ref: Remote) -> RemoteFile:
        """A seekable read-only file on ``ref`` that reads only the ranges asked for (for header probes)."""
        return RemoteFile(self, ref)

    def download(self, ref: Remote, target: Path, *, on_size: Callable[[int | None], None] | None = None) -> int:
        """Stream ``ref`` into ``target`` (written beside it, then renamed); the bytes written.

        ``on_size`` learns the size before the body is read (None when the server does not say), e.g. to
        make room in a bounded cache. Raises InputFileError (403/404), FetchFailed (retries exhausted),
        MediaRefused (a private address without the flag).
        """
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        sized = [False]

        def size_known(size: int | None) -> None:
            if on_size is not None and not sized[0]:
                sized[0] = True
                on_size(size)

        try:
            for attempt in _retrying(self.options):
                with attempt, partial.open("wb") as sink:
                    if attempt.num > 1:
                        log.info("retrying %s (attempt %d)", ref, attempt.num)
                    written = self._download_once(ref, sink, size_known)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            if exc.errno in DISK_FULL_ERRNOS:  # the local disk, not the file: the run must stop
                raise OutputUnwritable(f"cannot download {ref} into {target.parent}: {exc.strerror}") from None
            raise self._failure(ref, exc) from None
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise self._failure(ref, exc) from None
        os.replace(partial, target)
        return written

    def _download_once(self, ref: Remote, sink: io.BufferedWriter, size_known: Callable[[int | None], None]) -> int:
        written = 0
        if ref.is_object:
            fs = self.filesystem(ref)
            try:
                with fs.open_input_file(ref.fs_path) as source:
                    size_known(int(source.size()))
                    while chunk := source.read(OBJECT_CHUNK_BYTES):
                        sink.write(chunk)
                        written += len(chunk)
            except OSError as exc:
                self._raise_plain(ref, exc)
                raise
            return written
        with self.http().stream("GET", ref.url) as response:
            if response.status_code != 200:
                raise _status_error(response.status_code, ref)
            length = response.headers.get("content-length")
            size_known(int(length) if length and length.isdigit() else None)
            for chunk in response.iter_bytes(DOWNLOAD_CHUNK_BYTES):
                sink.write(chunk)
                written += len(chunk)
        return written

    def read_range(self, ref: Remote, start: int, length: int) -> tuple[bytes, int]:
        """Bytes ``start`` .. ``start+length`` of ``ref`` (fewer at its end) and the file's whole size."""
        try:
            for attempt in _retrying(self.options):
                with attempt:
                    return self._read_range_once(ref, start, length)
        except Exception as exc:
            raise self._failure(ref, exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_range_once(self, ref: Remote, start: int, length: int) -> tuple[bytes, int]:
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        with self.http().stream("GET", ref.url, headers=headers) as response:
            status = response.status_code
            if status == 416:  # asked past the end
                total = response.headers.get("content-range", "").rpartition("/")[2]
                return b"", int(total) if total.isdigit() else start
            if status not in (200, 206):
                raise _status_error(status, ref)
            data = bytearray()
            if status == 206:
                total_text = response.headers.get("content-range", "").rpartition("/")[2]
                for chunk in response.iter_bytes():
                    data += chunk
                total = int(total_text) if total_text.isdigit() else start + len(data)
                return bytes(data), total
            # the server ignores ranges: read up to what was asked from the whole body, then hang up
            length_text = response.headers.get("content-length", "")
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) >= start + length:
                    break
            total = int(length_text) if length_text.isdigit() else len(data)
            return bytes(data[start : start + length]), total

    def read_bytes(self, ref: Remote, *, limit: int = 1 << 30) -> bytes:
        """A small remote file in memory (a lock object, a summary)."""
        buffer = io.BytesIO()
        target_size = [0]

        def check(size: int | None) -> None:
            if size is not None and size > limit:
                raise InputFileError(f"{ref} is larger than {limit:,} bytes")
            target_size[0] = size or 0

        import tempfile

        with tempfile.TemporaryDirectory(prefix="batchqwen-") as folder:
            path = Path(folder) / "data"
            self.download(ref, path, on_size=check)
            buffer.write(path.read_bytes())
        return buffer.getvalue()

    def exists(self, ref: Remote) -> bool:
        import pyarrow.fs as pafs

        if not ref.is_object:
            raise UsageError(f"{ref}: outputs go to s3:// or gs://")
        try:
            for attempt in _retrying(self.options):
                with attempt:
                    info = self.filesystem(ref).get_file_info(ref.fs_path)
        except Exception as exc:
            raise self._failure(ref, exc) from None
        return bool(info.type == pafs.FileType.File)

    # writing -------------------------------------------------------------------------------------

    def upload(self, source: Path, ref: Remote) -> None:
        """Copy the local file ``source`` to ``ref`` (a bucket), retried; FetchFailed when it cannot be."""
        if not ref.is_object:
            raise UsageError(f"{ref}: outputs go to s3:// or gs://")
        try:
            for attempt in _retrying(self.options):
                with attempt:
                    if attempt.num > 1:
                        log.info("retrying the upload of %s (attempt %d)", ref, attempt.num)
                    if ref.scheme == "s3":  # one PutObject below 8 MiB (pyarrow would make 3 requests)
                        boto3_client(self.options).upload_file(str(source), ref.host, ref.key)
                    else:
                        fs = self.filesystem(ref)
                        with source.open("rb") as data, fs.open_output_stream(ref.fs_path, metadata={}) as sink:
                            while chunk := data.read(DOWNLOAD_CHUNK_BYTES):
                                sink.write(chunk)
        except Exception as exc:
            raise self._failure(ref, exc, verb="store") from None

    # errors --------------------------------------------------------------------------------------

    def _raise_plain(self, ref: Remote, exc: BaseException) -> None:
        plain = _denied_or_missing(exc)
        if plain is not None:
            raise InputFileError(f"{plain}: {ref}") from None

    def _failure(self, ref: Remote, exc: BaseException, *, verb: str = "read") -> Exception:
        if isinstance(exc, MediaRefused) and str(ref) not in str(exc):
            return MediaRefused(f"{ref} refused: {exc}")
        if isinstance(exc, MediaRefused | InputFileError | UsageError):
            return exc
        plain = _denied_or_missing(exc)
        if plain is not None:
            return InputFileError(f"{plain}: {ref}")
        tries = max(1, self.options.attempts)
        return FetchFailed(f"cannot {verb} {ref} after {tries} attempt(s): {_reason(exc)}")


_SHARED: dict[StorageOptions, Storage] = {}
_SHARED_LOCK = threading.Lock()


def shared_storage(options: StorageOptions) -> Storage:
    """One :class:`Storage` per options in this process (its clients keep their connections; they are
    closed when the process exits)."""
    with _SHARED_LOCK:
        if not _SHARED:
            atexit.register(_close_shared)
        storage = _SHARED.get(options)
        if storage is None:
            storage = _SHARED[options] = Storage(options)
        return storage


def _close_shared() -> None:
    with _SHARED_LOCK:
        for storage in _SHARED.values():
            storage.close()
        _SHARED.clear()


_BOTO3_CLIENTS: dict[StorageOptions, Any] = {}


def boto3_client(options: StorageOptions) -> Any:
    """One boto3 S3 client per options (making one reads the service model: a quarter of a second)."""
    with _SHARED_LOCK:
        client = _BOTO3_CLIENTS.get(options)
        if client is None:
            client = _BOTO3_CLIENTS[options] = _new_boto3_client(options)
        return client


def _new_boto3_client(options: StorageOptions) -> Any:
    import boto3
    from botocore.config import Config

    endpoint = options.endpoint()
    style = "virtual" if options.s3_virtual_hosted else ("path" if endpoint else "auto")
    config = Config(
        retries={"mode": "standard", "max_attempts": max(1, options.attempts)},
        s3={"addressing_style": style},
        connect_timeout=options.timeout,
        read_timeout=options.timeout,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=options.region() or "us-east-1",
        config=config,
        verify=options.cafile() or None,
    )


class RemoteFile(io.RawIOBase):
    """A read-only, seekable file on a remote object, for probes that read headers: each read fetches
    the missing range only, starting at :data:`FIRST_READ_BYTES` and doubling while the reader goes on
    (up to :data:`MAX_READ_BYTES`), keeping at most :data:`RANGED_CACHE_BYTES` of what it fetched.

    ``requests`` and ``bytes_fetched`` count what went over the network (the HEAD of an object included).
    """

    def __init__(self, storage: Storage, ref: Remote) -> None:
        super().__init__()
        self.storage = storage
        self.ref = ref
        self.name = display_url(ref.url).removesuffix("?…")
        self.requests = 0
        self.bytes_fetched = 0
        self._position = 0
        self._size: int | None = None
        self._handle: Any = None
        self._blocks: OrderedDict[int, bytes] = OrderedDict()  # start -> bytes, most recent last
        self._next_read = FIRST_READ_BYTES
        if ref.is_object:
            try:
                for attempt in _retrying(storage.options):
                    with attempt:
                        self.requests += 1
                        self._handle = storage.filesystem(ref).open_input_file(ref.fs_path)
                        self._size = int(self._handle.size())
            except Exception as exc:
                raise storage._failure(ref, exc) from None

    # io.RawIOBase ---------------------------------------------------------------------------------

    def __str__(self) -> str:
        return str(self.ref)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self.size() + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise OSError(22, "negative seek position")
        self._position = position
        return position

    def size(self) -> int:
        if self._size is None:
            self._fetch(0, 1)  # a URL tells its size with the first ranged answer
        assert self._size is not None
        return self._size

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = len(view)
        done = 0
        while done < wanted:
            chunk = self._cached(self._position, wanted - done)
            if chunk is None:
                if self._size is not None and self._position >= self._size:
                    break
                self._fetch(self._position, wanted - done)
                chunk = self._cached(self._position, wanted - done)
                if not chunk:
                    break
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
            self._position += len(chunk)
        return done

    def close(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(Exception):
                self._handle.close()
            self._handle = None
        self._blocks.clear()
        super().close()

    # ranges ---------------------------------------------------------------------------------------

    def _cached(self, position: int, most: int) -> bytes | None:
        for start, data in reversed(self._blocks.items()):
            if start <= position < start + len(data):
                self._blocks.move_to_end(start)
                offset = position - start
                return data[offset : offset + most]
        return None

    def _fetch(self, position: int, wanted: int) -> None:
        length = max(wanted, self._next_read)
        if self._size is not None:
            length = min(length, self._size - position)
        if length <= 0:
            return
        self.requests += 1
        if self._handle is not None:
            try:
                for attempt in _retrying(self.storage.options):
                    with attempt:
                        data = bytes(self._handle.read_at(length, position))
            except Exception as exc:
                raise self.storage._failure(self.ref, exc) from None
        else:
            data, self._size = self.storage.read_range(self.ref, position, length)
        self.bytes_fetched += len(data)
        self._next_read = min(MAX_READ_BYTES, self._next_read * 2)
        if data:
            self._blocks[position] = data
            while sum(len(b) for b in self._blocks.values()) > RANGED_CACHE_BYTES and len(self._blocks) > 1:
                self._blocks.popitem(last=False)


# --------------------------------------------------------------------------------------------- the cache


@dataclass
class _Entry:
    path: Path
    size: int
    users: int = 0
    ready: threading.Event | None = None
    error: BaseException | None = None


class DownloadCache:
    """Remote media of a run on local disk, at most ``max_bytes`` at once (a file that alone is larger is
    let in only when nothing else is in use, so a run never deadlocks on it).

    A file is downloaded once while rows share it; an item releases its files once it is prepared, and a
    released file stays until its room is needed (least recently used first). The folder is the run's own
    and is removed by :meth:`close`.
    """

    def __init__(self, storage: Storage, folder: Path, *, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.storage = storage
        self.folder = folder
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._reserved = 0  # bytes of the files present or being downloaded
        self._room = threading.Condition()
        self.downloads = 0

    @classmethod
    def for_run(cls, storage: Storage) -> DownloadCache:
        import tempfile

        root = storage.options.cache_dir or Path(tempfile.gettempdir()) / "batchqwen-cache"
        folder = root / f"run-{os.getpid()}-{os.urandom(4).hex()}"  # made on the first download
        return cls(storage, folder, max_bytes=storage.options.cache_bytes)

    def _path_for(self, ref: Remote) -> Path:
        digest = hashlib.sha256(ref.url.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        suffix = ref.suffix if ref.suffix.isascii() and len(ref.suffix) <= 10 else ""
        return self.folder / f"{digest}{suffix.lower()}"

    def acquire(self, ref: Remote) -> Path:
        """The local copy of ``ref``, downloaded unless present; hold it until :meth:`release`."""
        key = ref.url
        with self._room:
            entry = self._entries.get(key)
            if entry is not None and entry.error is None:
                entry.users += 1
                self._entries.move_to_end(key)
                ready = entry.ready
            else:
                entry = self._entries[key] = _Entry(self._path_for(ref), 0, users=1, ready=threading.Event())
                ready = None
        if ready is not None:  # present, or another thread is downloading it
            ready.wait()
            if entry.error is not None:  # that download failed (and its entry is gone): so does this one
                raise entry.error
            return entry.path
        assert entry.ready is not None
        try:
            self.storage.download(ref, entry.path, on_size=lambda size: self._make_room(entry, size or 0))
            actual = entry.path.stat().st_size
            with self._room:
                self._reserved += actual - entry.size
                entry.size = actual
                self.downloads += 1
        except BaseException as exc:
            with self._room:
                entry.error = exc
                self._reserved -= entry.size
                entry.size = 0
                if self._entries.get(key) is entry:
                    del self._entries[key]
                self._room.notify_all()
            entry.ready.set()
            raise
        entry.ready.set()
        return entry.path

    def _make_room(self, entry: _Entry, size: int) -> None:
        deadline = time.monotonic() + MAX_ROOM_WAIT_SECONDS
        with self._room:
            while True:
                self._evict_unused(size)
                others_in_use = any(e.users and e is not entry and e.size for e in self._entries.values())
                if self._reserved + size <= self.max_bytes or not others_in_use:
                    break
                if time.monotonic() >= deadline:  # items holding files while they wait for more: never a deadlock
                    log.warning("the download cache goes over --cache-size for %s (%d bytes)", entry.path.name, size)
                    break
                self._room.wait(timeout=1.0)
            entry.size = size
            self._reserved += size

    def _evict_unused(self, wanted: int) -> None:
        for key, entry in list(self._entries.items()):
            if self._reserved + wanted <= self.max_bytes:
                return
            if entry.users == 0 and entry.ready is not None and entry.ready.is_set():
                entry.path.unlink(missing_ok=True)
                self._reserved -= entry.size
                del self._entries[key]

    def release(self, ref: Remote) -> None:
        with self._room:
            entry = self._entries.get(ref.url)
            if entry is not None and entry.users > 0:
                entry.users -= 1
            self._evict_unused(0)
            self._room.notify_all()

    @property
    def bytes_held(self) -> int:
        return self._reserved

    def close(self) -> None:
        import shutil

        with self._room:
            self._entries.clear()
            self._reserved = 0
        shutil.rmtree(self.folder, ignore_errors=True)


def remote_refs(item: Item) -> list[Remote]:
    """The remote files an item names, in column order."""
    return [ref for ref in (item.audio, *item.images, item.video) if isinstance(ref, Remote)]


def localise(item: Item, cache: DownloadCache) -> Item:
    """``item`` with every remote file replaced by its local copy in ``cache`` (held: see :func:`release`).

    Raises the first file's error (InputFileError, FetchFailed, MediaRefused), with the row named.
    """
    held: list[Remote] = []
    local: dict[str, Path] = {}
    try:
        for ref in remote_refs(item):
            if ref.url not in local:
                local[ref.url] = cache.acquire(ref)
                held.append(ref)
    except (InputFileError, MediaRefused) as exc:
        for ref in held:
            cache.release(ref)
        raise type(exc)(f"row {item.row} (id {item.id!r}): {exc}") from None

    def swap(ref: Path | Remote | None) -> Any:
        return local[ref.url] if isinstance(ref, Remote) else ref

    return replace(item, audio=swap(item.audio), images=tuple(swap(r) for r in item.images), video=swap(item.video))


def release(item: Item, cache: DownloadCache) -> None:
    """Let go of the files :func:`localise` held for ``item`` (its preparation is over)."""
    for url in dict.fromkeys(ref.url for ref in remote_refs(item)):
        cache.release(Remote(url))


def fetch_manifest(ref: Remote, folder: Path, options: StorageOptions) -> Path:
    """Download a remote manifest into ``folder`` under its own file name (its extension says its format).

    The manifest is the user's own choice of URL: it is fetched with the address rules of media URLs
    relaxed (a manifest on a private host is the user's to name); the media it names are not.
    """
    name = ref.name or "manifest"
    target = folder / name
    storage = Storage(replace(options, allow_private_urls=True))
    try:
        storage.download(ref, target)
    except (InputFileError, MediaRefused) as exc:
        raise UsageError(f"cannot read the manifest: {exc}") from None
    finally:
        storage.close()
    return target


def parse_size(text: str) -> int:
    """``2G``, ``500M``, ``64k`` or a number of bytes (powers of 1024)."""
    units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in units else ""
    number = value[: len(value) - len(unit)].strip()
    try:
        size = float(number) * units[unit]
    except ValueError:
        raise UsageError(f"{text!r} is not a size (like 2G, 500M or a number of bytes)") from None
    if size < 1:
        raise UsageError(f"{text!r} is not a positive size")
    return int(size)
