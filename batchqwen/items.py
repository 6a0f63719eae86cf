"""The data one item carries on its way: manifest row -> prepared media -> turn request -> turn result."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from batchqwen.models import ModelInfo
from batchqwen.realtime.events import Usage
from batchqwen.storage.locations import Remote

INPUT_SAMPLE_RATE = 16_000
INPUT_BYTES_PER_SECOND = INPUT_SAMPLE_RATE * 2  # PCM16 mono
CHUNK_BYTES = 3_200  # 100 ms of 16 kHz PCM16 mono, as the official samples send


@dataclass(frozen=True)
class TurnSpec:
    """One turn of a conversation row (the manifest's ``turns`` column), paths resolved; nothing decoded."""

    audio: Path | None = None
    images: tuple[Path, ...] = ()
    video: Path | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class Item:
    """One manifest row, paths resolved against the manifest's folder; nothing decoded yet.

    A media file is a local :class:`Path` or a :class:`Remote` (bucket or URL), fetched during preparation.
    """

    id: str
    row: int  # 1-based data-row number in the manifest (header not counted)
    audio: Path | Remote | None = None
    images: tuple[Path | Remote, ...] = ()
    video: Path | Remote | None = None
    prompt: str | None = None
    instructions: str | None = None
    model: str | None = None
    voice: str | None = None
    modalities: tuple[str, ...] | None = None
    target_language: str | None = None  # translation models: translate into this language
    source_language: str | None = None  # translation models: the spoken language, when known
    passthrough: dict[str, Any] = field(default_factory=dict)  # unknown columns, copied to results
    content_hash: str = ""  # row content + file size/mtime: a changed item under the same id is noticed
    turns: tuple[TurnSpec, ...] = ()  # a conversation: one session, one response per turn, in order
    tools: tuple[str, ...] | None = None  # the tools this row offers (None: every tool of --tools)
    refused: tuple[str, ...] = ()  # media the row may not name (a local file in a manifest from a bucket)


@dataclass(frozen=True)
class TimedImage:
    """A JPEG ready to send, with the moment (seconds into the audio) it belongs to."""

    at_seconds: float
    jpeg: bytes
    width: int
    height: int


class PcmStream(Protocol):
    """PCM16LE mono 16 kHz audio too long to hold in memory: its size known up front, read in order."""

    @property
    def nbytes(self) -> int: ...

    def chunks(self, size: int) -> Iterator[bytes]:
        """The audio from its start, ``size`` bytes at a time (the last piece may be shorter); every call
        starts again from the beginning (a retried session sends it again)."""
        ...


@dataclass(frozen=True)
class PreparedInput:
    """Decoded media of one item, exactly as it will be sent."""

    pcm16: bytes = b""  # PCM16LE mono 16 kHz
    images: tuple[TimedImage, ...] = ()  # in time order
    padded_silence_seconds: float = 0.0  # silence added because the item had no audio
    notes: tuple[str, ...] = ()  # what preparation decided (how video frames were picked), for the row's notes
    stream: PcmStream | None = None  # the audio, read while it is sent, instead of ``pcm16`` (long recordings)

    @property
    def audio_seconds(self) -> float:
        return self.pcm_bytes / INPUT_BYTES_PER_SECOND

    @property
    def pcm_bytes(self) -> int:
        """Bytes of audio to send (from ``stream`` when there is one)."""
        return self.stream.nbytes if self.stream is not None else len(self.pcm16)

    def pcm_chunks(self, size: int) -> Iterator[bytes]:
        """The audio to send, ``size`` bytes at a time (the last piece may be shorter)."""
        if self.stream is not None:
            yield from self.stream.chunks(size)
            return
        pcm = self.pcm16
        for start in range(0, len(pcm), size):
            yield pcm[start : start + size]


@dataclass(frozen=True)
class ConversationTurn:
    """One turn of a session: what it sends and, where a prompt had to be folded into instructions (a model
    without text input), the instructions of that turn's response."""

    media: PreparedInput
    prompt: str | None = None  # sent as an input_text item (models with text input)
    instructions: str | None = None  # response.create instructions for this turn only; None: the session's


@dataclass(frozen=True)
class TurnRequest:
    """Everything one realtime session needs for one item, already resolved and validated."""

    model: ModelInfo
    voice: str
    modalities: tuple[str, ...]
    media: PreparedInput
    instructions: str | None = None
    prompt: str | None = None  # sent as an input_text item; only for models with text_input
    transcribe_input: bool = True
    transcription_model: str | None = None  # None: the protocol family's own
    source_language: str | None = None  # translation models: the spoken language, when known
    target_language: str | None = None  # translation models: the language to translate into
    chunk_bytes: int = CHUNK_BYTES
    session_options: dict[str, Any] = field(default_factory=dict)  # temperature, max_tokens, ... as given
    #: a conversation: every turn in order (``media`` and ``prompt`` above are then the first turn's);
    #: empty: one turn of ``media`` and ``prompt``
    turns: tuple[ConversationTurn, ...] = ()

    @property
    def all_turns(self) -> tuple[ConversationTurn, ...]:
        """The turns of the session, in order (one for a plain item)."""
        return self.turns or (ConversationTurn(self.media, self.prompt),)


@dataclass(frozen=True)
class Utterance:
    """One utterance the service detected and answered on its own (LiveTranslate): times in the input."""

    start_seconds: float | None
    end_seconds: float | None
    source_text: str  # the input transcription of the utterance (source language)
    text: str  # the answer: the translation (text, or the transcript of the spoken translation)


@dataclass
class ToolCall:
    """One function call the model made, and what answered it. ``arguments`` and ``output`` are JSON text."""

    call_id: str
    name: str
    arguments: str
    turn: int = 1  # 1-based turn of the session
    output: str | None = None  # None: not answered (no tools to run, or past --max-tool-rounds)
    error: str | None = None  # the tool raised, timed out, was not offered, or got arguments off its schema
    seconds: float | None = None  # time the tool took


@dataclass
class TurnOutput:
    """What one turn of a session produced (several responses when the model called tools)."""

    index: int  # 1-based
    input_transcript: str | None = None
    output_text: str = ""
    output_transcript: str = ""
    output_pcm: bytes = b""
    usage: Usage | None = None  # summed over the turn's responses
    response_ids: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class TurnResult:
    """What came back from one session. Latencies are seconds from the start of the connect."""

    session_id: str = ""
    response_ids: list[str] = field(default_factory=list)
    input_transcript: str = ""
    output_text: str = ""  # response.text.* (text-only mode)
    output_transcript: str = ""  # response.audio_transcript.* (text+audio mode)
    output_pcm: bytes = b""  # PCM16LE mono at the model's output rate
    usage: Usage | None = None  # summed over the responses of the turn
    utterances: list[Utterance] = field(default_factory=list)  # server-detected turns, in order
    turns: list[TurnOutput] = field(default_factory=list)  # manual turns: each turn's own output, in order
    #: set when a turn stopped because the model asked for more tool rounds than allowed (the message)
    tool_round_limit: str | None = None
    connect_seconds: float | None = None
    first_text_seconds: float | None = None
    first_audio_seconds: float | None = None
    total_seconds: float | None = None
