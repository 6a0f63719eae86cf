"""``session.update`` validation as the service does it: the update is checked as a whole, so a rejected
update changes nothing, and every refusal is an ``invalid_request_error`` that leaves the session open."""

from __future__ import annotations

from typing import Any

from batchqwen.models import REGISTRY, ModelInfo
from batchqwen.sim.analysis import INPUT_RATE, OUTPUT_RATE

AUDIO_FORMATS = ("pcm16", "pcm", "pcm24")
SAMPLING_PARAMS = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "repetition_penalty")
DEFAULT_TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 800,
}
MODALITIES = (["text"], ["audio", "text"])  # sorted


class Rejected(Exception):
    """A client event the service refuses with an invalid_request_error; the session stays open."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


def default_session(model_name: str, model: ModelInfo | None, session_id: str) -> dict[str, Any]:
    """The effective session right after the handshake."""
    return {
        "id": session_id,
        "object": "realtime.session",
        "model": model_name,
        "modalities": ["text", "audio"],
        "voice": model.default_voice if model else "",
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm24",
        "instructions": "",
        "input_audio_transcription": None,
        "turn_detection": dict(DEFAULT_TURN_DETECTION),
        "tools": [],
        "tool_choice": "auto",
        "temperature": None if model and not model.sampling_params else 0.9,
        "max_tokens": "inf",
        "translation": None,  # {"language": code} on translation models
    }


def apply_update(
    model: ModelInfo,
    model_name: str,
    session: dict[str, Any],
    update: dict[str, Any],
    *,
    transcription_model: str = "gummy-realtime-v1",
    refuse_tools: bool = True,
) -> dict[str, Any]:
    """The session after ``update`` (in the canonical flat form a family's ``read_update`` gives), or
    :class:`Rejected` for the first invalid field. ``transcription_model``: the family's, when none is named;
    ``refuse_tools``: tools on a model without function calling are an error (else accepted, never called).
    """
    new = dict(session)
    if "modalities" in update:
        mods = update["modalities"]
        if not isinstance(mods, list) or sorted(map(str, mods)) not in MODALITIES:
            raise Rejected(
                f"Invalid modalities: {mods!r}; supported: ['text'] and ['text', 'audio'].",
                param="session.modalities",
            )
        new["modalities"] = ["text"] if mods == ["text"] else ["text", "audio"]
    voice = update.get("voice")
    if voice is not None:
        # where the list is published only its voices are taken (and, where the model takes cloned voices,
        # any id: an enrolled voice is not in the list); elsewhere any non-empty name
        open_list = not model.voices_published or model.cloned_voices
        unknown = not (isinstance(voice, str) and voice) if open_list else voice not in model.voices
        if unknown:
            raise Rejected(
                f"Invalid voice {voice!r} for {model_name}; supported: {', '.join(model.voices)}.",
                param="session.voice",
            )
        new["voice"] = voice
    for key in ("input_audio_format", "output_audio_format"):
        value = update.get(key)
        if value is not None:
            if value not in AUDIO_FORMATS:
                raise Rejected(
                    f"Invalid {key} {value!r}; supported: {', '.join(AUDIO_FORMATS)}.",
                    param=f"session.{key}",
                )
            new[key] = value
    if "instructions" in update:
        text = update["instructions"]
        if text is not None and not isinstance(text, str):
            raise Rejected("instructions must be a string.", param="session.instructions")
        if text and not model.instructions:
            raise Rejected(f"Model {model_name} takes no instructions.", param="session.instructions")
        new["instructions"] = text or ""
    if "input_audio_transcription" in update:
        value = update["input_audio_transcription"]
        if value is not None and not isinstance(value, dict):
            raise Rejected(
                "input_audio_transcription must be an object or null.",
                param="session.input_audio_transcription",
            )
        new["input_audio_transcription"] = None if value is None else _transcription(model, value, transcription_model)
    if "turn_detection" in update:
        new["turn_detection"] = check_turn_detection(update["turn_detection"])
    check_sampling(model, model_name, update, new)
    if "tools" in update:
        tools = update["tools"] or []
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise Rejected("tools must be a list of objects.", param="session.tools")
        if tools and update.get("enable_search"):
            raise Rejected("tools and enable_search cannot be used together.", param="session.tools")
        if tools and not model.tools and refuse_tools:
            with_tools = ", ".join(name for name, info in REGISTRY.items() if info.tools)
            raise Rejected(
                f"Model {model_name} does not support tools (function calling); models with tools: {with_tools}.",
                param="session.tools",
            )
        new["tools"] = tools
    if "smooth_output" in update:
        new["smooth_output"] = update["smooth_output"]
    if "tool_choice" in update:
        new["tool_choice"] = update["tool_choice"]
    if model.translation is not None:  # elsewhere ``translation`` is an unknown key, ignored
        _check_translation(model, model_name, update, new)
    return new


def _transcription(model: ModelInfo, value: dict[str, Any], default_model: str) -> dict[str, Any]:
    config = dict(value)
    if value.get("model") or default_model:
        config["model"] = value.get("model") or default_model
    language = value.get("language")
    if model.translation is not None and language is not None and language not in model.translation.sources:
        raise Rejected(
            f"Unsupported source language {language!r}; supported: {', '.join(model.translation.sources)}.",
            param="session.input_audio_transcription.language",
        )
    return config


def _check_translation(model: ModelInfo, model_name: str, update: dict[str, Any], new: dict[str, Any]) -> None:
    """The target language must be one the model serves; audio output only for the ones it speaks."""
    assert model.translation is not None
    languages = model.translation
    value = update.get("translation")
    if value is not None:
        if not isinstance(value, dict):
            raise Rejected("translation must be an object.", param="session.translation")
        language = value.get("language")
        if language is not None:
            if language not in languages.targets:
                raise Rejected(
                    f"Unsupported target language {language!r} for {model_name}; supported: "
                    f"{', '.join(languages.targets)}.",
                    param="session.translation.language",
                )
            new["translation"] = {"language": language}
    target = (new.get("translation") or {}).get("language")
    if "audio" in new["modalities"] and target not in languages.speech_targets:
        raise Rejected(
            f"Target language {target!r} has no speech output on {model_name}: use modalities ['text'], or a"
            f" target among {', '.join(languages.speech_targets)}.",
            param="session.translation.language",
        )


def check_nested_audio(audio: Any) -> None:
    """The SDK's newer ``session.audio.{input,output}.format`` form: PCM at the model's rates only."""
    if audio is None:
        return
    if not isinstance(audio, dict):
        raise Rejected("audio must be an object.", param="session.audio")
    for side, rate in (("input", INPUT_RATE), ("output", OUTPUT_RATE)):
        fmt = (audio.get(side) or {}).get("format") if isinstance(audio.get(side), dict) else None
        if fmt is None:
            continue
        if not isinstance(fmt, dict) or fmt.get("type", "pcm") not in AUDIO_FORMATS:
            raise Rejected(f"Unsupported {side} audio format {fmt!r}.", param=f"session.audio.{side}.format.type")
        if fmt.get("sample_rate", rate) != rate:
            raise Rejected(
                f"Unsupported {side} sample rate {fmt.get('sample_rate')!r}; only {rate} Hz.",
                param=f"session.audio.{side}.format.sample_rate",
            )


def check_turn_detection(value: Any) -> dict[str, Any] | None:
    """``server_vad`` with its ranges; unset fields take the service's defaults."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Rejected("turn_detection must be an object or null.", param="session.turn_detection")
    merged = {**DEFAULT_TURN_DETECTION, **{k: v for k, v in value.items() if v is not None}}
    if merged["type"] != "server_vad":
        raise Rejected(
            f"Invalid turn_detection type {merged['type']!r}; only 'server_vad'.",
            param="session.turn_detection.type",
        )
    ranges = {
        "threshold": (-1.0, 1.0),
        "silence_duration_ms": (200, 6000),
        "prefix_padding_ms": (0, 6000),
    }
    for key, (low, high) in ranges.items():
        number = merged[key]
        if isinstance(number, bool) or not isinstance(number, int | float) or not low <= number <= high:
            raise Rejected(
                f"Invalid turn_detection.{key} {number!r}; must be in [{low}, {high}].",
                param=f"session.turn_detection.{key}",
            )
    return merged


def check_sampling(model: ModelInfo, model_name: str, update: dict[str, Any], new: dict[str, Any]) -> None:
    for key in SAMPLING_PARAMS:
        if update.get(key) is None:
            continue
        if not model.sampling_params:
            raise Rejected(f"Model {model_name} does not support parameter '{key}'.", param=f"session.{key}")
        value = update[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Rejected(f"{key} must be a number.", param=f"session.{key}")
        if (key == "temperature" and not 0 <= value < 2) or (key == "top_p" and not 0 < value <= 1):
            raise Rejected(f"Invalid {key} {value!r}.", param=f"session.{key}")
        new[key] = value
    if update.get("max_tokens") is not None:
        value = update["max_tokens"]
        if value != "inf" and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= model.max_output_tokens
        ):
            raise Rejected(
                f"Invalid max_tokens {value!r}; must be in [1, {model.max_output_tokens}].",
                param="session.max_tokens",
            )
        new["max_tokens"] = value
