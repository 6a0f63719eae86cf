"""LiveTranslate 3.8 (qwen3.8-livetranslate-*): ``output_modalities``, nested audio, speaker detection."""

from __future__ import annotations

from typing import Any

from batchqwen.realtime.families.omni_v38 import nested_audio
from batchqwen.realtime.family import Family, SessionSpec


def session(spec: SessionSpec, family: Family) -> dict[str, Any]:
    """Turn detection is ``speaker_detection`` under ``audio.input``; source transcription is always on."""
    audio = nested_audio(family, spec.voice)
    audio["input"]["turn_detection"] = {"type": "speaker_detection"}
    return {
        "output_modalities": list(spec.modalities),
        "audio": audio,
        "input_audio_transcription": family.transcription(spec),
        "translation": {"language": spec.target_language},
    }
