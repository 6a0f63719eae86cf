"""Conversations: a manifest row with a ``turns`` column runs as one session, one response per turn.

Each turn (audio / image / video / prompt) is planned as a row of its own would be (:func:`plan_item`:
the same silence padding, the same checks of what the model takes) and decoded on its own; the session's
instructions are the row's (or the run's). On a model without text input a turn's prompt cannot be an
input text item: it travels as that turn's ``response.create`` instructions (the session's instructions,
a blank line, the prompt), for that turn's responses only. Only models whose family takes turns from
the client (``Family.turn == "manual"``) hold conversations; the others answer speech by themselves.

What the service bills: every response re-bills the conversation so far (the earlier turns' input and
tool outputs included), so a turn costs more the later it comes; :func:`turn_inputs` feeds the estimate
that counts it that way (:func:`batchqwen.cost.estimate_session_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from batchqwen import media
from batchqwen.cost import TurnInput
from batchqwen.errors import ItemError
from batchqwen.images import ImageFrames
from batchqwen.items import ConversationTurn, Item, PreparedInput, ToolCall, TurnOutput, TurnSpec
from batchqwen.plan import ItemPlan, plan_item
from batchqwen.realtime.events import Usage
from batchqwen.realtime.families import get_family


@dataclass(frozen=True)
class ConversationPlan:
    """A conversation row resolved: the session's plan (model, voice, modalities, instructions) and one
    plan per turn (its prompt, padding, and instructions when its prompt had to be folded into them)."""

    session: ItemPlan
    turns: tuple[ItemPlan, ...]
    turn_items: tuple[Item, ...]  # each turn as an item of its own, for decoding and probing

    def response_instructions(self, number: int) -> str | None:
        """Instructions of turn ``number``'s (0-based) responses: set only where its prompt was folded in."""
        turn = self.turns[number]
        folded = self.turn_items[number].prompt and not turn.prompt
        return turn.instructions if folded else None


def turn_item(item: Item, spec: TurnSpec) -> Item:
    """One turn of a conversation row as an item of its own (same id, settings and row)."""
    return replace(item, audio=spec.audio, images=spec.images, video=spec.video, prompt=spec.prompt, turns=())


def plan_conversation(item: Item, **options: Any) -> ConversationPlan:
    """Plan every turn of a conversation row (``options`` as :func:`plan_item` takes them).

    Raises ItemError for a model that cannot hold a conversation or a turn it cannot take (the turn named),
    UsageError for a bad model, voice or modalities.
    """
    items = tuple(turn_item(item, spec) for spec in item.turns)
    plans = []
    for number, each in enumerate(items, 1):
        try:
            plans.append(plan_item(each, **options))
        except ItemError as exc:
            raise ItemError(f"turn {number}: {exc}") from None
    first = plans[0]
    if get_family(first.model.protocol).turn != "manual":
        raise ItemError(f"{first.model.name} answers each utterance by itself: it takes no conversation turns")
    # the session's instructions: the row's (or the run's), where the model takes instructions at all
    instructions = (item.instructions or options.get("instructions")) if first.model.instructions else None
    notes = tuple(dict.fromkeys(note for p in plans for note in p.notes))
    session = replace(first, instructions=instructions, prompt=None, notes=notes)
    return ConversationPlan(session, tuple(plans), items)


def prepare_turns(
    conversation: ConversationPlan,
    *,
    video_frames: media.VideoFrames = "keyframes",
    image_frames: ImageFrames = "first",
) -> tuple[ConversationTurn, ...]:
    """Decode every turn (in a worker: pure CPU and file reads); a turn's bad media names the turn."""
    turns = []
    for number, (each, plan) in enumerate(zip(conversation.turn_items, conversation.turns, strict=True), 1):
        try:
            prepared = media.prepare_item(
                each,
                video_fps=plan.video_fps,
                pad_silence_seconds=plan.pad_silence_seconds,
                video_frames=video_frames,
                image_frames=image_frames,
                images_per_second=plan.images_per_second,
                pad_under_frames=plan.model.max_images_per_second is not None,
            )
        except ItemError as exc:
            raise type(exc)(f"turn {number}: {exc}") from None
        turns.append(ConversationTurn(prepared, plan.prompt, conversation.response_instructions(number - 1)))
    return tuple(turns)


def combined_media(turns: tuple[ConversationTurn, ...]) -> PreparedInput:
    """The turns' input as one, for the row's totals (audio seconds, images, padding, notes)."""
    return PreparedInput(
        pcm16=b"".join(t.media.pcm16 for t in turns),
        images=tuple(image for t in turns for image in t.media.images),
        padded_silence_seconds=sum(t.media.padded_silence_seconds for t in turns),
        notes=tuple(dict.fromkeys(note for t in turns for note in t.media.notes)),
    )


def turn_inputs(turns: tuple[ConversationTurn, ...]) -> list[TurnInput]:
    """What each prepared turn sends, for :func:`batchqwen.cost.estimate_session_tokens`."""
    out = []
    for turn in turns:
        folded = [turn.instructions] if turn.instructions else []
        out.append(
            TurnInput(
                audio_seconds=turn.media.audio_seconds,
                image_sizes=[(image.width, image.height) for image in turn.media.images],
                texts=[turn.prompt],
                response_texts=folded,
            )
        )
    return out


def usage_record(usage: Usage | None) -> dict[str, int | None] | None:
    """A turn's reported usage as the ``turns[].usage`` struct stores it (the service's own figures)."""
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "input_text_tokens": usage.input_text_tokens,
        "input_audio_tokens": usage.input_audio_tokens,
        "input_image_tokens": usage.input_image_tokens,
        "output_text_tokens": usage.output_text_tokens,
        "output_audio_tokens": usage.output_audio_tokens,
    }


def tool_call_record(call: ToolCall) -> dict[str, Any]:
    """One ``tool_calls`` entry."""
    return {
        "turn": call.turn,
        "call_id": call.call_id,
        "name": call.name,
        "arguments": call.arguments,
        "output": call.output,
        "error": call.error,
        "seconds": None if call.seconds is None else round(call.seconds, 6),
    }


def turn_record(turn: TurnOutput, *, wav: str | None, audio_seconds: float | None) -> dict[str, Any]:
    """One ``turns`` entry: the turn's transcripts, text, tool calls, WAV and usage."""
    return {
        "turn": turn.index,
        "input_transcript": turn.input_transcript,
        "output_text": turn.output_text,
        "output_transcript": turn.output_transcript,
        "output_wav": wav,
        "output_audio_seconds": audio_seconds,
        "response_ids": list(turn.response_ids),
        "tool_calls": [tool_call_record(call) for call in turn.tool_calls],
        "usage": usage_record(turn.usage),
    }
