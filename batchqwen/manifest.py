"""Manifests in: CSV, TSV, JSON Lines and Parquet, streamed row by row into :class:`~batchqwen.items.Item`.

Nothing here ever holds a whole manifest in memory: CSV goes through the ``csv`` module over the open
file, JSON Lines line by line, Parquet batch by batch (``ParquetFile.iter_batches``). ``check_manifest``
makes one streaming pass keeping only a 64-bit hash and a row number per id (16 bytes a row).

Row numbers (``Item.row``, and "row N" in every message) are 1-based:

* CSV/TSV: the data record, header not counted (spreadsheet row N+1); blank records still count.
* JSON Lines: the physical line number (blank lines count, so it matches an editor).
* Parquet: the row index + 1.

A row whose cells are all empty is skipped (a blank spreadsheet line is not an item). A row with no input
(none of audio/image/video/prompt) *is* an item: it is that row's error at run time
(:func:`validate_item`) and ``check_manifest`` lists it, but it does not stop the run. The same holds for
a file a row names that does not exist. What stops the run before any session opens is a manifest that is
unusable as a whole: missing/unreadable file, unknown extension, no rows, no input column at all, a
malformed row (bad JSON, wrong cell type, too many cells), duplicate ids (:class:`ManifestError`).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import logging
import math
import os
import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from batchqwen.errors import InputFileError, ItemError, ManifestError, MediaRefused
from batchqwen.items import Item, TurnSpec
from batchqwen.storage.locations import Base, Remote, base_for, resolve_media

log = logging.getLogger("batchqwen")

KNOWN_COLUMNS: tuple[str, ...] = (
    "id", "audio", "image", "video", "prompt", "instructions", "model", "voice", "modalities",
    "target_language", "source_language", "turns", "tools",
)  # fmt: skip
INPUT_COLUMNS: tuple[str, ...] = ("audio", "image", "video", "prompt", "turns")
#: the keys a turn of the ``turns`` column may have (``images`` is taken for ``image``)
TURN_KEYS: tuple[str, ...] = ("audio", "image", "video", "prompt")
PATH_COLUMNS: tuple[str, ...] = ("audio", "image", "video")
FORMATS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
PARQUET_BATCH_ROWS = 4_096
MAX_LISTED = 20  # rows named in a summary's lists; counts stay exact
_CSV_FIELD_LIMIT = 64 * 1024 * 1024  # long prompts: the csv module's default cap is 128 KiB a cell
DELIMITERS: dict[str, str] = {",": "comma", ";": "semicolon", "\t": "tab"}  # what detection chooses from
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")  # pandas' index, written as a column by to_parquet

RawRow = dict[str, Any]  # normalised column name -> cell value (None when empty)


@dataclass(frozen=True)
class ManifestOptions:
    """How a manifest is read beyond its file: the CSV delimiter, and where it came from.

    ``origin`` is the URL a manifest was downloaded from (the file at hand is its local copy): relative
    media paths resolve against that URL's folder, and local files are refused unless
    ``allow_local_media`` (see :mod:`batchqwen.storage.locations`).
    """

    delimiter: str | None = None  # None: detected from the header (comma, semicolon or tab)
    origin: str | None = None
    allow_local_media: bool = False

    def base(self, path: Path) -> Base:
        return base_for(path, self.origin, allow_local_media=self.allow_local_media)

    def shown(self, path: Path) -> str:
        """The manifest as messages name it: its URL when it came from one."""
        return str(Remote(self.origin)) if self.origin else str(path)


_DEFAULT_OPTIONS = ManifestOptions()


@dataclass(frozen=True)
class ManifestSummary:
    """What one streaming pass over a manifest found; enough for a dry run and for the results schema."""

    path: Path
    format: str
    rows: int  # items (non-blank rows)
    columns: list[str]  # known columns present (normalised names), then passthrough columns
    passthrough_columns: list[str]
    rows_with_missing_files: int = 0
    missing_file_examples: list[tuple[int, Path]] = field(default_factory=list)  # first few (row, path)
    rows_without_input: list[int] = field(default_factory=list)  # first few row numbers
    rows_without_input_count: int = 0
    #: rows naming a video, an image or audio other than WAV: what decoding in worker processes repays
    rows_with_compressed_media: int = 0


# ----------------------------------------------------------------------------- reading raw rows


def manifest_format(path: Path) -> str:
    """``csv``, ``tsv``, ``jsonl`` or ``parquet`` from the file extension; ManifestError otherwise."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        accepted = ", ".join(sorted(FORMATS))
        raise ManifestError(f"{path}: unknown manifest type {path.suffix or '(no extension)'!r}; use {accepted}")
    return fmt


def _where(fmt: str, number: int) -> str:
    return f"line {number}" if fmt == "jsonl" else f"row {number}"


def _normalise_name(name: str) -> str:
    """Known columns match case-insensitively and trimmed; passthrough names keep their case, trimmed."""
    trimmed = name.strip()
    return trimmed.lower() if trimmed.lower() in KNOWN_COLUMNS else trimmed


def _normalise_header(names: list[str], where: str) -> list[str]:
    normalised = [_normalise_name(n) for n in names]
    seen: dict[str, int] = {}
    for position, name in enumerate(normalised, 1):
        if not name:
            continue
        if name in seen:
            raise ManifestError(f"{where}: column {name!r} appears twice (columns {seen[name]} and {position})")
        seen[name] = position
    return normalised


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, float):
        return math.isnan(value)  # pandas writes missing numbers as NaN
    return isinstance(value, list | tuple | dict) and not value


def _open_check(path: Path) -> None:
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist")
    if not path.is_file():
        raise ManifestError(f"manifest {path} is not a file")
    if not os.access(path, os.R_OK):
        raise ManifestError(f"manifest {path} is not readable")


def _decoded_lines(handle: IO[bytes], lines: list[int]) -> Iterator[str]:
    """UTF-8 lines for the csv module, decoded one by one so a bad byte is blamed on the right row;
    ``lines[0]`` is the number of the line being read."""
    for number, raw in enumerate(handle, 1):
        lines[0] = number
        line = raw.decode("utf-8")
        yield line.removeprefix("\ufeff") if number == 1 else line  # spreadsheets write a BOM


def detect_delimiter(header_line: str) -> str:
    """The delimiter of a CSV header line: whichever of comma, semicolon and tab it holds most of, outside
    quotes (spreadsheets in many locales write semicolons); a comma when it holds none."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in header_line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _header_line(path: Path) -> str:
    with path.open("rb") as handle:
        raw = handle.readline(1 << 20)
    return raw.decode("utf-8", "replace").removeprefix("\ufeff")


def _shown_cells(cells: list[str], most: int = 8) -> str:
    shown = ", ".join(repr(c if len(c) <= 40 else c[:39] + "…") for c in cells[:most])
    return shown + (f", … ({len(cells) - most} more)" if len(cells) > most else "")


def _iter_csv(path: Path, delimiter: str | None) -> Iterator[tuple[int, RawRow]]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    number = 0
    line = [0]
    try:
        if delimiter is None:
            delimiter = detect_delimiter(_header_line(path))
        with path.open("rb") as handle:
            reader = csv.reader(_decoded_lines(handle, line), delimiter=delimiter)
            header_cells = next(reader, None)
            if header_cells is None:
                raise ManifestError(f"manifest {path} is empty (no header row)")
            header = _normalise_header(header_cells, f"{path.name}: header")
            for cells in reader:
                number += 1
                if len(cells) > len(header) and not any(c.strip() for c in cells[len(header) :]):
                    cells = cells[: len(header)]  # trailing empty cells, as spreadsheets write them
                if len(cells) > len(header):
                    named = ", ".join(n for n in header if n)
                    raise ManifestError(
                        f"{path.name}: row {number} has {len(cells)} cells but the header has {len(header)} "
                        f"columns ({named}; delimiter {DELIMITERS.get(delimiter, repr(delimiter))}): found "
                        f"{_shown_cells(cells)}"
                    )
                row: RawRow = {}
                for position, (name, cell) in enumerate(zip(header, cells, strict=False), 1):
                    value = None if _is_empty(cell) else cell
                    if not name:
                        if value is not None:
                            raise ManifestError(
                                f"{path.name}: row {number} has a value in column {position}, "
                                "which has no name in the header"
                            )
                        continue
                    row[name] = value
                for name in header[len(cells) :]:
                    if name:
                        row[name] = None  # short rows: trailing cells left out means empty
                yield number, row
    except UnicodeDecodeError as exc:
        where = "the header (line 1)" if line[0] <= 1 else f"row {number + 1} (line {line[0]})"
        raise ManifestError(f"{path.name}: {where} is not valid UTF-8 ({exc.reason})") from None
    except csv.Error as exc:
        raise ManifestError(f"{path.name}: row {number + 1} cannot be parsed as CSV: {exc}") from None
    except OSError as exc:
        raise ManifestError(f"manifest {path} cannot be read: {exc}") from None


def _iter_jsonl(path: Path) -> Iterator[tuple[int, RawRow]]:
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ManifestError(f"{path.name}: line {number} is not valid UTF-8 ({exc.reason})") from None
                if number == 1:
                    text = text.removeprefix("\ufeff")
                if not text.strip():
                    continue
                try:
                    data = json.loads(text)
                except ValueError as exc:
                    raise ManifestError(f"{path.name}: line {number} is not valid JSON: {exc}") from None
                if not isinstance(data, dict):
                    raise ManifestError(f"{path.name}: line {number} is a JSON {type(data).__name__}, not an object")
                names = _normalise_header([str(k) for k in data], f"{path.name}: line {number}")
                yield number, dict(zip(names, data.values(), strict=True))
    except OSError as exc:
        raise ManifestError(f"manifest {path} cannot be read: {exc}") from None


def _parquet_file(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(f"manifest {path} is not a readable Parquet file: {exc}") from None


def _iter_parquet(path: Path) -> Iterator[tuple[int, RawRow]]:
    import pyarrow as pa

    parquet = _parquet_file(path)
    all_names = list(parquet.schema_arrow.names)
    kept = [i for i, name in enumerate(all_names) if not _PANDAS_INDEX.fullmatch(name)]  # not a column of data
    names = _normalise_header([all_names[i] for i in kept], f"{path.name}: schema")
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[all_names[i] for i in kept]):
            columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            for values in zip(*columns, strict=True):
                number += 1
                yield number, dict(zip(names, values, strict=True))
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(f"{path.name}: row {number + 1} cannot be read: {exc}") from None


def _iter_raw(path: Path, fmt: str, delimiter: str | None = None) -> Iterator[tuple[int, RawRow]]:
    if fmt == "csv":
        return _iter_csv(path, delimiter)
    if fmt == "tsv":
        return _iter_csv(path, delimiter or "\t")
    if fmt == "jsonl":
        return _iter_jsonl(path)
    return _iter_parquet(path)


# ----------------------------------------------------------------------------- raw row -> Item


def _passthrough_value(value: Any) -> Any:
    """JSON scalars (and lists/objects from JSONL) as they are; anything else (dates, decimals) as text."""
    if _is_empty(value):
        return None
    if isinstance(value, str | int | float | bool | list | dict):
        return value
    return str(value)


def _text(value: Any, column: str, where: str, *, strip: bool = True) -> str | None:
    if _is_empty(value):
        return None
    if not isinstance(value, str):
        raise ManifestError(f"{where}: column {column!r} must be text, not {type(value).__name__} ({value!r})")
    return value.strip() if strip else value


def _id_text(value: Any, where: str) -> str | None:
    if _is_empty(value):
        return None
    if isinstance(value, bool):
        raise ManifestError(f"{where}: column 'id' must be text or an integer, not a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # an integer id column that went through pandas with a NaN in it
    if not isinstance(value, str | int):
        raise ManifestError(f"{where}: column 'id' must be text or an integer, not {type(value).__name__}")
    text = str(value).strip()
    return text or None


def _list_of_text(value: Any, column: str, where: str, separator: str) -> list[str]:
    """A ``;``-separated (or ``,``) cell, or a JSON/Parquet list of strings, as trimmed non-empty parts."""
    if _is_empty(value):
        return []
    if isinstance(value, str):
        parts = value.split(separator)
    elif isinstance(value, list | tuple) and all(isinstance(v, str) or v is None for v in value):
        parts = [v for v in value if v is not None]
    else:
        raise ManifestError(f"{where}: column {column!r} must be text or a list of text, not {type(value).__name__}")
    return [p.strip() for p in parts if p.strip()]


def _turns(value: Any, where: str) -> list[dict[str, Any]]:
    """The ``turns`` cell: a JSON list (text in CSV, a list in JSONL/Parquet) of objects with audio,
    image (one or a list), video and prompt, each trimmed like the row's own columns."""
    if _is_empty(value):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ManifestError(f"{where}: column 'turns' is not a JSON list: {exc}") from None
    if not isinstance(value, list | tuple):
        raise ManifestError(f"{where}: column 'turns' must be a JSON list of turns, not {type(value).__name__}")
    turns = []
    for number, turn in enumerate(value, 1):
        if not isinstance(turn, dict):
            raise ManifestError(f"{where}: turn {number} must be an object with audio/image/video/prompt")
        turn = {("image" if k == "images" else str(k)): v for k, v in turn.items()}
        unknown = sorted(set(turn) - set(TURN_KEYS))
        if unknown:
            raise ManifestError(
                f"{where}: turn {number} has {', '.join(map(repr, unknown))}; a turn takes {', '.join(TURN_KEYS)}"
            )
        turn_where = f"{where}, turn {number}"
        turns.append(
            {
                "audio": _text(turn.get("audio"), "audio", turn_where),
                "image": _list_of_text(turn.get("image"), "image", turn_where, ";"),
                "video": _text(turn.get("video"), "video", turn_where),
                "prompt": _text(turn.get("prompt"), "prompt", turn_where, strip=False),
            }
        )
    return turns


def _resolve(base: Base, given: str, refused: list[str]) -> Path | Remote | None:
    """The cell as a location; None (and the reason in ``refused``) for a file the row may not name."""
    try:
        return resolve_media(given, base)
    except MediaRefused as exc:
        refused.append(str(exc))
        return None


def _resolve_local(base: Base, given: str, refused: list[str]) -> Path | None:
    """A conversation turn's media cell: local files only for now (trust rules as for the row's own)."""
    where = _resolve(base, given, refused)
    if isinstance(where, Remote):
        refused.append(f"{where}: media in a bucket or behind a URL are not supported in conversation turns yet")
        return None
    return where


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _as_hash_text(value: Any) -> str:
    """Cell text for hashing, so that 5 in JSONL and "5" in CSV hash alike."""
    return value if isinstance(value, str) else _canonical(value)


def _file_stamp(path: Path | Remote) -> list[int] | str:
    if isinstance(path, Remote):
        return "remote"  # not stat'ed while reading the manifest: the URL (in the cells) stands for it
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return [stat.st_size, stat.st_mtime_ns]


def derive_id(content: dict[str, Any]) -> str:
    """A stable id for a row without one: ``row-`` + 12 hex of the sha256 of its non-empty cells."""
    return "row-" + hashlib.sha256(_canonical(content).encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _to_item(number: int, raw: RawRow, base: Base, where: str, *, with_hash: bool = True) -> Item | None:
    """One raw row as an Item; None for a row whose cells are all empty. ``with_hash`` False leaves the
    content hash empty (it stats every file; the dry run does not need it)."""
    item_id = _id_text(raw.get("id"), where)
    audio = _text(raw.get("audio"), "audio", where)
    images = _list_of_text(raw.get("image"), "image", where, ";")
    video = _text(raw.get("video"), "video", where)
    prompt = _text(raw.get("prompt"), "prompt", where, strip=False)
    instructions = _text(raw.get("instructions"), "instructions", where, strip=False)
    model = _text(raw.get("model"), "model", where)
    voice = _text(raw.get("voice"), "voice", where)
    modalities = _list_of_text(raw.get("modalities"), "modalities", where, ",")
    target_language = _text(raw.get("target_language"), "target_language", where)
    source_language = _text(raw.get("source_language"), "source_language", where)
    turns = _turns(raw.get("turns"), where)
    tools = _list_of_text(raw.get("tools"), "tools", where, ";") if not _is_empty(raw.get("tools")) else None
    passthrough = {k: _passthrough_value(v) for k, v in raw.items() if k not in KNOWN_COLUMNS}

    # The row's content as written (paths as given, not resolved): moving the job folder keeps the ids.
    content: dict[str, Any] = {
        "audio": audio, "image": images or None, "video": video, "prompt": prompt,
        "instructions": instructions, "model": model, "voice": voice, "modalities": modalities or None,
        "target_language": target_language, "source_language": source_language,
        "turns": [{k: v for k, v in t.items() if v} for t in turns] or None, "tools": tools,
    }  # fmt: skip
    content.update({f"+{k}": _as_hash_text(v) for k, v in passthrough.items() if v is not None})
    content = {k: v for k, v in content.items() if v is not None}
    if not content and item_id is None:
        return None
    if item_id is None:
        item_id = derive_id(content)

    refused: list[str] = []
    audio_path = _resolve(base, audio, refused) if audio else None
    image_paths = tuple(p for p in (_resolve(base, i, refused) for i in images) if p is not None)
    video_path = _resolve(base, video, refused) if video else None
    turn_specs = tuple(
        TurnSpec(
            audio=_resolve_local(base, t["audio"], refused) if t["audio"] else None,
            images=tuple(p for p in (_resolve_local(base, i, refused) for i in t["image"]) if p is not None),
            video=_resolve_local(base, t["video"], refused) if t["video"] else None,
            prompt=t["prompt"],
        )
        for t in turns
    )
    turn_files = [p for t in turn_specs for p in (t.audio, *t.images, t.video) if p is not None]
    files = [p for p in (audio_path, *image_paths, video_path, *turn_files) if p is not None]
    content_hash = ""
    if with_hash:
        stamped = {"id": item_id, "cells": content, "files": [_file_stamp(p) for p in files]}
        content_hash = hashlib.sha256(_canonical(stamped).encode("utf-8", "surrogatepass")).hexdigest()
    return Item(
        id=item_id,
        row=number,
        audio=audio_path,
        images=image_paths,
        video=video_path,
        prompt=prompt,
        instructions=instructions,
        model=model,
        voice=voice,
        modalities=tuple(modalities) or None,
        target_language=target_language,
        source_language=source_language,
        passthrough=passthrough,
        content_hash=content_hash,
        refused=tuple(refused),
        turns=turn_specs,
        tools=tuple(tools) if tools is not None else None,
    )


def iter_items(
    path: Path, *, limit: int | None = None, with_hash: bool = True, options: ManifestOptions | None = None
) -> Iterator[Item]:
    """Stream a manifest's rows as Items, in manifest order, at most ``limit`` of them.

    Raises ManifestError (naming the row or line) for a manifest that cannot be read or a malformed row.
    Missing files and rows without input are *not* raised here: see :func:`validate_item`.
    """
    path = Path(path)
    options = options or _DEFAULT_OPTIONS
    fmt = manifest_format(path)
    _open_check(path)
    base = options.base(path)
    produced = 0
    if limit is not None and limit <= 0:
        return
    for number, raw in _iter_raw(path, fmt, options.delimiter):
        item = _to_item(number, raw, base, f"{path.name}: {_where(fmt, number)}", with_hash=with_hash)
        if item is None:
            continue
        yield item
        produced += 1
        if limit is not None and produced >= limit:
            return


@dataclass(frozen=True)
class RawRows:
    """Where raw rows come from, so that another process can turn them into Items (:func:`items_of`)."""

    name: str  # the manifest's file name, for messages
    fmt: str
    base: Base  # relative paths resolve against its folder; what the manifest may name


def iter_raw_rows(
    path: Path, *, options: ManifestOptions | None = None
) -> tuple[RawRows, Iterator[tuple[int, RawRow]]]:
    """The manifest's rows, parsed but not yet Items: cheap to read, to be turned into Items elsewhere."""
    path = Path(path)
    options = options or _DEFAULT_OPTIONS
    fmt = manifest_format(path)
    _open_check(path)
    return RawRows(path.name, fmt, options.base(path)), _iter_raw(path, fmt, options.delimiter)


def items_of(source: RawRows, rows: Iterable[tuple[int, RawRow]], *, with_hash: bool = True) -> list[Item]:
    """Items of raw rows (blank rows dropped), as :func:`iter_items` makes them."""
    made = (
        _to_item(number, raw, source.base, f"{source.name}: {_where(source.fmt, number)}", with_hash=with_hash)
        for number, raw in rows
    )
    return [item for item in made if item is not None]


# ----------------------------------------------------------------------------- per-row checks


def item_files(item: Item) -> list[Path]:
    """Every local file the item names, in column order (audio, images, video, then each turn's); remote
    ones are not."""
    turn_files = [p for t in item.turns for p in (t.audio, *t.images, t.video)]
    return [p for p in (item.audio, *item.images, item.video, *turn_files) if isinstance(p, Path)]


def missing_files(item: Item) -> list[Path]:
    """The local files an item names that are not there as readable regular files (remote files are
    checked when they are fetched)."""
    return [p for p in item_files(item) if not (p.is_file() and os.access(p, os.R_OK))]


def has_input(item: Item) -> bool:
    """Whether the row gives the model anything at all (audio, image, video, prompt or turns)."""
    return bool(item.audio or item.images or item.video or item.prompt or item.turns or item.refused)


def validate_item(item: Item) -> None:
    """Raise the row's own error: MediaRefused for a file it may not name, ItemError when it has no input
    (or a turn has none, or the row mixes turns with inputs of its own), InputFileError for a missing file."""
    if item.refused:
        raise MediaRefused(f"row {item.row} (id {item.id!r}): " + "; ".join(item.refused))
    if not has_input(item):
        raise ItemError(f"row {item.row} (id {item.id!r}) has no input: none of audio, image, video, prompt")
    if item.turns and (item.audio or item.images or item.video or item.prompt):
        raise ItemError(
            f"row {item.row} (id {item.id!r}) has turns and audio/image/video/prompt of its own:"
            " put every input in a turn"
        )
    for number, turn in enumerate(item.turns, 1):
        if not (turn.audio or turn.images or turn.video or turn.prompt):
            raise ItemError(f"row {item.row} (id {item.id!r}): turn {number} has no audio, image, video or prompt")
    missing = missing_files(item)
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise InputFileError(f"row {item.row} (id {item.id!r}): file not found or unreadable: {names}")


# ----------------------------------------------------------------------------- whole-manifest check


def _id_key(item_id: str) -> int:
    digest = hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _colliding_keys(keys: array[int], *, most: int = 50) -> set[int]:
    """The id hashes that occur more than once (numpy, sorted in place: 8 bytes a row, no ids kept)."""
    import numpy as np

    key_arr = np.frombuffer(keys, dtype=np.uint64)
    key_arr.sort()  # in place: the hashes are not needed in row order
    repeated = np.unique(key_arr[1:][key_arr[1:] == key_arr[:-1]])
    return {int(key) for key in repeated[:most]}


def _rows_list(rows: list[int]) -> str:
    if len(rows) == 2:
        return f"rows {rows[0]} and {rows[1]}"
    shown = ", ".join(str(r) for r in rows[:-1][:10])
    more = f", ... ({len(rows) - 11} more)" if len(rows) > 11 else ""
    return f"rows {shown}{more} and {rows[-1]}"


def _duplicate_ids(path: Path, colliding: set[int], options: ManifestOptions) -> list[tuple[str, list[int]]]:
    """Second pass, only when hashes collide: the real ids of the rows with those hashes, by id."""
    by_id: dict[str, list[int]] = {}
    for item in iter_items(path, with_hash=False, options=options):
        if _id_key(item.id) in colliding:
            by_id.setdefault(item.id, []).append(item.row)
    return [(item_id, rows) for item_id, rows in by_id.items() if len(rows) > 1]


def _duplicate_error(path: Path, duplicates: list[tuple[str, list[int]]]) -> ManifestError:
    lines = [f"id {item_id!r} appears on {_rows_list(rows)}" for item_id, rows in duplicates[:5]]
    if len(duplicates) > 5:
        lines.append(f"and {len(duplicates) - 5} more duplicated ids")
    hint = ""
    if any(item_id.startswith("row-") for item_id, _ in duplicates):
        hint = " (a row without an id gets one derived from its content, so identical rows collide: add an id column)"
    return ManifestError(f"{path.name}: duplicate ids: " + "; ".join(lines) + hint)


def _column_hints(columns: list[str]) -> list[str]:
    """For columns that match no known column but look like one: "'Audio File' (did you mean 'audio'?)"."""
    hints = []
    for column in columns:
        if column in KNOWN_COLUMNS:
            continue
        simple = re.sub(r"[^a-z]", "", column.lower())
        close = difflib.get_close_matches(simple, KNOWN_COLUMNS, n=1, cutoff=0.75)
        close = close or [k for k in KNOWN_COLUMNS if len(k) > 3 and simple.startswith(k)]
        if close:
            hints.append(f"{column!r} (did you mean {close[0]!r}?)")
    return hints


def check_manifest(path: Path, *, options: ManifestOptions | None = None) -> ManifestSummary:
    """One streaming pass: raise ManifestError if the manifest is unusable as a whole, else summarise it.

    Memory stays bounded: per row only a 64-bit id hash is kept.
    """
    path = Path(path)
    options = options or _DEFAULT_OPTIONS
    fmt = manifest_format(path)
    _open_check(path)
    # Every CSV/Parquet row carries all named columns; JSONL lines may differ, so take the union.
    seen_columns: dict[str, None] = {}
    keys: array[int] = array("Q")
    count = 0
    missing_count = 0
    missing_examples: list[tuple[int, Path]] = []
    no_input: list[int] = []
    no_input_count = 0
    compressed = 0
    base = options.base(path)
    for number, raw in _iter_raw(path, fmt, options.delimiter):
        if fmt == "jsonl" or not seen_columns:
            seen_columns.update(dict.fromkeys(raw))
        item = _to_item(number, raw, base, f"{path.name}: {_where(fmt, number)}", with_hash=False)
        if item is None:
            continue
        count += 1
        keys.append(_id_key(item.id))
        if not has_input(item):
            no_input_count += 1
            if len(no_input) < MAX_LISTED:
                no_input.append(number)
        media = item_files(item)
        if item.video or any(t.video for t in item.turns) or any(p.suffix.lower() != ".wav" for p in media):
            compressed += 1
        missing = missing_files(item)
        if missing:
            missing_count += 1
            if len(missing_examples) < MAX_LISTED:
                missing_examples.append((number, missing[0]))

    all_columns = list(seen_columns)
    if count == 0:
        raise ManifestError(f"manifest {options.shown(path)} has no rows")
    hints = _column_hints(all_columns)
    if not any(c in all_columns for c in INPUT_COLUMNS):
        found = ", ".join(repr(c) for c in all_columns) or "none"
        hint = f"; {', '.join(hints)}" if hints else ""
        if fmt == "csv" and len(all_columns) == 1 and options.delimiter is None:
            hint += "; if the file uses another delimiter, pass --delimiter"
        raise ManifestError(
            f"{path.name}: no input column: need at least one of audio, image, video, prompt; no column "
            f"matches one (found: {found}){hint}"
        )
    for hint in hints:
        log.warning("%s: column %s matches no known column: passed through to the results as it is", path.name, hint)
    colliding = _colliding_keys(keys)
    duplicates = _duplicate_ids(path, colliding, options) if colliding else []
    if duplicates:
        raise _duplicate_error(path, duplicates)
    known = [c for c in KNOWN_COLUMNS if c in all_columns]
    passthrough = [c for c in all_columns if c not in KNOWN_COLUMNS]
    return ManifestSummary(
        path=path,
        format=fmt,
        rows=count,
        columns=known + passthrough,
        passthrough_columns=passthrough,
        rows_with_missing_files=missing_count,
        missing_file_examples=missing_examples,
        rows_without_input=no_input,
        rows_without_input_count=no_input_count,
        rows_with_compressed_media=compressed,
    )
