"""The 2025 Omni family (qwen3-omni-flash, qwen-omni-turbo, qwen3.5-omni): the flat session, as always.

The nested ``session.audio.*.format`` form the v1 SDK can send is checked (PCM at 16 / 24 kHz) and
otherwise ignored; unknown keys (e.g. ``translation``) are ignored.
"""

from __future__ import annotations

from typing import Any

from batchqwen.realtime.family import Family
from batchqwen.sim.settings import check_nested_audio

PARAMS: dict[str, str] = {}  # canonical error params are already this family's wire names


def defaults(row: Family) -> dict[str, Any]:
    """Overrides of the canonical defaults at ``session.created``: none (output echoed as ``pcm24``)."""
    return {}


def read_update(update: dict[str, Any]) -> dict[str, Any]:
    check_nested_audio(update.get("audio"))
    return {key: value for key, value in update.items() if key not in ("audio", "translation")}


def echo(session: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in session.items() if key != "translation"}
