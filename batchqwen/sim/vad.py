"""The server's speech detection: an incremental energy VAD over the session's audio timeline.

Positions are byte offsets of PCM16LE 16 kHz audio since the session's first audio (32 bytes per ms).
The detector only marks where speech starts and stops; the session commits and answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from batchqwen.sim.analysis import FRAME_BYTES, FRAME_MS, INPUT_BYTES_PER_MS, MIN_SPEECH_FRAMES, vad_threshold_dbfs


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
