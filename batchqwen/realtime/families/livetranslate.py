"""LiveTranslate (qwen3- / qwen3.5-livetranslate-*-realtime): flat fields plus ``translation``."""

from __future__ import annotations

from typing import Any

from batchqwen.realtime.family import Family, SessionSpec


def session(spec: SessionSpec, family: Family) -> dict[str, Any]:
    """No ``turn_detection``: the service's own speech detection answers each utterance.

    Source transcription off is spelled ``{"model": null}`` here (as the v2 SDK sends it), not null.
    """
    return {
        "modalities": list(spec.modalities),
        "voice": spec.voice,
        "input_audio_format": family.input_format,
        "output_audio_format": family.output_format,
        "input_audio_transcription": family.transcription(spec) or {"model": None},
        "translation": {"language": spec.target_language},
    }
