"""Qwen-Audio realtime (qwen-audio-*): the flat Omni shape with ``pcm`` format names.

Its differences are rows of data: no ``session.finish`` (the table's ``end`` is ``close``: the request is
answered ``invalid_event`` and the session stays open), no images (``ModelInfo.images``), any voice name
(its list is not published).
"""

from __future__ import annotations

from typing import Any

from batchqwen.realtime.family import Family
from batchqwen.sim.families.omni import PARAMS, echo, read_update

__all__ = ["PARAMS", "defaults", "echo", "read_update"]


def defaults(row: Family) -> dict[str, Any]:
    return {"input_audio_format": row.input_format, "output_audio_format": row.output_format}
