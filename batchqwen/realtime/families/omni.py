"""The 2025 Omni family (qwen3-omni-flash, qwen-omni-turbo, qwen3.5-omni): flat session fields."""

from __future__ import annotations

from typing import Any

from batchqwen.realtime.family import Family, SessionSpec


def session(spec: SessionSpec, family: Family) -> dict[str, Any]:
    """Flat ``modalities`` / ``voice`` / ``*_audio_format``; manual turns (``turn_detection`` null)."""
    config: dict[str, Any] = {
        "modalities": list(spec.modalities),
        "voice": spec.voice,
        "input_audio_format": family.input_format,
        "output_audio_format": family.output_format,
        "input_audio_transcription": family.transcription(spec),
        "turn_detection": None,
    }
    if spec.instructions is not None:
        config["instructions"] = spec.instructions
    return config
