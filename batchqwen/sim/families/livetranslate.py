"""LiveTranslate (qwen3- / qwen3.5-livetranslate-*): flat fields plus ``translation {language}``.

The service detects speech itself: ``turn_detection`` may tune the detector but never turn it off.
Source transcription off is spelled ``{"model": null}``. ``output_modalities`` is 3.8's spelling.
"""

from __future__ import annotations

from typing import Any

from batchqwen.realtime.family import Family
from batchqwen.sim.families.omni_v38 import refuse
from batchqwen.sim.settings import Rejected

#: the detector behind the service's own speech detection: more sensitive than Omni's default (-40 dBFS
#: frames are voiced), the same padding and end-of-speech silence
DETECTION: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.0,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 800,
}
DEFAULT_TARGET = "en"
PARAMS: dict[str, str] = {}


def defaults(row: Family) -> dict[str, Any]:
    return {
        "input_audio_format": row.input_format,
        "output_audio_format": row.output_format,
        "input_audio_transcription": {"model": row.transcription_model},
        "turn_detection": dict(DETECTION),
        "translation": {"language": DEFAULT_TARGET},
    }


def read_transcription(update: dict[str, Any], canonical: dict[str, Any]) -> None:
    if "input_audio_transcription" in update:
        value = update["input_audio_transcription"]
        off = value is None or (isinstance(value, dict) and "model" in value and value["model"] is None)
        canonical["input_audio_transcription"] = None if off else value


def read_update(update: dict[str, Any]) -> dict[str, Any]:
    refuse(update, ("output_modalities",), "use session.modalities")
    canonical = {key: value for key, value in update.items() if key not in ("audio", "turn_detection")}
    read_transcription(update, canonical)
    if "turn_detection" in update:
        value = update["turn_detection"]
        if value is None:
            raise Rejected("Speech detection cannot be turned off on this model.", param="session.turn_detection")
        canonical["turn_detection"] = {**DETECTION, **value} if isinstance(value, dict) else value
    if "audio" in update:
        raise Rejected("Unsupported field session.audio for this model; use the flat fields.", param="session.audio")
    return canonical


def echo(session: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "object", "model", "modalities", "voice", "input_audio_format", "output_audio_format")
    return {
        **{key: session[key] for key in keys},
        "input_audio_transcription": session["input_audio_transcription"] or {"model": None},
        "translation": session["translation"],
    }
