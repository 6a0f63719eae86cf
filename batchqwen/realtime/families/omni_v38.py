"""Omni 3.8 (qwen3.8-omni-*): audio formats and voice nested under ``session.audio``."""

from __future__ import annotations

from typing import Any

from batchqwen.realtime.family import Family, SessionSpec


def nested_audio(family: Family, voice: str) -> dict[str, Any]:
    """``session.audio``: ``input.format {type, sample_rate}``, ``output.format`` and ``output.voice``."""
    return {
        "input": {"format": {"type": family.input_format, "sample_rate": 16_000}},
        "output": {"format": {"type": family.output_format, "sample_rate": 24_000}, "voice": voice},
    }


def session(spec: SessionSpec, family: Family) -> dict[str, Any]:
    """``modalities`` flat, audio nested; manual turns (``turn_detection`` null)."""
    config: dict[str, Any] = {
        "modalities": list(spec.modalities),
        "audio": nested_audio(family, spec.voice),
        "input_audio_transcription": family.transcription(spec),
        "turn_detection": None,
    }
    if spec.instructions is not None:
        config["instructions"] = spec.instructions
    return config
