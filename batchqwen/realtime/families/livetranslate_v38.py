"""LiveTranslate 3.8 (qwen3.8-livetranslate-*): ``output_modalities``, nested audio, speaker detection."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from batchqwen.realtime.families.omni_v38 import nested_audio
from batchqwen.realtime.family import Family, SessionSpec


def session(spec: SessionSpec, family: Family) -> dict[str, Any]:
    """Turn detection is ``speaker_detection`` under ``audio.input``; source transcription is always on,
    so, as the v2 SDK does, no ``input_audio_transcription`` goes unless a source language is given."""
    audio = nested_audio(family, spec.voice)
    audio["input"]["turn_detection"] = {"type": "speaker_detection"}
    config: dict[str, Any] = {
        "output_modalities": list(spec.modalities),
        "audio": audio,
        "translation": {"language": spec.target_language},
    }
    transcription = family.transcription(replace(spec, transcribe_input=True))
    if transcription:
        config["input_audio_transcription"] = transcription
    return config
