"""Qwen-Audio realtime (qwen-audio-*-realtime-*): the flat Omni shape with ``pcm`` format names.

What sets it apart is in its row of the table: no ``session.finish`` (read through ``response.done``,
then close) and, as the v2 SDK sends it, input transcription without a named model.
"""

from __future__ import annotations

from batchqwen.realtime.families.omni import session

__all__ = ["session"]
