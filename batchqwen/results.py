"""Results out, crash-safe: the journal, atomic files, the final ``results.parquet`` and ``summary.json``.

The journal (``OUT/journal.jsonl``) is the source of truth while a run is going: one JSON line per
finished attempt, appended, flushed and fsynced before :meth:`Journal.append` returns, so an item counts
as done only once its line is on disk. A kill can at worst tear the last line; :meth:`Journal.load`
ignores it and keeps the *last* record per id. ``results.parquet`` and ``summary.json`` are derived from
the manifest plus the journal at the end of a run (and can be rebuilt at any time), each written to a temp
file in the same folder, fsynced, then ``os.replace``-d over the old one. See ``docs/results_schema.md``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchqwen.errors import BatchQwenError, ExtractError, HandshakeRejected, OutputUnwritable, ServerError
from batchqwen.items import Item

if TYPE_CHECKING:
    from batchqwen.extract import Extraction

JOURNAL_NAME = "journal.jsonl"
RESULTS_NAME = "results.parquet"
SUMMARY_NAME = "summary.json"
AUDIO_DIR = "audio"

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"  # journaled on purpose without a session (e.g. the budget cap was reached)
STATUS_PENDING = "pending"  # no (current) journal record: not run yet (--limit, interrupt, crash)
#: journaled after each turn of a conversation but its last: the turns so far and what they were billed; the
#: item is run again whole (the billed tokens carry over into ``failed_attempt_tokens``)
STATUS_PARTIAL = "partial"
STATUSES: tuple[str, ...] = (STATUS_OK, STATUS_FAILED, STATUS_SKIPPED, STATUS_PENDING)

MAX_ERROR_MESSAGE = 4_000
WRITE_BATCH_ROWS = 2_000  # rows per Parquet row group: bounds the memory a write needs

_TIMESTAMP = pa.timestamp("us", tz="UTC")

#: the stable result columns, in order; passthrough columns (strings) are appended per run
#: one utterance a translation model detected and answered: its times in the input, source, translation
UTTERANCE_TYPE = pa.struct(
    [
        ("start_seconds", pa.float64()),
        ("end_seconds", pa.float64()),
        ("source_text", pa.string()),
        ("text", pa.string()),
    ]
)
#: one function call: its turn, id, tool name, arguments and output (JSON text), error, and the tool's time
TOOL_CALL_TYPE = pa.struct(
    [
        ("turn", pa.int64()),
        ("call_id", pa.string()),
        ("name", pa.string()),
        ("arguments", pa.string()),
        ("output", pa.string()),
        ("error", pa.string()),
        ("seconds", pa.float64()),
    ]
)
#: what the service reported for the responses of one turn, summed
TURN_USAGE_TYPE = pa.struct(
    [
        (name, pa.int64())
        for name in (
            "input_tokens",
            "output_tokens",
            "total_tokens",
            "input_text_tokens",
            "input_audio_tokens",
            "input_image_tokens",
            "output_text_tokens",
            "output_audio_tokens",
        )
    ]
)
#: one turn of a conversation
TURN_TYPE = pa.struct(
    [
        ("turn", pa.int64()),
        ("input_transcript", pa.string()),
        ("output_text", pa.string()),
        ("output_transcript", pa.string()),
        ("output_wav", pa.string()),
        ("output_audio_seconds", pa.float64()),
        ("response_ids", pa.list_(pa.string())),
        ("tool_calls", pa.list_(TOOL_CALL_TYPE)),
        ("usage", TURN_USAGE_TYPE),
    ]
)
RESULT_SCHEMA: pa.Schema = pa.schema(
    [
        ("id", pa.string()),
        ("row", pa.int64()),
        ("status", pa.string()),
        ("error_type", pa.string()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("attempts", pa.int64()),
        ("model", pa.string()),
        ("voice", pa.string()),
        ("modalities", pa.string()),
        ("input_transcript", pa.string()),
        ("output_text", pa.string()),
        ("output_transcript", pa.string()),
        ("target_language", pa.string()),
        ("utterances", pa.list_(UTTERANCE_TYPE)),
        ("notes", pa.list_(pa.string())),
        ("output_wav", pa.string()),
        ("output_audio_seconds", pa.float64()),
        ("input_audio_seconds", pa.float64()),
        ("padded_silence_seconds", pa.float64()),
        ("image_count", pa.int64()),
        ("est_input_text_tokens", pa.int64()),
        ("est_input_audio_tokens", pa.int64()),
        ("est_input_image_tokens", pa.int64()),
        ("est_output_text_tokens", pa.int64()),
        ("est_output_audio_tokens", pa.int64()),
        ("est_cost", pa.float64()),
        ("usage_input_text_tokens", pa.int64()),
        ("usage_input_audio_tokens", pa.int64()),
        ("usage_input_image_tokens", pa.int64()),
        ("usage_output_text_tokens", pa.int64()),
        ("usage_output_audio_tokens", pa.int64()),
        ("usage_input_tokens", pa.int64()),
        ("usage_output_tokens", pa.int64()),
        ("usage_total_tokens", pa.int64()),
        ("failed_attempt_tokens", pa.int64()),
        ("cost", pa.float64()),
        ("cost_basis", pa.string()),
        ("currency", pa.string()),
        ("session_id", pa.string()),
        ("response_ids", pa.list_(pa.string())),
        ("started_at", _TIMESTAMP),
        ("finished_at", _TIMESTAMP),
        ("connect_seconds", pa.float64()),
        ("first_text_seconds", pa.float64()),
        ("first_audio_seconds", pa.float64()),
        ("total_seconds", pa.float64()),
        ("content_hash", pa.string()),
        ("tool_calls", pa.list_(TOOL_CALL_TYPE)),
        ("turns", pa.list_(TURN_TYPE)),
        ("extracted_tool", pa.string()),
        ("extracted_arguments", pa.string()),
        ("segments", pa.int64()),
    ]
)
RESULT_COLUMNS: tuple[str, ...] = tuple(RESULT_SCHEMA.names)
PASSTHROUGH_PREFIX = "manifest_"  # for a passthrough column whose name is taken by a result column


@dataclass
class ResultRow:
    """One result row; field for field the columns of :data:`RESULT_SCHEMA` (a test keeps them in step)."""

    id: str
    row: int
    status: str
    error_type: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    model: str | None = None
    voice: str | None = None
    modalities: str | None = None  # "text" or "text,audio"
    input_transcript: str | None = None
    output_text: str | None = None
    output_transcript: str | None = None
    target_language: str | None = None  # translation models: the language translated into
    utterances: list[dict[str, Any]] = field(default_factory=list)  # UTTERANCE_TYPE records
    notes: list[str] = field(default_factory=list)  # what planning decided that changes what is sent
    output_wav: str | None = None  # relative to OUT, e.g. "audio/a.wav"
    output_audio_seconds: float | None = None
    input_audio_seconds: float | None = None
    padded_silence_seconds: float | None = None
    image_count: int | None = None
    est_input_text_tokens: int | None = None
    est_input_audio_tokens: int | None = None
    est_input_image_tokens: int | None = None
    est_output_text_tokens: int | None = None
    est_output_audio_tokens: int | None = None
    est_cost: float | None = None
    usage_input_text_tokens: int | None = None
    usage_input_audio_tokens: int | None = None
    usage_input_image_tokens: int | None = None
    usage_output_text_tokens: int | None = None
    usage_output_audio_tokens: int | None = None
    usage_input_tokens: int | None = None
    usage_output_tokens: int | None = None
    usage_total_tokens: int | None = None
    failed_attempt_tokens: int | None = None
    cost: float | None = None
    cost_basis: str | None = None  # "usage" | "estimate"
    currency: str | None = None
    session_id: str | None = None
    response_ids: list[str] = field(default_factory=list)
    started_at: datetime | None = None  # timezone-aware, UTC
    finished_at: datetime | None = None
    connect_seconds: float | None = None
    first_text_seconds: float | None = None
    first_audio_seconds: float | None = None
    total_seconds: float | None = None
    content_hash: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # TOOL_CALL_TYPE records, every turn's
    turns: list[dict[str, Any]] = field(default_factory=list)  # TURN_TYPE records (conversation rows only)
    extracted_tool: str | None = None  # --extract: the tool whose final arguments the row holds
    extracted_arguments: str | None = None  # ... as JSON text, validated; typed as extract_* columns
    segments: int | None = None  # sessions the item ran as: 1, or more for a recording split at pauses

    @classmethod
    def from_item(cls, item: Item, status: str, **fields: Any) -> ResultRow:
        """A row for ``item`` with id, row number, content hash and per-row settings filled in.

        ``fields`` override anything (e.g. the effective model and voice after defaults were applied).
        """
        base: dict[str, Any] = {
            "id": item.id,
            "row": item.row,
            "status": status,
            "model": item.model,
            "voice": item.voice,
            "modalities": ",".join(item.modalities) if item.modalities else None,
            "image_count": len(item.images),
            "content_hash": item.content_hash,
        }
        base.update(fields)
        return cls(**base)

    def to_record(self) -> dict[str, Any]:
        """The row as a JSON-ready dict (timestamps as ISO 8601 text), as the journal stores it."""
        # Not dataclasses.asdict: its deep copy is the bottleneck when a million rows are built.
        record = {name: getattr(self, name) for name in RESULT_COLUMNS}
        record["response_ids"] = list(self.response_ids)
        record["utterances"] = [dict(u) for u in self.utterances]
        record["notes"] = list(self.notes)
        record["tool_calls"] = [dict(c) for c in self.tool_calls]
        record["turns"] = [dict(t) for t in self.turns]
        for key in ("started_at", "finished_at"):
            value = record[key]
            record[key] = value.isoformat() if isinstance(value, datetime) else None
        return record


# ----------------------------------------------------------------------------- errors -> rows

_KEY_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"sk-[A-Za-z0-9_\-]{8,}"), "sk-***"),
    (re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"), r"\1***"),
    (re.compile(r"(?i)(api[_-]?key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"), r"\1***"),
)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every given secret, and anything shaped like an API key or bearer token, masked."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern, replacement in _KEY_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def error_fields(exc: BaseException, *, secrets: Iterable[str] = ()) -> dict[str, str | None]:
    """``error_type`` / ``error_code`` / ``error_message`` for an exception, message redacted and capped."""
    error_type = exc.kind if isinstance(exc, BatchQwenError) else type(exc).__name__
    code: str | None = None
    message = str(exc) or type(exc).__name__
    if isinstance(exc, ServerError):
        code = exc.code or exc.error_type or None
        message = exc.message + (f" (param {exc.param})" if exc.param else "")
    elif isinstance(exc, HandshakeRejected):
        code = exc.code or str(exc.status)
    elif isinstance(exc, ExtractError):
        code = exc.code or None
    message = redact(message, secrets)
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 1] + "…"
    return {"error_type": error_type, "error_code": code, "error_message": message}


def failed_row(
    item: Item, exc: BaseException, *, attempts: int = 1, secrets: Iterable[str] = (), **fields: Any
) -> ResultRow:
    """A ``failed`` row for ``item`` from the exception that ended its last attempt."""
    return ResultRow.from_item(item, STATUS_FAILED, attempts=attempts, **error_fields(exc, secrets=secrets), **fields)


def needs_run(item: Item, record: Mapping[str, Any] | None, *, retry_failed: bool = True) -> bool:
    """Whether resume must (re)run ``item`` given its last journal record.

    Done means: a record with status ``ok`` whose ``content_hash`` matches the item's (a changed row or
    file under the same id runs again). Failed items run again unless ``retry_failed`` is off.
    """
    if record is None or record.get("content_hash") != item.content_hash:
        return True
    status = record.get("status")
    if status == STATUS_OK:
        return False
    if status == STATUS_FAILED:
        return retry_failed
    return True


# ----------------------------------------------------------------------------- file names and atomic writes

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_HASH_SUFFIX = re.compile(r"--[0-9a-f]{12}$", re.IGNORECASE)
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"] + [f"COM{i}" for i in range(10)] + [f"LPT{i}" for i in range(10)]
)
SAFE_ID_MAX = 80  # characters kept from the id before the hash suffix


def safe_id(item_id: str) -> str:
    """A plain, portable file name stem for an id: only ``[A-Za-z0-9._-]``, never escaping a folder.

    Unchanged when the id already is one (lower case, no leading dot, not a Windows device name, at most
    80 characters, not ending like a hash suffix). Otherwise a readable stem + ``--`` + 12 hex of the
    sha256 of the original id: distinct ids never share a name, even on case-insensitive file systems
    (upper case counts as a change), short of a 48-bit hash collision.
    """
    # Accents are dropped rather than replaced ("café" reads as "cafe"); any other character becomes "_".
    decomposed = "".join(c for c in unicodedata.normalize("NFKD", item_id) if not unicodedata.combining(c))
    stem = _SAFE_CHARS.sub("_", decomposed)
    stem = stem.lstrip(".")[:SAFE_ID_MAX].rstrip(".") or "_"
    if stem.split(".")[0].upper() in _WINDOWS_RESERVED:
        stem = "_" + stem
    if stem == item_id and item_id == item_id.lower() and not _HASH_SUFFIX.search(item_id):
        return item_id
    digest = hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{stem}--{digest}"


def _inside(out_dir: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(out_dir.resolve())


def wav_path(out_dir: Path, item_id: str) -> Path:
    """``OUT/audio/<safe id>.wav``, verified to stay inside OUT."""
    path = Path(out_dir) / AUDIO_DIR / f"{safe_id(item_id)}.wav"
    if not _inside(Path(out_dir), path):  # cannot happen with safe_id; defence in depth (symlinked audio/)
        raise BatchQwenError(f"output path for id {item_id!r} would leave {out_dir}: {path}")
    return path


def turn_wav_path(out_dir: Path, item_id: str, turn: int) -> Path:
    """``OUT/audio/<safe id>/turn-<n>.wav``: one turn of a conversation (``n`` from 1), inside OUT."""
    path = Path(out_dir) / AUDIO_DIR / safe_id(item_id) / f"turn-{int(turn)}.wav"
    if not _inside(Path(out_dir), path):
        raise BatchQwenError(f"output path for id {item_id!r} would leave {out_dir}: {path}")
    return path


def relative_to_out(out_dir: Path, path: Path) -> str:
    """A path under OUT as the ``output_wav`` column stores it: relative, with forward slashes."""
    return Path(path).relative_to(Path(out_dir)).as_posix()


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; some file systems refuse O_RDONLY on a directory: best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a kill leaves either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_wav_atomic(path: Path, wav_bytes: bytes) -> None:
    """Atomically write a WAV file; refuses bytes that are not a RIFF/WAVE file (e.g. raw PCM)."""
    if wav_bytes[:4] != b"RIFF" or wav_bytes[8:12] != b"WAVE":
        raise ValueError(f"refusing to write {path}: the data is not a RIFF/WAVE file")
    atomic_write_bytes(path, wav_bytes)


# ----------------------------------------------------------------------------- the journal


#: errors that say the output disk, not the item, failed: full, out of quota, read-only
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


class Journal:
    """Append-only JSON Lines at ``OUT/journal.jsonl``: one result record (a result row) per line.

    ``append`` returns only after the line is written, flushed and fsynced. Use from one process at a
    time (the run lock sees to that); appends from several threads are serialised.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / JOURNAL_NAME
        self.skipped_lines = 0  # unreadable lines seen by the last load(): torn writes
        self._fd: int | None = None
        self._lock = threading.Lock()

    def _open(self) -> int:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if created:
            _fsync_dir(self.out_dir)
        elif self._ends_torn():
            # Seal a line torn by a kill so the next record starts on a line of its own.
            os.write(fd, b"\n")
        return fd

    def _ends_torn(self) -> bool:
        with self.path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"

    def append(self, record: Mapping[str, Any]) -> int:
        """Append one record (must have a string ``id``); durable on disk when this returns.

        Returns the byte offset of its line, for :class:`JournalIndex`.
        """
        if not isinstance(record.get("id"), str):
            raise TypeError("a journal record needs a string 'id'")
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
        data = line.encode("utf-8", "surrogatepass")
        with self._lock:
            try:
                if self._fd is None:
                    self._fd = self._open()
                offset = os.fstat(self._fd).st_size  # O_APPEND and one writer: the line starts here
            except OSError as exc:
                raise OutputUnwritable(f"cannot write the journal {self.path}: {exc.strerror or exc}") from exc
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)
            except OSError as exc:
                # never leave half a record: cut the file back to where this line began; if even that
                # fails, reopen next time so the torn line is sealed before another record follows
                try:
                    os.ftruncate(self._fd, offset)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.close(self._fd)
                    self._fd = None
                raise OutputUnwritable(f"cannot write the journal {self.path}: {exc.strerror or exc}") from exc
        return offset

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable record in file order; unreadable (torn) lines are counted and skipped."""
        for _, record in self._records_with_offsets():
            yield record

    def _records_with_offsets(self) -> Iterator[tuple[int, dict[str, Any]]]:
        self.skipped_lines = 0
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            offset = 0
            for raw in handle:
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                record = _parse_line(raw)
                if record is None:
                    self.skipped_lines += 1
                    continue
                yield start, record

    def load(self) -> dict[str, dict[str, Any]]:
        """The last record per id (a later attempt supersedes an earlier one)."""
        return {record["id"]: record for record in self.records()}

    def index(self) -> JournalIndex:
        """The last record per id as a :class:`JournalIndex`: small entries in memory, records on disk."""
        index = JournalIndex(self.path)
        for offset, record in self._records_with_offsets():
            index.note(record, offset)
        return index

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw.decode("utf-8", "surrogatepass"))
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        return None
    return record


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """What a run keeps in memory per journaled item: enough to decide resume and the budget."""

    offset: int  # where the item's last record starts in journal.jsonl
    status: str
    content_hash: str
    est_cost: float | None

    def as_record(self) -> dict[str, Any]:
        """The fields :func:`needs_run` reads."""
        return {"status": self.status, "content_hash": self.content_hash}


class JournalIndex(Mapping[str, dict[str, Any]]):
    """id -> last journal record, holding only a :class:`JournalEntry` per id in memory.

    Records (transcripts, usage, ...) stay in the journal file and are read back on demand, so a run's
    memory does not grow with the size of its results. Reads are safe from another thread while the
    event loop appends (each read opens the file; appended lines never move).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, JournalEntry] = {}

    def note(self, record: Mapping[str, Any], offset: int) -> None:
        est = record.get("est_cost")
        self.entries[str(record["id"])] = JournalEntry(
            offset=offset,
            status=sys.intern(str(record.get("status") or "")),
            content_hash=str(record.get("content_hash") or ""),
            est_cost=None if est is None else float(est),
        )

    def __getitem__(self, item_id: str) -> dict[str, Any]:
        entry = self.entries[item_id]
        with self.path.open("rb") as handle:
            handle.seek(entry.offset)
            record = _parse_line(handle.readline())
        if record is None or record["id"] != item_id:
            raise KeyError(item_id)
        return record

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


# ----------------------------------------------------------------------------- results.parquet


def passthrough_names(passthrough_columns: Iterable[str], reserved: Iterable[str] = ()) -> dict[str, str]:
    """Manifest column -> results column; a name taken by a result column (or a ``reserved`` one, such as
    the ``extract_*`` columns) gets the ``manifest_`` prefix."""
    taken = {c.lower() for c in (*RESULT_COLUMNS, *reserved)}
    names: dict[str, str] = {}
    for column in passthrough_columns:
        name = column
        while name.lower() in taken:
            name = PASSTHROUGH_PREFIX + name
        taken.add(name.lower())
        names[column] = name
    return names


def results_schema(passthrough_columns: Iterable[str], extraction: Extraction | None = None) -> pa.Schema:
    """:data:`RESULT_SCHEMA` extended with the typed ``extract_*`` columns of ``--extract`` (when given),
    then one string column per passthrough column."""
    schema = RESULT_SCHEMA
    reserved: list[str] = []
    if extraction is not None:
        for extract_field in extraction.fields:
            schema = schema.append(extract_field)
        reserved = extraction.columns
    for name in passthrough_names(passthrough_columns, reserved).values():
        schema = schema.append(pa.field(name, pa.string()))
    return schema


def passthrough_text(value: Any) -> str | None:
    """A passthrough cell as the results store it: text as is, other JSON values as JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _converter(kind: pa.DataType) -> Callable[[Any], Any]:
    """A lenient converter to ``kind`` for one value of a hand-edited journal: what cannot be read is null."""
    if pa.types.is_int64(kind):
        convert: Callable[[Any], Any] = int
    elif pa.types.is_float64(kind):
        convert = float
    elif pa.types.is_timestamp(kind):
        convert = lambda v: datetime.fromisoformat(v) if isinstance(v, str) else v  # noqa: E731
    elif pa.types.is_struct(kind):
        fields = {f.name: _converter(f.type) for f in kind}
        convert = lambda v: {n: (None if v.get(n) is None else c(v.get(n))) for n, c in fields.items()}  # noqa: E731
    elif pa.types.is_list(kind):
        element = _converter(kind.value_type)

        def convert(v: Any) -> Any:
            if isinstance(v, str):  # a list written as JSON text, or a lone value
                try:
                    v = json.loads(v)
                except ValueError:
                    v = [v]
            if not isinstance(v, list):
                v = [v]
            struct = pa.types.is_struct(kind.value_type)
            return [element(x) for x in v if x is not None and (isinstance(x, dict) or not struct)]
    else:
        convert = str

    def lenient(value: Any) -> Any:
        try:
            return convert(value)
        except (TypeError, ValueError, AttributeError):
            return None

    return lenient


_CONVERTERS: dict[str, Callable[[Any], Any]] = {f.name: _converter(f.type) for f in RESULT_SCHEMA}
_TIMESTAMP_COLUMNS = ("started_at", "finished_at")
_LIST_COLUMNS = tuple(f.name for f in RESULT_SCHEMA if pa.types.is_list(f.type))


def _to_batch(columns: dict[str, list[Any]], schema: pa.Schema) -> pa.RecordBatch:
    """Columns as a record batch; values of the wrong Python type (a hand-edited journal) are converted."""
    for name in _TIMESTAMP_COLUMNS:  # the journal keeps them as ISO 8601 text
        columns[name] = [None if v is None else _CONVERTERS[name](v) for v in columns[name]]
    for name in _LIST_COLUMNS:  # absent in journals of older versions and in pending rows: empty, not null
        columns[name] = [[] if v is None else v for v in columns[name]]
    try:
        return pa.RecordBatch.from_pydict(columns, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        for name, convert in _CONVERTERS.items():
            columns[name] = [None if v is None else convert(v) for v in columns[name]]
        return pa.RecordBatch.from_pydict(columns, schema=schema)


def _row_for(item: Item, record: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # A record written for other content under this id (the row or its files changed) is not this
    # item's result: the item shows as pending.
    if record is None or (record.get("content_hash") and record.get("content_hash") != item.content_hash):
        return {
            "status": STATUS_PENDING,
            "model": item.model,
            "voice": item.voice,
            "modalities": ",".join(item.modalities) if item.modalities else None,
            "image_count": len(item.images),
            "content_hash": item.content_hash,
        }
    return record


def write_results(
    out_dir: Path,
    manifest_items: Iterable[Item],
    journal_rows: Mapping[str, Mapping[str, Any]],
    passthrough_columns: list[str],
    *,
    on_row: Callable[[Mapping[str, Any]], None] | None = None,
    extraction: Extraction | None = None,
) -> Path:
    """Write ``OUT/results.parquet``: one row per manifest item, in manifest order, atomically.

    Items without a current journal record appear as ``pending``. Streams in batches of 10,000 rows.
    ``on_row`` sees every row written (e.g. a :class:`Totals` for the summary). With ``extraction``
    (``--extract``), a row's ``extracted_arguments`` of that tool fill its typed ``extract_*`` columns.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / RESULTS_NAME
    schema = results_schema(passthrough_columns, extraction)
    names = passthrough_names(passthrough_columns, extraction.columns if extraction is not None else ())
    fd, temp = tempfile.mkstemp(dir=out_dir, prefix=f".{RESULTS_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = pq.ParquetWriter(handle, schema)
            try:
                columns: dict[str, list[Any]] = {name: [] for name in schema.names}
                for item in manifest_items:
                    record = _row_for(item, journal_rows.get(item.id))
                    if on_row is not None:
                        on_row(record)
                    for column in RESULT_COLUMNS:
                        columns[column].append(record.get(column))
                    columns["id"][-1] = item.id
                    columns["row"][-1] = item.row
                    if extraction is not None:
                        mine = record.get("extracted_tool") == extraction.tool
                        values = extraction.values(record.get("extracted_arguments") if mine else None)
                        for column, value in zip(extraction.columns, values, strict=True):
                            columns[column].append(value)
                    for source, name in names.items():
                        columns[name].append(passthrough_text(item.passthrough.get(source)))
                    if len(columns["id"]) >= WRITE_BATCH_ROWS:
                        writer.write_batch(_to_batch(columns, schema))
                        columns = {name: [] for name in schema.names}
                if columns["id"]:
                    writer.write_batch(_to_batch(columns, schema))
            finally:
                writer.close()
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(out_dir)
    return target


# ----------------------------------------------------------------------------- summary.json

_TOKEN_COLUMNS: tuple[str, ...] = (
    *(c for c in RESULT_COLUMNS if c.startswith(("est_", "usage_")) and c.endswith("_tokens")),
    "failed_attempt_tokens",
)


class Totals:
    """Counts by status, token totals (estimated and reported, by modality), cost, failures by type,
    added up one row at a time (:meth:`add`), so a summary never needs all rows in memory.

    Token and cost sums skip missing values; ``cost`` sums the rows that have one, by currency.
    """

    def __init__(self) -> None:
        self.items = 0
        self.by_status: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.tokens: dict[str, int] = dict.fromkeys(_TOKEN_COLUMNS, 0)
        self.est_cost: dict[str, float] = {}
        self.cost: dict[str, float] = {}
        self.cost_basis: Counter[str] = Counter()
        self.seconds = {"input_audio_seconds": 0.0, "output_audio_seconds": 0.0}

    def add(self, row: Mapping[str, Any]) -> None:
        self.items += 1
        status = str(row.get("status") or STATUS_PENDING)
        self.by_status[status] += 1
        if status == STATUS_FAILED:
            self.failures[str(row.get("error_type") or "unknown")] += 1
        for column in _TOKEN_COLUMNS:
            self.tokens[column] += int(row.get(column) or 0)
        for column in self.seconds:
            self.seconds[column] += float(row.get(column) or 0.0)
        currency = str(row.get("currency") or "")
        if row.get("est_cost") is not None:
            self.est_cost[currency] = self.est_cost.get(currency, 0.0) + float(row["est_cost"])
        if row.get("cost") is not None:
            self.cost[currency] = self.cost.get(currency, 0.0) + float(row["cost"])
            self.cost_basis[str(row.get("cost_basis") or "unknown")] += 1

    def result(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "by_status": {s: self.by_status.get(s, 0) for s in STATUSES} | dict(self.by_status),
            "failures_by_type": dict(self.failures.most_common()),
            "tokens": self.tokens,
            "estimated_cost": {k: round(v, 6) for k, v in self.est_cost.items()},
            "cost": {k: round(v, 6) for k, v in self.cost.items()},
            "cost_rows_by_basis": dict(self.cost_basis),
            "input_audio_seconds": round(self.seconds["input_audio_seconds"], 3),
            "output_audio_seconds": round(self.seconds["output_audio_seconds"], 3),
        }


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The :class:`Totals` of ``rows``."""
    totals = Totals()
    for row in rows:
        totals.add(row)
    return totals.result()


def write_summary(out_dir: Path, summary: Mapping[str, Any]) -> Path:
    """Atomically write ``OUT/summary.json`` (pretty-printed, UTF-8)."""
    target = Path(out_dir) / SUMMARY_NAME
    text = json.dumps(summary, ensure_ascii=False, indent=2, default=str) + "\n"
    atomic_write_bytes(target, text.encode("utf-8", "surrogatepass"))
    return target
