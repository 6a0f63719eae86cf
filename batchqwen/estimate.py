"""The offline dry run: tokens and money for a whole manifest, without any network access.

Items stream from the manifest into a small thread pool that probes their media from container
metadata (no decoding); results come back in manifest order, go to ``OUT/estimate.parquet`` in batches,
and only aggregates stay in memory, so a million-row manifest runs in flat memory.

Per item, the rules are those of the real run (see :func:`batchqwen.cost.estimate_tokens`):

* audio: the audio file's duration; else the video's audio track; else ``pad_silence_seconds`` of
  silence (the runner pads such items, because the service needs audio before images);
* images: each image's size after EXIF orientation, fitted as the runner sends it
  (:func:`batchqwen.media.fit_image_size`); video frames at ``video_fps`` (at most ``max_video_frames``)
  at the video's fitted frame size;
* text: the row's instructions (else the run's) and the prompt; on models without text input the prompt
  travels inside the instructions (``instructions + "\\n\\n" + prompt``), as the runner sends it; a
  model with text input given a prompt and no images/video gets no silence padding;
* output: from the :class:`~batchqwen.cost.OutputAssumption`;
* an item too long for one session (:mod:`batchqwen.split`): with ``split="auto"`` it counts as the
  sessions its segments will be (cut at the aims, as the run would before it finds the pauses: the
  same count; the instructions, prompt and answer once per segment), and is listed under "Too long for
  one session"; with ``split="never"`` it is a problem (the run fails it without sending anything).

Durations come from :mod:`batchqwen.probe` (the header where sound, else the file size, a packet scan or
a decode: the row's ``duration_method``); images follow the run's rules of :mod:`batchqwen.images` (tiles,
animated frames, the family's images a second); the row's ``notes`` say what was decided.

A row with a problem (missing file, unreadable media, unknown model or voice) is listed, counted and
left out of the totals; it never stops the estimate. A model with no known price has its tokens counted
and its cost reported as unknown (None), never as zero.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pyarrow as pa
import pyarrow.parquet as pq

from batchqwen import images as image_plan
from batchqwen.conversation import plan_conversation
from batchqwen.cost import (
    MODALITIES,
    ModelPrice,
    OutputAssumption,
    PriceBook,
    TokenEstimate,
    TurnInput,
    cost_breakdown,
    estimate_session_tokens,
    estimate_tokens,
)
from batchqwen.errors import BatchQwenError, InputTooLong
from batchqwen.images import ImageFrames
from batchqwen.items import INPUT_SAMPLE_RATE, Item
from batchqwen.manifest import ManifestOptions, RawRows, items_of, iter_raw_rows, validate_item
from batchqwen.media import (
    DEFAULT_MAX_VIDEO_FRAMES,
    image_times,
    measure_audio,
    part_sizes,
    probe_image_parts,
    probe_video,
    silence_note,
)
from batchqwen.models import image_tokens
from batchqwen.plan import ItemPlan, plan_item
from batchqwen.realtime.gateways import normalize_region
from batchqwen.split import SplitMode, plan_segments, session_budget
from batchqwen.storage.fetch import StorageOptions, shared_storage
from batchqwen.storage.locations import Remote
from batchqwen.tokens import text_tokens_exact
from batchqwen.tools import NO_TOOLS, ToolCatalog, offered_tools

ESTIMATE_FILE = "estimate.parquet"
ESTIMATE_SUMMARY = "estimate.json"  # the totals of the last estimate in OUT: the report compares a run with it
# Estimate rows go to Arrow 256 at a time and to Parquet 4,096 to a row group: on 1,000,000 rows the peak
# RSS is 1.05x a one-row estimate's (2,048-row groups built from Python lists: 1.11x; bench_estimate.py)
BATCH_ROWS = 256
ROW_GROUP_ROWS = 4_096
DICTIONARY_COLUMNS = ("model", "modalities", "currency", "problem", "duration_method")
MAX_PROBLEMS_KEPT = 20  # problems listed in the report; all are counted and all are in the Parquet file
DEFAULT_WORKERS = min(8, (os.cpu_count() or 2) * 2)  # probing is mostly waiting on file metadata
PROBE_CACHE_ENTRIES = 16_384  # file headers remembered (per process): rows sharing a file probe it once
PARALLEL_MIN_ROWS = 2_000  # from here on, one worker process per core repays its start-up (about 0.3 s)
PARALLEL_CHUNK_ROWS = 256  # raw rows sent to a worker process at a time
EARLY_BYTES_PER_ROW = 24  # early_workers: a manifest this many bytes a row or more is taken for a big one
_T = TypeVar("_T")

ESTIMATE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("row", pa.int64()),
        ("model", pa.string()),
        ("modalities", pa.string()),
        ("audio_seconds", pa.float64()),
        ("padded_silence_seconds", pa.float64()),
        ("image_count", pa.int64()),
        ("input_text_tokens", pa.int64()),
        ("input_audio_tokens", pa.int64()),
        ("input_image_tokens", pa.int64()),
        ("output_text_tokens", pa.int64()),
        ("output_audio_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        ("cost", pa.float64()),
        ("currency", pa.string()),
        ("price_known", pa.bool_()),
        ("problem", pa.string()),
        # how the audio's length was measured: header, file_size, packet_scan, decode (batchqwen.probe),
        # silence (padded), null (no audio); the fallbacks' bytes read; what the estimate decided
        ("duration_method", pa.string()),
        ("probe_bytes_read", pa.int64()),
        ("notes", pa.list_(pa.string())),
        ("segments", pa.int64()),
    ]
)


@dataclass(frozen=True)
class RowEstimate:
    """The estimate of one manifest row; ``tokens`` is None when the row has a problem."""

    id: str
    row: int
    model: str
    modalities: tuple[str, ...]
    audio_seconds: float = 0.0
    padded_silence_seconds: float = 0.0
    image_count: int = 0
    tokens: TokenEstimate | None = None
    problem: str | None = None
    duration_method: str | None = None  # see ESTIMATE_SCHEMA
    probe_bytes_read: int | None = None
    notes: tuple[str, ...] = ()
    segments: int = 1  # sessions the item will run as (more than one: too long for one session, split)
    too_long: str | None = None  # why one session cannot take it (the estimate and the limit), when split


@dataclass(frozen=True)
class Problem:
    """A row that could not be estimated, and why."""

    row: int
    id: str
    message: str


@dataclass
class ModelTotals:
    """Aggregates of one model: items, tokens and cost by modality (cost None when the price is unknown)."""

    model: str
    price: ModelPrice | None
    items: int = 0
    audio_seconds: float = 0.0
    images: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0))
    costs: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MODALITIES, 0.0))

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    @property
    def cost(self) -> float | None:
        return None if self.price is None else sum(self.costs.values())


@dataclass
class EstimateReport:
    """What a dry run found: aggregates by model and modality, problems, and where the rows went."""

    manifest: Path
    region: str
    currency: str
    price_source: str
    price_as_of: str
    output: OutputAssumption
    items: int = 0
    problem_count: int = 0
    problems: list[Problem] = field(default_factory=list)  # the first MAX_PROBLEMS_KEPT
    too_long_count: int = 0  # rows too long for one session, counted as the segments they will run as
    too_long: list[Problem] = field(default_factory=list)  # the first MAX_PROBLEMS_KEPT of them
    by_model: dict[str, ModelTotals] = field(default_factory=dict)
    parquet: Path | None = None
    elapsed_seconds: float = 0.0
    text_tokens_exact: bool = True
    tool_rounds: int | None = None  # --assume-tool-rounds, when the run offers tools
    price_url: str = ""
    #: with a calibrated output (estimate --calibrate-from): the p10 and p90 of the total cost
    cost_range: tuple[float, float] | None = None
    duration_fallbacks: int = 0  # rows whose audio length was not the header's (file size, packet scan, decode)

    @property
    def estimated_items(self) -> int:
        return self.items - self.problem_count

    @property
    def tokens(self) -> dict[str, int]:
        """Tokens by modality over all models."""
        return {m: sum(t.tokens[m] for t in self.by_model.values()) for m in MODALITIES}

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    @property
    def known_cost(self) -> float:
        """The cost of the items whose model has a known price."""
        return sum(t.cost or 0.0 for t in self.by_model.values())

    @property
    def unpriced_items(self) -> int:
        return sum(t.items for t in self.by_model.values() if t.price is None)

    @property
    def total_cost(self) -> float | None:
        """The whole cost, or None when some items' model has no known price."""
        return None if self.unpriced_items else self.known_cost


@dataclass(frozen=True)
class _Settings:
    default_model: str
    voice: str | None
    modalities: tuple[str, ...]
    instructions: str | None
    output: OutputAssumption
    pad_silence_seconds: float
    video_fps: float
    max_video_frames: int
    target_language: str | None = None
    source_language: str | None = None
    tools: ToolCatalog | None = None  # --tools: the declarations billed with every response
    tool_rounds: int = 1  # --assume-tool-rounds per turn
    extract: str | None = None
    image_frames: ImageFrames = "first"
    storage: StorageOptions | None = None  # how remote media are reached (None: the defaults)
    split: SplitMode = "auto"
    pace: float = 0.0


def estimate_item(
    item: Item,
    *,
    default_model: str,
    modalities: tuple[str, ...],
    instructions: str | None,
    output: OutputAssumption,
    pad_silence_seconds: float,
    video_fps: float = 1.0,
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
    voice: str | None = None,
    target_language: str | None = None,
    source_language: str | None = None,
    image_frames: ImageFrames = "first",
    split: SplitMode = "auto",
    pace: float = 0.0,
) -> RowEstimate:
    """Estimate one item from its media's metadata; a local problem becomes the row's ``problem``."""
    settings = _Settings(
        default_model,
        voice,
        modalities,
        instructions,
        output,
        pad_silence_seconds,
        video_fps,
        max_video_frames,
        target_language,
        source_language,
        image_frames=image_frames,
        split=split,
        pace=pace,
    )
    return _estimate_item(item, settings)


class ProbeCache:
    """What a file's header said, keyed by (probe, path, size, modification time), bounded (LRU).

    Rows that share a file probe it once: a thread that asks for a key another thread is probing waits
    for that probe instead of opening the file again; a probe that failed is remembered as failed.
    """

    def __init__(self, max_entries: int = PROBE_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[Any, ...], Future[Any] | _Settled] = OrderedDict()
        self._lock = threading.Lock()
        self.probes = 0  # probes actually run (files opened), for tests and the bench

    def get(
        self, path: Path | Remote, probe: Callable[..., _T], storage: StorageOptions | None = None, **options: Any
    ) -> _T:
        """What ``probe`` says of ``path``; a remote file is read by ranges (headers only), through
        ``storage``'s clients."""
        if isinstance(path, Remote):
            key: tuple[Any, ...] = (probe.__name__, path.url, tuple(sorted(options.items())))
            return self._cached(key, lambda: _probe_remote(path, probe, storage or StorageOptions(), options))
        try:
            stat = os.stat(path)
        except OSError:
            return probe(path, **options)  # the probe says what is wrong with it, in its own words
        key = (probe.__name__, str(path), stat.st_size, stat.st_mtime_ns, tuple(sorted(options.items())))
        return self._cached(key, lambda: probe(path, **options))

    def _cached(self, key: tuple[Any, ...], run: Callable[[], _T]) -> _T:
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if entry is None:
                entry = self._entries[key] = Future()
                if len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
        if isinstance(entry, _Settled):
            return cast(_T, entry.value())
        if owner:
            self.probes += 1
            try:
                entry.set_result(run())
            except BaseException as exc:
                entry.set_exception(exc.with_traceback(None))  # its frames would hold the probe's locals
            with self._lock:  # a Future (with its lock and condition) is kept only while the probe runs
                if key in self._entries:
                    self._entries[key] = _Settled(entry)
        return cast(_T, entry.result())


class _Settled:
    """A finished probe's result or error: what the cache keeps instead of the Future (a tenth the size)."""

    __slots__ = ("error", "result")

    def __init__(self, future: Future[Any]) -> None:
        self.error = future.exception()
        self.result = None if self.error is not None else future.result()

    def value(self) -> Any:
        if self.error is not None:
            raise self.error.with_traceback(None)  # raised again for every row: no traceback piling up
        return self.result


_PROBES = ProbeCache()


def _probe_remote(ref: Remote, probe: Callable[..., _T], storage: StorageOptions, options: dict[str, Any]) -> _T:
    """``probe`` on a remote file opened for ranged reads: only the bytes the probe reads are fetched."""
    with shared_storage(storage).open_ranged(ref) as handle:
        return probe(handle, **options)


def _estimate_rows(source: RawRows, rows: list[tuple[int, Any]], s: _Settings) -> list[RowEstimate]:
    """A chunk of raw rows estimated in a worker process (its own probe cache)."""
    return [_estimate_item(item, s) for item in items_of(source, rows, with_hash=False)]


def _plan_options(s: _Settings) -> dict[str, Any]:
    return dict(
        model=s.default_model,
        voice=s.voice,
        modalities=s.modalities,
        instructions=s.instructions,
        pad_silence_seconds=s.pad_silence_seconds,
        target_language=s.target_language,
        source_language=s.source_language,
        video_fps=s.video_fps,
    )


@dataclass(frozen=True)
class _Media:
    """What an item (or a turn) sends, from its headers, decided as the run decides it."""

    audio_seconds: float
    sizes: list[tuple[int, int]]
    padded: float
    method: str | None  # duration_method
    bytes_read: int | None
    notes: list[str]
    moments: list[float] = field(default_factory=list)  # where each of ``sizes`` sits in the audio (seconds)


def _probe(item: Item, plan: ItemPlan, s: _Settings) -> _Media:
    """Audio seconds sent (how measured), image sizes sent and silence padded of an item from its headers."""
    store = s.storage  # how remote media are reached (read by ranges)
    notes: list[str] = []
    audio_seconds, read = 0.0, None
    method: str | None = None
    if item.audio is not None:
        measured = _PROBES.get(item.audio, measure_audio, store)
        audio_seconds, method, read = measured.seconds, measured.method, measured.bytes_read
        notes.extend([measured.note] if measured.note else [])
    sizes: list[tuple[int, int]] = []
    moments: list[float] = []
    video_seconds = 0.0
    if item.video is not None:
        video = _PROBES.get(item.video, probe_video, store, fps=plan.video_fps, max_frames=s.max_video_frames)
        sizes.extend([video.frame_size] * len(video.frame_times))
        moments.extend(video.frame_times)
        video_seconds = video.duration_seconds
        notes.extend(video.notes)
        if item.audio is None:  # an audio file, when given, is the sound; the video gives frames only
            audio_seconds, method, read = video.audio_seconds, video.audio_method, video.bytes_read
    padded = 0.0
    if audio_seconds <= 0 and plan.pad_silence_seconds > 0:
        # as the run pads: on a family with a hard images-a-second limit, silence as long as a video
        # with no sound (so its frames are not refused)
        under_frames = video_seconds if sizes and plan.model.max_images_per_second is not None else 0.0
        padded = audio_seconds = max(plan.pad_silence_seconds, under_frames)
        method = "silence"
        notes.append(silence_note(padded, under_video=under_frames > plan.pad_silence_seconds))
    with image_plan.pillow_warnings() as warned:  # a file's warnings, the first time it is probed
        planned = [_PROBES.get(path, probe_image_parts, store, image_frames=s.image_frames) for path in item.images]
    notes.extend(warned)
    allowed = image_plan.images_allowed(plan.images_per_second, audio_seconds)
    kept = image_plan.keep_counts([parts for _, parts in planned], len(sizes), allowed)
    for path, (oriented, parts), count in zip(item.images, planned, kept, strict=True):
        sizes.extend(part_sizes(oriented, parts, count))
        notes.extend(image_plan.parts_notes(path, parts, count, plan.images_per_second))
    moments.extend(image_times(len(sizes) - len(moments), audio_seconds))  # the images, as the run places them
    return _Media(audio_seconds, sizes, padded, method, read, notes, moments)


def _estimate_session(item: Item, s: _Settings) -> RowEstimate:
    """A conversation row, or a row offering tools: every turn's response re-bills the conversation so far,
    and each turn takes the assumed tool rounds (the runner estimates the same way)."""
    model_name = item.model or s.default_model
    modalities = item.modalities or s.modalities
    try:
        validate_item(item)
        if item.turns:
            talk = plan_conversation(item, **_plan_options(s))
            plan = talk.session
        else:
            plan = plan_item(item, **_plan_options(s))
        model, model_name, modalities = plan.model, plan.model.name, plan.modalities
        offered = offered_tools(model, item.tools, s.tools, s.extract)
        turns: list[TurnInput] = []
        audio_total = padded_total = 0.0
        images = 0
        notes: list[str] = []
        methods: list[str | None] = []
        read: int | None = None
        pairs = zip(talk.turn_items, talk.turns, strict=True) if item.turns else [(item, plan)]
        for number, (each, turn_plan) in enumerate(pairs):
            try:
                media = _probe(each, turn_plan, s)
                audio_seconds, sizes, padded = media.audio_seconds, media.sizes, media.padded
                notes.extend(media.notes)
                methods.append(media.method)
                if media.bytes_read is not None:
                    read = (read or 0) + media.bytes_read
            except BatchQwenError as exc:
                if not item.turns:
                    raise
                raise type(exc)(f"turn {number + 1}: {exc}") from None
            folded = talk.response_instructions(number) if item.turns else None
            turns.append(TurnInput(audio_seconds, sizes, [turn_plan.prompt], [folded] if folded else []))
            audio_total, padded_total, images = audio_total + audio_seconds, padded_total + padded, images + len(sizes)
        assumption = s.tools.assumption(offered, s.tool_rounds) if offered and s.tools is not None else None
        tokens = estimate_session_tokens(
            model,
            turns=turns,
            session_texts=[plan.instructions],
            modalities=modalities,
            output=s.output,
            tools=assumption,
        )
    except (BatchQwenError, OSError, ValueError) as exc:
        return RowEstimate(item.id, item.row, model_name, tuple(modalities), problem=_problem_text(exc))
    # a turn measured by a fallback makes the row's method that fallback's
    method = next((m for m in methods if m in _FALLBACKS), methods[0] if methods else None)
    return RowEstimate(
        item.id, item.row, model_name, modalities, audio_total, padded_total, images, tokens,
        duration_method=method, probe_bytes_read=read, notes=tuple(dict.fromkeys(notes)),
    )  # fmt: skip


def _estimate_item(item: Item, s: _Settings) -> RowEstimate:
    names_tools = item.tools is not None and item.tools != NO_TOOLS
    if item.turns or names_tools or (s.tools is not None and item.tools != NO_TOOLS):
        return _estimate_session(item, s)
    model_name = item.model or s.default_model
    modalities = item.modalities or s.modalities
    try:
        # the same plan the run makes: model, voice, modalities, where the prompt goes, silence padding
        plan = plan_item(item, **_plan_options(s))
        model, model_name, modalities = plan.model, plan.model.name, plan.modalities
        validate_item(item)
        media = _probe(item, plan, s)
        audio_seconds, sizes, padded, moments = media.audio_seconds, media.sizes, media.padded, media.moments
        texts = (plan.instructions, plan.prompt)
        tokens = estimate_tokens(
            model, audio_seconds=audio_seconds, image_sizes=sizes, texts=texts, modalities=modalities, output=s.output
        )
        segments = 1
        budget = session_budget(model, texts=texts, modalities=modalities, output=s.output, pace=s.pace)
        too_long = budget.too_long(audio_seconds, tokens.input_image)
        if too_long is not None:
            images = [(at, image_tokens(model, w, h)) for at, (w, h) in zip(moments, sizes, strict=True)]
            parts = plan_segments(round(audio_seconds * INPUT_SAMPLE_RATE), budget, images=images)
            if s.split == "never":
                raise InputTooLong(
                    f"{too_long}; --split never: this row fails without sending anything"
                    f" (--split auto would send it as {len(parts)} sessions cut at pauses)"
                )
            per_segment = [
                estimate_tokens(
                    model,
                    audio_seconds=part.seconds,
                    image_sizes=[size for at, size in zip(moments, sizes, strict=True) if part.holds(at)],
                    texts=texts,
                    modalities=modalities,
                    output=s.output,
                )
                for part in parts
            ]
            segments, tokens = len(parts), _sum_estimates(per_segment)
    except (BatchQwenError, OSError, ValueError) as exc:
        # media libraries raise OSError/ValueError subclasses of their own; one bad row never stops the run
        return RowEstimate(item.id, item.row, model_name, tuple(modalities), problem=_problem_text(exc))
    return RowEstimate(
        id=item.id,
        row=item.row,
        model=model_name,
        modalities=modalities,
        audio_seconds=audio_seconds,
        padded_silence_seconds=padded,
        image_count=len(sizes),
        tokens=tokens,
        duration_method=media.method,
        probe_bytes_read=media.bytes_read,
        notes=tuple(media.notes),
        segments=segments,
        too_long=too_long,
    )


def _sum_estimates(estimates: Iterable[TokenEstimate]) -> TokenEstimate:
    parts = list(estimates)
    return TokenEstimate(**{name: sum(getattr(e, name) for e in parts) for name in MODALITIES})


_FALLBACKS = ("file_size", "packet_scan", "decode")


def _problem_text(exc: BaseException) -> str:
    kind = exc.kind if isinstance(exc, BatchQwenError) else type(exc).__name__
    return f"{kind}: {exc}"


class _RowWriter:
    """Rows to Parquet in batches, written to a temporary name and moved into place when complete.

    Rows become Arrow batches a few hundred at a time (short-lived Python lists), and batches become
    row groups of ROW_GROUP_ROWS: few groups keep the writer's metadata small, small lists keep the
    heap from growing with the manifest.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        # dictionary pages only where values repeat: a dictionary over unique ids is wasted work
        self.writer = pq.ParquetWriter(self.tmp, ESTIMATE_SCHEMA, use_dictionary=list(DICTIONARY_COLUMNS))
        self.columns: dict[str, list[Any]] = {name: [] for name in ESTIMATE_SCHEMA.names}
        self.batches: list[pa.RecordBatch] = []
        self.batched_rows = 0

    def add(self, values: dict[str, Any]) -> None:
        for name, column in self.columns.items():
            column.append(values[name])
        if len(self.columns["id"]) >= BATCH_ROWS:
            self._batch()
            if self.batched_rows >= ROW_GROUP_ROWS:
                self.flush()

    def _batch(self) -> None:
        if self.columns["id"]:
            batch = pa.record_batch(self.columns, schema=ESTIMATE_SCHEMA)
            self.batches.append(batch)
            self.batched_rows += batch.num_rows
            self.columns = {name: [] for name in ESTIMATE_SCHEMA.names}

    def flush(self) -> None:
        self._batch()
        if self.batches:
            self.writer.write_table(pa.Table.from_batches(self.batches, ESTIMATE_SCHEMA))
            self.batches = []
            self.batched_rows = 0

    def finish(self) -> None:
        self.flush()
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abandon(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def estimate_manifest(
    path: Path,
    *,
    default_model: str,
    region: str,
    prices: PriceBook,
    output: OutputAssumption,
    modalities: tuple[str, ...],
    instructions: str | None,
    limit: int | None,
    pad_silence_seconds: float,
    workers: int = DEFAULT_WORKERS,
    out_dir: Path | None = None,
    video_fps: float = 1.0,
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
    voice: str | None = None,
    target_language: str | None = None,
    source_language: str | None = None,
    tools: ToolCatalog | None = None,
    tool_rounds: int = 1,
    extract: str | None = None,
    image_frames: ImageFrames = "first",
    manifest_options: ManifestOptions | None = None,
    storage: StorageOptions | None = None,
    process_pool: ProcessPoolExecutor | None = None,
    split: SplitMode = "auto",
    pace: float = 0.0,
) -> EstimateReport:
    """Estimate tokens and cost of every row of the manifest at ``path``; no network access at all.

    With ``tools`` (``--tools``), every response bills the declarations of the tools a row offers and each
    turn is assumed to take ``tool_rounds`` tool rounds (``--assume-tool-rounds``).

    Rows go to ``out_dir/estimate.parquet`` (when ``out_dir`` is given) in manifest order; the report keeps
    aggregates only. Raises ManifestError when the manifest as a whole is unusable; row problems are
    listed in the report instead. At most ``workers * 4`` items are in flight at once.
    A big manifest goes to worker processes: ``process_pool`` when given (see :func:`early_workers`), else
    a pool made here.
    """
    started = time.perf_counter()
    region = normalize_region(region)
    report = EstimateReport(
        manifest=Path(path),
        region=region,
        currency=prices.currency,
        price_source=prices.source,
        price_as_of=prices.as_of,
        price_url=prices.source_url,
        output=output,
        text_tokens_exact=text_tokens_exact(),
        tool_rounds=tool_rounds if tools is not None else None,
    )
    settings = _Settings(
        default_model,
        voice,
        modalities,
        instructions,
        output,
        pad_silence_seconds,
        video_fps,
        max_video_frames,
        target_language,
        source_language,
        tools,
        tool_rounds,
        extract,
        image_frames=image_frames,
        storage=storage,
        split=split,
        pace=pace,
    )
    writer = _RowWriter(out_dir / ESTIMATE_FILE) if out_dir is not None else None
    cores = os.cpu_count() or 1
    try:
        source, raw_rows = iter_raw_rows(Path(path), options=manifest_options)
        head = list(itertools.islice(raw_rows, PARALLEL_MIN_ROWS))
        if len(head) < PARALLEL_MIN_ROWS or cores < 2 or (limit is not None and limit < PARALLEL_MIN_ROWS):
            rows: Iterable[tuple[int, Any]] = itertools.chain(head, raw_rows)
            _estimate_here(source, rows, settings, report, prices, writer, limit=limit, workers=workers)
        else:
            rows = itertools.chain(head, raw_rows)
            with contextlib.ExitStack() as stack:
                pool = process_pool or stack.enter_context(_new_pool(cores))
                _estimate_in_processes(
                    source, rows, settings, report, prices, writer, limit=limit, pool=pool, processes=cores
                )
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    if writer is not None:
        writer.finish()
        report.parquet = writer.path
    report.elapsed_seconds = time.perf_counter() - started
    return report


def _estimate_here(
    source: RawRows,
    rows: Iterable[tuple[int, Any]],
    settings: _Settings,
    report: EstimateReport,
    prices: PriceBook,
    writer: _RowWriter | None,
    *,
    limit: int | None,
    workers: int,
) -> None:
    """A small manifest: rows made into Items here, probed by a few threads (waiting on file headers)."""
    items: Iterator[Item] = (item for chunk in _chunks(rows, 64) for item in items_of(source, chunk, with_hash=False))
    if limit is not None:
        items = itertools.islice(items, max(0, limit))
    max_in_flight = max(1, workers) * 4
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="estimate") as pool:
        pending: deque[Future[RowEstimate]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(_estimate_item, item, settings))
                if len(pending) >= max_in_flight:
                    _record(report, prices, writer, pending.popleft().result())
            while pending:
                _record(report, prices, writer, pending.popleft().result())
        finally:
            for future in pending:  # a manifest error mid-way: do not probe the rest
                future.cancel()


def _estimate_in_processes(
    source: RawRows,
    rows: Iterable[tuple[int, Any]],
    settings: _Settings,
    report: EstimateReport,
    prices: PriceBook,
    writer: _RowWriter | None,
    *,
    limit: int | None,
    pool: ProcessPoolExecutor,
    processes: int,
) -> None:
    """A big manifest: chunks of raw rows go to one worker process per core, which make the Items and
    probe them (each with its own probe cache); results come back and are recorded in manifest order.
    A bounded number of chunks is in flight, so memory stays flat however long the manifest."""
    recorded = 0
    in_flight = max(1, processes) * 4
    pending: deque[Future[list[RowEstimate]]] = deque()
    try:
        for chunk in _chunks(rows, PARALLEL_CHUNK_ROWS):
            pending.append(pool.submit(_estimate_rows, source, chunk, settings))
            while len(pending) >= in_flight or (pending and pending[0].done()):
                recorded = _record_chunk(report, prices, writer, pending.popleft().result(), recorded, limit)
            if limit is not None and recorded >= limit:
                return
        while pending:
            recorded = _record_chunk(report, prices, writer, pending.popleft().result(), recorded, limit)
    finally:
        for future in pending:
            future.cancel()


def _new_pool(processes: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"))


def _warm() -> None:
    """Nothing: unpickling it makes a fresh worker import this module."""


@contextlib.contextmanager
def early_workers(manifest: Path) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes started before the manifest check, for a manifest big enough to use them.

    A fresh worker spends about 0.3 s importing this module; started here, that overlaps the check pass
    (0.3 s on 10,000 rows) instead of following it. The manifest's size in bytes stands in for its rows
    (a row names at least one file): a wrong guess costs only processes started in vain.
    """
    cores = os.cpu_count() or 1
    try:
        size = manifest.stat().st_size
    except OSError:
        size = 0
    if cores < 2 or size < PARALLEL_MIN_ROWS * EARLY_BYTES_PER_ROW:
        yield None
        return
    with _new_pool(cores) as pool:
        for _ in range(cores):
            pool.submit(_warm)
        yield pool


def _record_chunk(
    report: EstimateReport,
    prices: PriceBook,
    writer: _RowWriter | None,
    chunk: list[RowEstimate],
    recorded: int,
    limit: int | None,
) -> int:
    for row in chunk:
        if limit is not None and recorded >= limit:
            break
        _record(report, prices, writer, row)
        recorded += 1
    return recorded


def _chunks(rows: Iterable[tuple[int, Any]], size: int) -> Iterator[list[tuple[int, Any]]]:
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _record(report: EstimateReport, prices: PriceBook, writer: _RowWriter | None, row: RowEstimate) -> None:
    """Fold one row into the aggregates and hand it to the writer."""
    report.items += 1
    tokens = row.tokens
    price: ModelPrice | None = None
    cost: float | None = None
    if tokens is None:
        report.problem_count += 1
        if len(report.problems) < MAX_PROBLEMS_KEPT:
            report.problems.append(Problem(row.row, row.id, row.problem or "unknown problem"))
    else:
        if row.too_long is not None:
            report.too_long_count += 1
            if len(report.too_long) < MAX_PROBLEMS_KEPT:
                note = f"{row.too_long}: --split auto sends it as {row.segments} sessions cut at pauses"
                report.too_long.append(Problem(row.row, row.id, note))
        totals = report.by_model.get(row.model)
        if totals is None:
            totals = report.by_model[row.model] = ModelTotals(row.model, prices.lookup(row.model, report.region))
        price = totals.price
        totals.items += 1
        totals.audio_seconds += row.audio_seconds
        totals.images += row.image_count
        for name, count in tokens.as_dict().items():
            totals.tokens[name] += count
        if price is not None:
            costs = cost_breakdown(
                price,
                **tokens.as_dict(),
                text_only_input=tokens.text_only_input,
                audio_output="audio" in row.modalities,
            )
            for name, money in costs.items():
                totals.costs[name] += money
            cost = sum(costs.values())
    if row.duration_method in _FALLBACKS:
        report.duration_fallbacks += 1
    if writer is None:
        return
    writer.add(
        {
            "id": row.id,
            "row": row.row,
            "model": row.model,
            "modalities": ",".join(row.modalities),
            "audio_seconds": row.audio_seconds if tokens else None,
            "padded_silence_seconds": row.padded_silence_seconds if tokens else None,
            "image_count": row.image_count if tokens else None,
            "segments": row.segments if tokens else None,
            "input_text_tokens": tokens.input_text if tokens else None,
            "input_audio_tokens": tokens.input_audio if tokens else None,
            "input_image_tokens": tokens.input_image if tokens else None,
            "output_text_tokens": tokens.output_text if tokens else None,
            "output_audio_tokens": tokens.output_audio if tokens else None,
            "total_tokens": tokens.total if tokens else None,
            "cost": cost,
            "currency": report.currency,
            "price_known": price is not None,
            "problem": row.problem,
            "duration_method": row.duration_method,
            "probe_bytes_read": row.probe_bytes_read,
            "notes": list(row.notes),
        }
    )


# ----------------------------------------------------------------------------- the readable report

_LABELS = {
    "input_text": "input text",
    "input_audio": "input audio",
    "input_image": "input image",
    "output_text": "output text",
    "output_audio": "output audio",
}


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.4f}"


def _table(rows: Iterable[tuple[str, ...]]) -> list[str]:
    rows = list(rows)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  " + "  ".join(cells))
    return out


def format_report(report: EstimateReport) -> str:
    """A readable table by model and modality with totals, currency, the output assumption and problems."""
    cur = report.currency
    lines = [
        f"Estimate of {report.manifest.name}: {report.items:,} items, {report.estimated_items:,} estimated, "
        f"{report.problem_count:,} with problems (region {report.region})",
        f"Prices: {report.price_source}{f' <{report.price_url}>' if report.price_url else ''},"
        f" as of {report.price_as_of}, {cur} per 1M tokens",
        report.output.describe().capitalize(),
    ]
    if report.tool_rounds is not None:
        lines.append(
            f"Tool rounds assumed: {report.tool_rounds} per turn (--assume-tool-rounds); every response bills the"
            " tools' declarations and the conversation so far"
        )
    if not report.text_tokens_exact:
        lines.append("Text tokens are approximate (the Qwen vocabulary was not found: 1 token per 3 bytes)")
    for name in sorted(report.by_model):
        totals = report.by_model[name]
        priced = totals.price is not None
        note = "" if priced else "  ** no known price: cost unknown, not zero **"
        lines += ["", f"{name}: {totals.items:,} items, {totals.audio_seconds:,.1f} s audio, "
                  f"{totals.images:,} images{note}"]  # fmt: skip
        rows = [("modality", "tokens", f"cost {cur}")]
        for m in MODALITIES:
            rows.append((_LABELS[m], f"{totals.tokens[m]:,}", _money(totals.costs[m] if priced else None)))
        rows.append(("total", f"{totals.total_tokens:,}", _money(totals.cost)))
        lines += _table(rows)
    lines += ["", "All models:"]
    all_rows = [("modality", "tokens")] + [(_LABELS[m], f"{report.tokens[m]:,}") for m in MODALITIES]
    all_rows.append(("total", f"{report.total_tokens:,}"))
    lines += _table(all_rows)
    if report.total_cost is not None:
        spread = ""
        if report.cost_range is not None:
            low, high = report.cost_range
            spread = f" (p10-p90 range {low:,.4f} - {high:,.4f} {cur}, from the calibration)"
        lines.append(f"Estimated cost: {report.total_cost:,.4f} {cur}{spread}")
    else:
        unpriced = sorted(n for n, t in report.by_model.items() if t.price is None)
        lines.append(
            f"Estimated cost: {report.known_cost:,.4f} {cur} for the priced items, plus UNKNOWN for "
            f"{report.unpriced_items:,} items of {', '.join(unpriced)} (no known price)"
        )
    lines.append("Output text in text+audio mode is the transcript: not billed (output billed on audio tokens).")
    if report.duration_fallbacks:
        lines.append(
            f"Audio length of {report.duration_fallbacks:,} rows measured past a missing or wrong header"
            " (file size, packet scan or decode: column duration_method, with a note)"
        )
    if report.problem_count:
        lines += ["", f"Problems ({report.problem_count:,} rows, left out of the totals):"]
        lines += [f"  row {p.row} (id {p.id}): {p.message}" for p in report.problems]
        if report.problem_count > len(report.problems):
            more = report.problem_count - len(report.problems)
            where = f" (all in {report.parquet}, column 'problem')" if report.parquet else ""
            lines.append(f"  ... and {more:,} more{where}")
    if report.too_long_count:
        lines += ["", f"Too long for one session ({report.too_long_count:,} rows, counted above as their segments):"]
        lines += [f"  row {p.row} (id {p.id}): {p.message}" for p in report.too_long]
        if report.too_long_count > len(report.too_long):
            more = report.too_long_count - len(report.too_long)
            where = f" (all in {report.parquet}, column 'segments' > 1)" if report.parquet else ""
            lines.append(f"  ... and {more:,} more{where}")
    if report.parquet is not None:
        lines += ["", f"Rows: {report.parquet}"]
    return "\n".join(lines)


def write_estimate_summary(report: EstimateReport, out_dir: Path) -> Path:
    """``OUT/estimate.json``: the estimate's totals, so a report of a later run in OUT can say how good it was."""
    import json
    from datetime import UTC, datetime

    summary = {
        "manifest": str(report.manifest),
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "items": report.items,
        "estimated_items": report.estimated_items,
        "currency": report.currency,
        "estimated_cost": report.total_cost,
        "cost_range": list(report.cost_range) if report.cost_range is not None else None,
        "output_assumption": report.output.describe(),
        "calibrated_from": list(report.output.calibrated_from),
        "tokens": report.tokens,
    }
    path = Path(out_dir) / ESTIMATE_SUMMARY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path
