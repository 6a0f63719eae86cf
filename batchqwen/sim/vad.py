"""The server's speech detection: now in :mod:`batchqwen.vad`, shared with the runner's splitter."""

from batchqwen.vad import Mark, SpeechDetector

__all__ = ["Mark", "SpeechDetector"]
