"""Long recordings: when one session cannot take an item, where to cut it, and how the parts add up.

Pure (no I/O): the same rules serve the dry run (:mod:`batchqwen.estimate`, from the media's metadata)
and the run (:mod:`batchqwen.longaudio`, from the decoded audio's levels).

**When an item is split.** Before any session, an item is too long for one session when its estimated
input (instructions + prompt + audio + images, by the rules of :mod:`batchqwen.models`) exceeds the
model's ``max_input_tokens``, when input plus the assumed answer exceeds its ``context_tokens``, or, at
``--pace`` > 0, when streaming its audio would outlive the session lifetime (``session_lifetime_seconds``
less the time kept for the answer). With ``--split auto`` (the default) such an item is split; with
``--split never`` it fails at once, naming its estimate and the limit, and nothing is sent.

**One session per segment.** Every turn of a session re-bills the whole conversation so far
(``shared/reference/realtime-protocol.md``, "Audio, images, sessions": "every turn re-bills the history,
so one short session per batch item is cheapest"; ``docs/simulator.md`` bills the same way), so the
limit applies to a session's accumulated context, not to one turn: a second segment in the same session
would pay for the first again and would not fit either. Each segment therefore gets its own session;
what the service would remember of earlier segments is not worth re-paying for in a transcription-like
job. The instructions and the prompt go with every segment (and are billed with every segment).

**How big a segment may be.** A segment's input (instructions + prompt + its audio + its images) stays
within ``(1 - HEADROOM)`` of ``min(max_input_tokens, context_tokens - assumed answer)``: 95 % leaves room
for what the service counts and we cannot see (its chat template, a tokenizer that differs from ours, a
rounding); at 12.5 audio tokens a second and no prompt that is 62.3 minutes of audio on qwen3-omni-flash
(49,152 input tokens). At ``--pace`` > 0 a segment also streams within the session lifetime.

**Where the cuts go.** ``n = ceil(length / (longest - window))`` segments of equal length are aimed at;
each cut is the middle of the longest pause (quiet stretch, :func:`batchqwen.vad.best_cut`) within
``window / 2`` of its aim, where ``window`` is 60 s, or a fifth of the longest segment when that is less.
So no segment is longer than the longest allowed, the count is known from the length alone (the dry run
says it before anything is decoded), and a cut falls inside speech only when the window holds no quiet
frame at all. When images (video frames) push a segment over its budget, one more segment is tried.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from batchqwen.cost import OutputAssumption, estimate_tokens
from batchqwen.errors import InputTooLong
from batchqwen.items import INPUT_SAMPLE_RATE, Item
from batchqwen.models import ModelInfo, audio_tokens
from batchqwen.results import STATUS_FAILED, STATUS_OK, STATUS_PARTIAL, ResultRow
from batchqwen.vad import FRAME_MS, Cut, best_cut

SplitMode = Literal["auto", "never"]
SPLIT_MODES: tuple[str, ...] = ("auto", "never")

HEADROOM = 0.05  # share of the model's input limit a segment leaves free
SEARCH_WINDOW_SECONDS = 60.0  # a cut is looked for within half this of its aim
SEARCH_WINDOW_SHARE = 0.2  # ... or a fifth of the longest segment, when that is less
MIN_SEGMENT_SECONDS = 10.0  # a session that can take less audio than this is not worth splitting for
FRAME_SAMPLES = INPUT_SAMPLE_RATE * FRAME_MS // 1000  # samples per 20 ms VAD frame
FRAMES_PER_SECOND = 1000 // FRAME_MS
#: seconds of a session's lifetime kept for the answer and the end of the session: the runner's
#: ``ITEM_TIMEOUT_MARGIN + SESSION_LIFETIME_MARGIN`` (a test keeps them equal); the dry run uses it
LIFETIME_KEPT_SECONDS = 360.0


@dataclass(frozen=True)
class SessionBudget:
    """What one session of ``model`` can take for an item: the fixed text of every segment, the answer
    assumed for each, and at ``pace`` > 0 the streaming time (``answer_seconds`` of the lifetime are kept
    for the answer and the end of the session)."""

    model: ModelInfo
    text_tokens: int = 0  # instructions + prompt, sent with every segment
    output_tokens: int = 0  # the answer assumed for one session (the estimate's output assumption)
    pace: float = 0.0
    answer_seconds: float = 0.0

    @property
    def max_stream_seconds(self) -> float | None:
        """The most audio one session can stream before its lifetime ends; None when not paced."""
        if self.pace <= 0:
            return None
        return max(0.0, self.model.session_lifetime_seconds - self.answer_seconds) * self.pace

    @property
    def segment_input_tokens(self) -> int:
        """Input tokens one segment may carry, text included (the rule in the module docstring)."""
        model = self.model
        cap = min(model.max_input_tokens, model.context_tokens - self.output_tokens)
        return math.floor(cap * (1 - HEADROOM))

    @property
    def max_segment_seconds(self) -> float:
        """The longest segment of audio alone (no images) that keeps within the budget."""
        room = self.segment_input_tokens - self.text_tokens
        seconds = max(0.0, math.floor(room / self.model.audio_tokens_per_second * 1000) / 1000)
        stream = self.max_stream_seconds
        return seconds if stream is None else min(seconds, stream)

    @property
    def shortest_too_long_seconds(self) -> float:
        """The least audio :meth:`too_long` can refuse (images aside): shorter is never split."""
        model = self.model
        room = min(model.max_input_tokens, model.context_tokens - self.output_tokens) - self.text_tokens
        seconds = max(0.0, room / model.audio_tokens_per_second)
        stream = self.max_stream_seconds
        return seconds if stream is None else min(seconds, stream)

    def input_tokens(self, audio_seconds: float, image_tokens: int = 0) -> int:
        return self.text_tokens + audio_tokens(self.model, audio_seconds) + image_tokens

    def too_long(self, audio_seconds: float, image_tokens: int = 0) -> str | None:
        """Why one session cannot take this much input, with the estimate and the limit; None if it can."""
        model = self.model
        estimate = self.input_tokens(audio_seconds, image_tokens)
        what = f"{audio_seconds:,.1f} s of audio"
        if image_tokens:
            what += f" and {image_tokens:,} image tokens"
        if estimate > model.max_input_tokens:
            return (
                f"estimated input of {estimate:,} tokens ({what}) exceeds {model.name}'s limit of"
                f" {model.max_input_tokens:,} input tokens"
            )
        if estimate + self.output_tokens > model.context_tokens:
            return (
                f"estimated input of {estimate:,} tokens ({what}) and an answer of {self.output_tokens:,} exceed"
                f" {model.name}'s context of {model.context_tokens:,} tokens"
            )
        stream = self.max_stream_seconds
        if stream is not None and audio_seconds > stream:
            lifetime = model.session_lifetime_seconds
            return (
                f"streaming {audio_seconds:,.0f} s of audio at --pace {self.pace:g} takes longer than"
                f" {model.name}'s session lifetime of {lifetime / 60:g} minutes allows ({stream:,.0f} s, with"
                f" {self.answer_seconds:g} s kept for the answer)"
            )
        return None


@dataclass(frozen=True)
class Segment:
    """One part of a long recording: samples ``start`` .. ``end`` (16 kHz), 1-based ``index`` of ``count``;
    ``cut`` is where it ends (None for the last)."""

    index: int
    count: int
    start: int
    end: int
    cut: Cut | None = None

    @property
    def start_seconds(self) -> float:
        return self.start / INPUT_SAMPLE_RATE

    @property
    def end_seconds(self) -> float:
        return self.end / INPUT_SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / INPUT_SAMPLE_RATE

    def holds(self, at_seconds: float) -> bool:
        """Whether a moment belongs here (the last segment also takes what lies past the end)."""
        if at_seconds < self.start_seconds:
            return self.index == 1
        return at_seconds < self.end_seconds or self.index == self.count

    def describe(self) -> str:
        """For the row's notes: where it lies and how its end was cut."""
        text = f"segment {self.index} of {self.count}: {self.start_seconds:,.2f}-{self.end_seconds:,.2f} s"
        if self.cut is not None:
            quiet = self.cut.quiet_frames * FRAME_MS / 1000
            if self.cut.in_pause:
                text += f", cut in a {quiet:.2f} s pause"
            elif self.cut.quiet_frames:
                text += f", no pause near the cut: cut in the longest quiet stretch ({quiet:.2f} s)"
            else:
                text += ", no pause near the cut: cut at the quietest moment"
        return text


def plan_segments(
    samples: int,
    budget: SessionBudget,
    *,
    levels: np.ndarray[Any, np.dtype[np.float64]] | None = None,
    images: Sequence[tuple[float, int]] = (),
) -> tuple[Segment, ...]:
    """The segments of ``samples`` of 16 kHz audio (with ``images`` as (moment, tokens)), each within
    ``budget``; cut at pauses found in ``levels`` (one dBFS level per 20 ms frame, see
    :func:`batchqwen.vad.frame_dbfs`), or exactly at the aims without them (the dry run).

    Raises InputTooLong when no split helps: the text alone leaves less than
    :data:`MIN_SEGMENT_SECONDS` of audio per session, or one moment's images are over the budget.
    """
    longest = _longest_frames(budget)
    frames = max(1, math.ceil(samples / FRAME_SAMPLES))
    window = _window_frames(longest)
    count = max(2, math.ceil(frames / (longest - window)))
    most = max(2, frames // FRAMES_PER_SECOND)  # segments of a second: past that, splitting cannot help
    while count <= most:
        segments = _cut(samples, frames, count, window, levels)
        if all(_fits(segment, budget, images) for segment in segments):
            return segments
        count += 1
    raise InputTooLong(
        f"no split helps: the images at some moment take more than one session's {budget.segment_input_tokens:,}"
        f" input tokens on {budget.model.name}"
    )


def _longest_frames(budget: SessionBudget) -> int:
    seconds = budget.max_segment_seconds
    if seconds < MIN_SEGMENT_SECONDS:
        raise InputTooLong(
            f"no split helps: the instructions and prompt take {budget.text_tokens:,} tokens, leaving room for"
            f" {seconds:.1f} s of audio in one session of {budget.model.name} (at most"
            f" {budget.segment_input_tokens:,} input tokens a segment)"
        )
    return math.floor(seconds * FRAMES_PER_SECOND)


def _window_frames(longest: int) -> int:
    return min(round(SEARCH_WINDOW_SECONDS * FRAMES_PER_SECOND), math.floor(longest * SEARCH_WINDOW_SHARE))


def _cut(
    samples: int, frames: int, count: int, window: int, levels: np.ndarray[Any, np.dtype[np.float64]] | None
) -> tuple[Segment, ...]:
    cuts: list[Cut] = []
    previous = 0
    for k in range(1, count):
        aim = round(k * frames / count)
        low, high = max(aim - window // 2, previous + 1), aim + window // 2
        cut = best_cut(levels, low, high, target=aim) if levels is not None else Cut(aim, 0)
        cuts.append(cut)
        previous = cut.frame
    bounds = [0, *(min(samples, cut.frame * FRAME_SAMPLES) for cut in cuts), samples]
    ends: list[Cut | None] = [*cuts, None]
    return tuple(
        Segment(index=k + 1, count=count, start=bounds[k], end=bounds[k + 1], cut=ends[k]) for k in range(count)
    )


def _fits(segment: Segment, budget: SessionBudget, images: Sequence[tuple[float, int]]) -> bool:
    image_tokens = sum(tokens for at, tokens in images if segment.holds(at))
    if budget.input_tokens(segment.seconds, image_tokens) > budget.segment_input_tokens:
        return False
    stream = budget.max_stream_seconds
    return stream is None or segment.seconds <= stream


# ----------------------------------------------------------------------------- the item's row from its segments


def _total(values: Sequence[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _joined(parts: Sequence[str | None]) -> str:
    return " ".join(part.strip() for part in parts if part and part.strip())


def billed_tokens(rows: Sequence[ResultRow]) -> int | None:
    """Tokens the service reported for these segments' sessions: their usage and their failed attempts."""
    return _total([row.usage_total_tokens for row in rows] + [row.failed_attempt_tokens for row in rows])


def merge_rows(
    item: Item,
    segments: Sequence[Segment],
    rows: Sequence[ResultRow],
    *,
    notes: Sequence[str],
    partial: bool = False,
) -> ResultRow:
    """The item's one row from its segments' rows, in order (the last may have failed; later segments
    then have no row): transcripts and answers joined in order, utterance times shifted to the item's
    timeline, usage, tokens and cost summed, ``segments`` the number of segments.

    A failed segment fails the item, with that segment's error (its place named) and every token billed so
    far in ``failed_attempt_tokens``; the answers of the segments before it are kept. ``partial``: the
    record of a half-done item while it runs (nothing billed is forgotten if the run stops now). Tool calls
    are joined in order; the extracted arguments are the last segment's that has them.
    """
    first = rows[0]
    count = len(segments)
    done = [row for row in rows if row.status == STATUS_OK]
    failed = next((row for row in rows if row.status != STATUS_OK), None)
    utterances = []
    for segment, row in zip(segments, rows, strict=False):
        for u in row.utterances:
            shifted = dict(u)
            for key in ("start_seconds", "end_seconds"):
                if shifted.get(key) is not None:
                    shifted[key] = round(float(shifted[key]) + segment.start_seconds, 3)
            utterances.append(shifted)
    row = ResultRow.from_item(
        item,
        STATUS_OK,
        attempts=sum(r.attempts for r in rows),
        model=first.model,
        voice=first.voice,
        modalities=first.modalities,
        target_language=first.target_language,
        segments=count,
        input_transcript=_joined([r.input_transcript for r in rows]),
        output_text=_joined([r.output_text for r in rows]),
        output_transcript=_joined([r.output_transcript for r in rows]),
        utterances=utterances,
        notes=[*notes, *(segment.describe() for segment in segments)],
        input_audio_seconds=round(sum(segment.seconds for segment in segments), 3),
        padded_silence_seconds=0.0,
        image_count=sum(r.image_count or 0 for r in rows),
        currency=first.currency,
        session_id=";".join(r.session_id for r in rows if r.session_id) or None,
        response_ids=[rid for r in rows for rid in r.response_ids],
        started_at=first.started_at,
        finished_at=rows[-1].finished_at,
        connect_seconds=first.connect_seconds,
        first_text_seconds=first.first_text_seconds,
        first_audio_seconds=first.first_audio_seconds,
        total_seconds=_sum_float([r.total_seconds for r in rows]),
    )
    for name in _ESTIMATE_COLUMNS:
        setattr(row, name, _total([getattr(r, name) for r in rows]))
    row.est_cost = None if any(r.est_cost is None for r in rows) else sum(r.est_cost or 0.0 for r in rows)
    row.tool_calls = [call for r in rows for call in r.tool_calls]
    extracted = [r for r in rows if r.extracted_tool]
    if extracted:
        row.extracted_tool, row.extracted_arguments = extracted[-1].extracted_tool, extracted[-1].extracted_arguments
    if failed is None and not partial and len(rows) == count:
        for name in _USAGE_COLUMNS:
            setattr(row, name, _total([getattr(r, name) for r in rows]))
        row.failed_attempt_tokens = _total([r.failed_attempt_tokens for r in rows])
        row.cost = None if any(r.cost is None for r in rows) else sum(r.cost or 0.0 for r in rows)
        bases = {r.cost_basis for r in rows if r.cost_basis}
        row.cost_basis = bases.pop() if len(bases) == 1 else ("mixed" if bases else None)
        row.output_audio_seconds = _sum_float([r.output_audio_seconds for r in rows])
        return row
    # not (yet) whole: what was billed goes to failed_attempt_tokens, never to usage or cost
    row.failed_attempt_tokens = billed_tokens(rows)
    row.output_audio_seconds = _sum_float([r.output_audio_seconds for r in done])
    answered = f"segments 1-{len(done)} of {count} answered" if done else f"no segment of {count} answered"
    if partial:
        row.status = STATUS_PARTIAL
        row.notes.append(f"{answered}; the item is not finished: if the run stops now it runs again whole")
        return row
    assert failed is not None
    segment = segments[len(rows) - 1]
    where = f"segment {segment.index} of {count} ({segment.start_seconds:,.2f}-{segment.end_seconds:,.2f} s)"
    row.status = STATUS_FAILED
    row.error_type, row.error_code = failed.error_type, failed.error_code
    row.error_message = f"{where}: {failed.error_message or 'failed'}"
    kept = "; their answers are kept here" if done else ""
    row.notes.append(f"{answered}{kept}; the item runs again whole next time")
    return row


_ESTIMATE_COLUMNS: tuple[str, ...] = (
    "est_input_text_tokens",
    "est_input_audio_tokens",
    "est_input_image_tokens",
    "est_output_text_tokens",
    "est_output_audio_tokens",
)
_USAGE_COLUMNS: tuple[str, ...] = (
    "usage_input_text_tokens",
    "usage_input_audio_tokens",
    "usage_input_image_tokens",
    "usage_output_text_tokens",
    "usage_output_audio_tokens",
    "usage_input_tokens",
    "usage_output_tokens",
    "usage_total_tokens",
)


def _sum_float(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known), 3) if known else None


def session_budget(
    model: ModelInfo,
    *,
    texts: Sequence[str | None],
    modalities: tuple[str, ...],
    output: OutputAssumption,
    pace: float = 0.0,
    answer_seconds: float = LIFETIME_KEPT_SECONDS,
) -> SessionBudget:
    """The :class:`SessionBudget` of an item's sessions: ``texts`` (instructions, prompt) go with every
    segment; the answer to each is the estimate's output assumption."""
    fixed = estimate_tokens(model, audio_seconds=0.0, image_sizes=(), texts=texts, modalities=modalities, output=output)
    return SessionBudget(model, fixed.input_text, fixed.output_total, pace, answer_seconds)
