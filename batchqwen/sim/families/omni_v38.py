"""Omni 3.8 (qwen3.8-omni-*): audio formats and the voice nested under ``session.audio``.

``session.audio.input.format {type, sample_rate: 16000}``, ``session.audio.output.format {type,
sample_rate: 24000}`` and ``session.audio.output.voice``; ``modalities`` stays flat. The flat
``voice`` / ``*_audio_format`` fields are not this family's and are refused.
"""

from __future__ import annotations

from typing import Any

from batchqwen.realtime.family import Family
from batchqwen.sim.analysis import INPUT_RATE, OUTPUT_RATE
from batchqwen.sim.settings import Rejected, check_nested_audio

FLAT_AUDIO = ("voice", "input_audio_format", "output_audio_format")
PARAMS = {
    "session.voice": "session.audio.output.voice",
    "session.input_audio_format": "session.audio.input.format.type",
    "session.output_audio_format": "session.audio.output.format.type",
}


def defaults(row: Family) -> dict[str, Any]:
    return {"input_audio_format": row.input_format, "output_audio_format": row.output_format}


def refuse(update: dict[str, Any], keys: tuple[str, ...], hint: str) -> None:
    """Keys of another family's shape: an ``invalid_value`` on the first one found."""
    for key in keys:
        if key in update:
            raise Rejected(f"Unsupported field session.{key} for this model; {hint}.", param=f"session.{key}")


def read_nested_audio(audio: Any) -> dict[str, Any]:
    """``session.audio`` -> the canonical ``input_audio_format`` / ``output_audio_format`` / ``voice``."""
    check_nested_audio(audio)
    if audio is None:
        return {}
    out: dict[str, Any] = {}
    for side in ("input", "output"):
        fmt = audio.get(side, {}).get("format") if isinstance(audio.get(side), dict) else None
        if isinstance(fmt, dict) and fmt.get("type") is not None:
            out[f"{side}_audio_format"] = fmt["type"]
    output = audio.get("output")
    if isinstance(output, dict) and "voice" in output:
        out["voice"] = output["voice"]
    return out


def nested_audio(session: dict[str, Any]) -> dict[str, Any]:
    return {
        "input": {"format": {"type": session["input_audio_format"], "sample_rate": INPUT_RATE}},
        "output": {
            "format": {"type": session["output_audio_format"], "sample_rate": OUTPUT_RATE},
            "voice": session["voice"],
        },
    }


def read_update(update: dict[str, Any]) -> dict[str, Any]:
    refuse(update, FLAT_AUDIO, "use session.audio.input/output")
    refuse(update, ("output_modalities",), "use session.modalities")
    canonical = {key: value for key, value in update.items() if key not in ("audio", "translation")}
    canonical.update(read_nested_audio(update.get("audio")))
    return canonical


def echo(session: dict[str, Any]) -> dict[str, Any]:
    flat = {key: value for key, value in session.items() if key not in (*FLAT_AUDIO, "translation")}
    return {**flat, "audio": nested_audio(session)}
