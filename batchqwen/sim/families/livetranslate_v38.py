"""LiveTranslate 3.8 (qwen3.8-livetranslate-*): ``output_modalities``, nested audio as Omni 3.8, and turn
detection ``{type: "speaker_detection"}`` under ``session.audio.input``; source transcription always on."""

from __future__ import annotations

from typing import Any

from batchqwen.realtime.family import Family
from batchqwen.sim.families import livetranslate
from batchqwen.sim.families.omni_v38 import FLAT_AUDIO, nested_audio, read_nested_audio, refuse
from batchqwen.sim.settings import Rejected

SPEAKER_DETECTION = {"type": "speaker_detection"}
PARAMS = {
    "session.modalities": "session.output_modalities",
    "session.voice": "session.audio.output.voice",
    "session.input_audio_format": "session.audio.input.format.type",
    "session.output_audio_format": "session.audio.output.format.type",
}


def defaults(row: Family) -> dict[str, Any]:
    return livetranslate.defaults(row)


def read_update(update: dict[str, Any]) -> dict[str, Any]:
    refuse(update, FLAT_AUDIO, "use session.audio.input/output")
    refuse(update, ("modalities",), "use session.output_modalities")
    refuse(update, ("turn_detection",), "use session.audio.input.turn_detection")
    canonical = {key: value for key, value in update.items() if key not in ("audio", "output_modalities")}
    if "output_modalities" in update:
        canonical["modalities"] = update["output_modalities"]
    livetranslate.read_transcription(update, canonical)
    if "input_audio_transcription" in update and canonical["input_audio_transcription"] is None:
        raise Rejected(
            "Source transcription cannot be disabled on this model.", param="session.input_audio_transcription"
        )
    audio = update.get("audio")
    canonical.update(read_nested_audio(audio))
    if isinstance(audio, dict) and isinstance(audio.get("input"), dict) and "turn_detection" in audio["input"]:
        detection = audio["input"]["turn_detection"]
        if not isinstance(detection, dict) or detection.get("type") != SPEAKER_DETECTION["type"]:
            raise Rejected(
                f"Invalid turn_detection {detection!r}; only {{'type': 'speaker_detection'}}.",
                param="session.audio.input.turn_detection.type",
            )
    return canonical


def echo(session: dict[str, Any]) -> dict[str, Any]:
    audio = nested_audio(session)
    audio["input"]["turn_detection"] = dict(SPEAKER_DETECTION)
    return {
        **{key: session[key] for key in ("id", "object", "model")},
        "output_modalities": session["modalities"],
        "audio": audio,
        "input_audio_transcription": session["input_audio_transcription"],
        "translation": session["translation"],
    }
