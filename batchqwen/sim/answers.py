"""What the simulator answers: a deterministic description of the input since the previous response
("I heard 3.2 s of audio (...)"), with what earlier turns brought; function calls are planned by
:mod:`batchqwen.sim.tools`. Plainly not a model."""

from __future__ import annotations

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
    calls: tuple[tuple[str, str], ...] = ()  # (tool name, arguments JSON) of each call, when the answer calls


def input_key(pending: Sequence[UserItem], instructions: str) -> str:
    """The fingerprint of what a response answers (its audio, images, instructions and texts), as
    :func:`describe` computes it; for the responses that call tools instead."""
    pcm = b"".join(i.pcm for i in pending if i.kind == "audio")
    texts = [i.text for i in pending if i.kind != "audio"]
    return fingerprint(pcm, (img.digest for i in pending for img in i.images), instructions, texts)


def describe(pending: Sequence[UserItem], instructions: str, threshold_dbfs: float, memory: str = "") -> Answer:
    """The answer to the items since the last response; ``memory``: the :func:`recall` of earlier turns."""
    pcm = b"".join(i.pcm for i in pending if i.kind == "audio")
    images = [img for i in pending for img in i.images]
    texts = [i.text for i in pending if i.kind != "audio"]
    key = fingerprint(pcm, (img.digest for img in images), instructions, texts)
    sentences = [f"{heard(pcm, threshold_dbfs)} and {saw(images)}."]
    if memory:
        sentences.append(memory)
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


def summarize(items: Sequence[UserItem]) -> str:
    """What one user turn brought, as the session remembers it: ``2.0 s of audio, 1 image, you wrote '...'``."""
    seconds = sum(len(i.pcm) for i in items if i.kind == "audio") / (INPUT_BYTES_PER_MS * 1000)
    images = sum(len(i.images) for i in items)
    parts = [f"{seconds:.1f} s of audio"] if any(i.kind == "audio" for i in items) else []
    if images:
        parts.append(f"{images} image{'' if images == 1 else 's'}")
    parts += [f"you wrote '{clip(i.text, 40)}'" for i in items if i.kind == "text"]
    return ", ".join(parts) or "nothing"


def recall(turns: Sequence[tuple[int, str]], limit: int = 8) -> str:
    """The memory sentence of an answer: the earlier turns still in the session's context, by number
    (the last ``limit`` of them); empty when there are none."""
    if not turns:
        return ""
    shown = "; ".join(f"turn {number}: {summary}" for number, summary in turns[-limit:])
    more = f" (and {len(turns) - limit} before)" if len(turns) > limit else ""
    return f"Earlier in this session{more}: {shown}."
