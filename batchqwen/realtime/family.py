"""What differs between the realtime protocol families, as one frozen row of data each.

The families share the event vocabulary and the turn logic (:mod:`batchqwen.realtime.protocol`); they
differ in the facts below and in the shape of ``session.update``, which each family's small module in
:mod:`batchqwen.realtime.families` builds from one :class:`SessionSpec`. Facts and their sources are in
``docs/realtime_protocol.md`` ("Families").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: manual: the client appends, commits and asks for each response; server: the service detects speech
#: (speakers) on the audio's own timeline and answers every utterance by itself
TurnMode = Literal["manual", "server"]
#: finish_ack: session.finish -> session.finished, then the service closes; finish_no_ack: session.finish,
#: after which a close is the normal end; close: no session.finish at all, the client closes after the
#: last response.done
SessionEnd = Literal["finish_ack", "finish_no_ack", "close"]


@dataclass(frozen=True)
class SessionSpec:
    """What one session is asked to be, independent of how a family spells it."""

    modalities: tuple[str, ...]
    voice: str
    instructions: str | None = None
    transcribe_input: bool = True
    transcription_model: str | None = None  # None: the family's own
    source_language: str | None = None  # translation families: the spoken language, when known
    target_language: str | None = None  # translation families: the language to translate into
    options: Mapping[str, Any] = field(default_factory=dict)  # temperature, max_tokens, ... as given


@dataclass(frozen=True)
class Family:
    """One protocol family: a row of facts plus the function that spells its ``session.update``."""

    name: str
    turn: TurnMode
    end: SessionEnd
    input_format: str  # the wire name of PCM16LE mono 16 kHz input
    output_format: str  # the wire name of PCM16LE mono 24 kHz output
    transcription_model: str  # input transcription model when none is given ("": name none)
    transcription_optional: bool  # False: source transcription cannot be turned off
    translation: bool  # takes a target language; every utterance is answered with its translation
    response_object: bool  # response.create carries a ``response`` object (omni_v38 may send none)
    modalities_key: str  # "modalities" or "output_modalities"
    session: Callable[[SessionSpec, Family], dict[str, Any]] = field(repr=False, compare=False)
    source: str = ""

    def transcription(self, spec: SessionSpec) -> dict[str, Any] | None:
        """The ``input_audio_transcription`` object: the model, plus the source language where known."""
        if not spec.transcribe_input and self.transcription_optional:
            return None
        model = spec.transcription_model or self.transcription_model
        config: dict[str, Any] = {"model": model} if model else {}
        if spec.source_language:
            config["language"] = spec.source_language
        return config
