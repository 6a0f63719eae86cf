"""What the simulator answers: a deterministic description of the input since the previous response
("I heard 3.2 s of audio (...)"), or a function call when a declared tool is named. Plainly not a model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from batchqwen.sim.analysis import INPUT_BYTES_PER_MS, ImageInfo, clip, fingerprint, loudest_dbfs, speech_segments
from batchqwen.sim.lengths import lengthen


@dataclass
class UserItem:
    """One user item in the conversation: committed audio (+ images), input text, or a tool output."""

    id: str
    kind: Literal["audio", "text", "tool_output"]
    pcm: bytes = b""
    images: tuple[ImageInfo, ...] = ()
    text: str = ""
    call_name: str = ""


@dataclass
class Answer:
    text: str
    fingerprint: str
    call: tuple[str, str] | None = None  # (tool name, arguments JSON) when the answer is a function call


def describe(
    pending: Sequence[UserItem], instructions: str, threshold_dbfs: float, tools: Sequence[dict[str, Any]] | None
) -> Answer:
    """The answer to the items since the last response; ``tools`` only where the model calls them."""
    pcm = b"".join(i.pcm for i in pending if i.kind == "audio")
    images = [img for i in pending for img in i.images]
    texts = [i.text for i in pending if i.kind != "audio"]
    key = fingerprint(pcm, (img.digest for img in images), instructions, texts)
    call = function_call(pending, instructions, tools) if tools is not None else None
    if call is not None:
        return Answer(text="", fingerprint=key, call=call)
    sentences = [f"{heard(pcm, threshold_dbfs)} and {saw(images)}."]
    for item in pending:
        if item.kind == "text":
            sentences.append(f"You wrote: '{clip(item.text)}'.")
        elif item.kind == "tool_output":
            sentences.append(f"Tool {item.call_name} returned: '{clip(item.text)}'.")
    sentences.append(f"Instructions: '{clip(instructions)}'." if instructions else "No instructions.")
    seconds, prompt = len(pcm) / (INPUT_BYTES_PER_MS * 1000), " ".join([instructions, *texts])
    return Answer(
        text=lengthen(" ".join(sentences), input_seconds=seconds, prompt=prompt, fingerprint=key), fingerprint=key
    )


#: names for the answer's wording; an unlisted code is named by itself
LANGUAGE_NAMES = {
    "zh": "Chinese", "en": "English", "ja": "Japanese", "ko": "Korean", "fr": "French", "de": "German",
    "es": "Spanish", "ru": "Russian", "it": "Italian", "pt": "Portuguese", "yue": "Cantonese",
    "ar": "Arabic", "id": "Indonesian", "vi": "Vietnamese", "th": "Thai", "hi": "Hindi", "el": "Greek",
    "tr": "Turkish",
}  # fmt: skip


def translate(pending: Sequence[UserItem], session: dict[str, Any], threshold_dbfs: float) -> Answer:
    """A translator's answer to one utterance: the target language named, then what was heard and seen."""
    pcm = b"".join(i.pcm for i in pending if i.kind == "audio")
    images = [img for i in pending for img in i.images]
    target = str((session.get("translation") or {}).get("language") or "")
    source = (session.get("input_audio_transcription") or {}).get("language")
    origin = f" from {LANGUAGE_NAMES.get(source, source)}" if source else ""
    into = f"Translation into {LANGUAGE_NAMES.get(target, target)}{origin}"
    text = f"{into}: {heard(pcm, threshold_dbfs)} and {saw(images)}."
    key = fingerprint(pcm, (img.digest for img in images), None, ())
    seconds = len(pcm) / (INPUT_BYTES_PER_MS * 1000)
    return Answer(
        text=lengthen(text, input_seconds=seconds, prompt="", fingerprint=key, translation=True), fingerprint=key
    )


def heard(pcm: bytes, threshold_dbfs: float) -> str:
    seconds = len(pcm) / (INPUT_BYTES_PER_MS * 1000)
    segments = speech_segments(pcm, threshold_dbfs)
    plural = "" if len(segments) == 1 else "s"
    level = f"loudest {loudest_dbfs(pcm):.0f} dBFS"
    return f"I heard {seconds:.1f} s of audio ({len(segments)} speech segment{plural}, {level})"


def saw(images: Sequence[ImageInfo]) -> str:
    if not images:
        return "saw no image"
    described = "; ".join(f"{i.width}×{i.height}, mostly {i.color}" for i in images)
    return f"saw {len(images)} image{'' if len(images) == 1 else 's'} ({described})"


def transcript(pcm: bytes, threshold_dbfs: float) -> str:
    """The 'input transcript': not ASR but the speech segments, ``[speech 0.4–1.6 s] ...``."""
    segments = speech_segments(pcm, threshold_dbfs)
    if not segments:
        return "[no speech]"
    return " ".join(f"[speech {s / 1000:.1f}–{e / 1000:.1f} s]" for s, e in segments)


def function_call(
    pending: Sequence[UserItem], instructions: str, tools: Sequence[dict[str, Any]]
) -> tuple[str, str] | None:
    """A call when a declared function's name appears in the instructions or a new input text."""
    if any(i.kind == "tool_output" for i in pending):
        return None
    prompt = " ".join([instructions, *(i.text for i in pending if i.kind == "text")])
    for tool in tools:
        function: dict[str, Any] = tool["function"] if isinstance(tool.get("function"), dict) else tool
        name = function.get("name")
        if isinstance(name, str) and name and name in prompt:
            props = (function.get("parameters") or {}).get("properties") or {}
            args = {key: _example_value(spec, prompt) for key, spec in props.items()}
            return name, json.dumps(args, ensure_ascii=False, sort_keys=True)
    return None


def _example_value(spec: Any, prompt: str) -> Any:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "string":
        return clip(prompt, 40)
    if kind in ("integer", "number"):
        return len(prompt)
    if kind == "boolean":
        return True
    return None
