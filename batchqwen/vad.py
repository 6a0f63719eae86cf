"""Energy voice activity detection over PCM16LE mono 16 kHz audio: one module for every user.

The simulator's server VAD (:class:`SpeechDetector`, an incremental detector over the session's audio
timeline) and the description of what it heard (:func:`speech_segments`) use it, and so does the runner's
splitter of long recordings. It imports nothing from the simulator or the runner.

Levels are RMS dBFS of whole 20 ms frames (:func:`frame_dbfs`). Detector positions are byte offsets of
PCM16LE 16 kHz audio since the session's first audio (32 bytes per ms); the detector only marks where
speech starts and stops, the session commits and answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

INPUT_RATE = 16_000
INPUT_BYTES_PER_MS = INPUT_RATE * 2 // 1000  # PCM16 mono: 32 bytes per ms
FRAME_MS = 20  # VAD / analysis frame
FRAME_BYTES = FRAME_MS * INPUT_BYTES_PER_MS
MIN_SPEECH_FRAMES = 3  # 60 ms of energy before we call it speech: a click is not a turn
SEGMENT_GAP_MS = 300  # pauses shorter than this do not split a speech segment in descriptions
SILENCE_FLOOR_DBFS = -96.0  # 16-bit quantisation floor


def vad_threshold_dbfs(threshold: float) -> float:
    """Map the API's ``threshold`` in [-1, 1] to a frame level: -1 -> -70 dBFS, 0 -> -40, 1 -> -10."""
    return -40.0 + 30.0 * threshold


_LEVEL_BLOCK_FRAMES = 3_000  # frames measured at a time: a minute, 8 MB of float64 squares


def frame_dbfs(pcm: bytes) -> np.ndarray[Any, np.dtype[np.float64]]:
    """RMS level in dBFS of each whole 20 ms frame of PCM16LE mono 16 kHz audio.

    A minute at a time: squaring a 35-minute segment at once would take 270 MB of float64 for a moment."""
    n = len(pcm) // FRAME_BYTES
    if n == 0:
        return np.zeros(0)
    samples = np.frombuffer(pcm, dtype="<i2", count=n * FRAME_BYTES // 2).reshape(n, -1)
    levels = np.empty(n, dtype=np.float64)
    for start in range(0, n, _LEVEL_BLOCK_FRAMES):
        block = samples[start : start + _LEVEL_BLOCK_FRAMES]
        rms = np.sqrt(np.mean(np.square(block, dtype=np.float64), axis=1)) / 32768.0
        levels[start : start + len(block)] = 20.0 * np.log10(np.maximum(rms, 1e-5))
    return levels


def speech_segments(pcm: bytes, threshold_dbfs: float, *, min_gap_ms: int = SEGMENT_GAP_MS) -> list[tuple[int, int]]:
    """(start_ms, end_ms) of each stretch of frames above ``threshold_dbfs``; short pauses merged."""
    voiced = frame_dbfs(pcm) > threshold_dbfs
    if not voiced.any():
        return []
    edges = np.diff(np.concatenate(([0], voiced.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    merged: list[list[int]] = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if merged and (start - merged[-1][1]) * FRAME_MS < min_gap_ms:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(s * FRAME_MS, e * FRAME_MS) for s, e in merged if e - s >= MIN_SPEECH_FRAMES]


@dataclass(frozen=True)
class Mark:
    """``started``: speech begins; ``at`` is the onset minus the prefix padding (where the item starts).
    ``stopped``: enough silence followed; ``at`` is that moment (speech end + silence), the item's end."""

    kind: Literal["started", "stopped"]
    at: int


class SpeechDetector:
    """Speech starts after ``MIN_SPEECH_FRAMES`` voiced 20 ms frames in a row (a click is not a turn) and
    stops after ``silence_duration_ms`` of unvoiced frames."""

    def __init__(self, turn_detection: Mapping[str, Any]):
        self.threshold_dbfs = vad_threshold_dbfs(float(turn_detection["threshold"]))
        self.prefix_bytes = int(turn_detection["prefix_padding_ms"]) * INPUT_BYTES_PER_MS
        self.silence_needed_ms = int(turn_detection["silence_duration_ms"])
        self.reset()

    def reset(self) -> None:
        self.in_speech = False
        self.voiced_run = 0
        self.silence_ms = 0

    def scan(self, levels: np.ndarray[Any, np.dtype[np.float64]], first: int, floor: int) -> list[Mark]:
        """Marks for consecutive frames of ``levels`` (dBFS) starting at byte ``first``; an item never starts
        before ``floor`` (the start of what is still buffered)."""
        marks: list[Mark] = []
        for i, voiced in enumerate((levels > self.threshold_dbfs).tolist()):
            frame_start = first + i * FRAME_BYTES
            if not self.in_speech:
                self.voiced_run = self.voiced_run + 1 if voiced else 0
                if self.voiced_run == MIN_SPEECH_FRAMES:
                    onset = frame_start - (MIN_SPEECH_FRAMES - 1) * FRAME_BYTES
                    self.in_speech, self.silence_ms = True, 0
                    marks.append(Mark("started", max(floor, onset - self.prefix_bytes)))
                continue
            self.silence_ms = 0 if voiced else self.silence_ms + FRAME_MS
            if self.silence_ms >= self.silence_needed_ms:
                end = frame_start + FRAME_BYTES
                marks.append(Mark("stopped", end))
                floor = end
                self.reset()
        return marks


# ----------------------------------------------------------------------------- cutting long audio at pauses

#: a quiet stretch at least this long is a pause between phrases (a gap between syllables is shorter)
MIN_PAUSE_MS = 200
#: a frame is quiet when it is at most this far above the quiet floor of the audio around it, which is
#: the level of its quietest ``QUIET_FLOOR_PERCENTILE`` % of frames: the threshold follows the recording's
#: own background (a call centre's hum, a studio's near silence) instead of a fixed level
QUIET_MARGIN_DB = 10.0
QUIET_FLOOR_PERCENTILE = 5.0


class LevelMeter:
    """Frame levels (:func:`frame_dbfs`) of PCM16 audio fed in pieces of any size, in order: only the
    levels are kept (8 bytes per 20 ms, 1.7 MB for 70 minutes), never the audio."""

    def __init__(self) -> None:
        self._rest = b""
        self._parts: list[np.ndarray[Any, np.dtype[np.float64]]] = []
        self.nbytes = 0

    def feed(self, pcm: bytes) -> None:
        self.nbytes += len(pcm)
        data = self._rest + pcm if self._rest else pcm
        whole = len(data) - len(data) % FRAME_BYTES
        if whole:
            self._parts.append(frame_dbfs(data[:whole]))
        self._rest = data[whole:]

    def levels(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """One level per 20 ms frame so far; a last partial frame counts as a frame of its own."""
        parts = list(self._parts)
        if len(self._rest) >= 2:
            rest = self._rest[: len(self._rest) - len(self._rest) % 2]
            padded = rest + bytes(FRAME_BYTES - len(rest))  # its missing samples as silence
            parts.append(frame_dbfs(padded))
        return np.concatenate(parts) if parts else np.zeros(0)


@dataclass(frozen=True)
class Cut:
    """Where to cut: at the start of frame ``frame``, inside a quiet stretch of ``quiet_frames`` frames
    (measured whole, also beyond the search window)."""

    frame: int
    quiet_frames: int

    @property
    def in_pause(self) -> bool:
        """True when the cut falls in a pause (not between two syllables, nor inside speech)."""
        return self.quiet_frames * FRAME_MS >= MIN_PAUSE_MS


def quiet_threshold_dbfs(levels: np.ndarray[Any, np.dtype[np.float64]]) -> float:
    """The level at or under which a frame of ``levels`` is quiet (see :data:`QUIET_MARGIN_DB`)."""
    if levels.size == 0:
        return SILENCE_FLOOR_DBFS
    return float(np.percentile(levels, QUIET_FLOOR_PERCENTILE)) + QUIET_MARGIN_DB


def quiet_runs(quiet: np.ndarray[Any, np.dtype[np.bool_]]) -> list[tuple[int, int]]:
    """(start, end) frame ranges, end exclusive, of the runs of True in ``quiet``."""
    edges = np.diff(np.concatenate(([0], quiet.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def best_cut(levels: np.ndarray[Any, np.dtype[np.float64]], low: int, high: int, *, target: int) -> Cut:
    """The cut in frames ``low`` .. ``high`` (inclusive): the middle of the longest quiet stretch that
    reaches into the window, so the cut is never inside speech when the window holds a pause. Ties go to
    the stretch nearest ``target``. A stretch running past the window is measured whole (the audio around
    the window is looked at as far again as the window is wide), its cut kept inside the window."""
    count = int(levels.size)
    low, high = max(0, low), min(count, high)
    if high <= low:
        return Cut(min(max(target, 0), count), 0)
    reach = high - low
    start, stop = max(0, low - reach), min(count, high + reach)
    around = levels[start:stop]
    quiet = around <= quiet_threshold_dbfs(around)
    best: tuple[int, int, int] | None = None  # (length, -distance to the target, cut frame)
    for run_start, run_end in quiet_runs(quiet):
        first, last = start + run_start, start + run_end  # absolute frames, end exclusive
        if last <= low or first > high:
            continue  # the stretch does not reach into the window
        cut = min(max((first + last) // 2, low), high)
        key = (last - first, -abs(cut - target), cut)
        if best is None or key > best:
            best = key
    if best is None:  # nothing quiet reaches the window: the quietest frame in it
        quietest = low + int(np.argmin(levels[low:high]))
        return Cut(quietest, 0)
    return Cut(best[2], best[0])
