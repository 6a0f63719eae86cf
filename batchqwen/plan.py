"""How one manifest row becomes a session: the run's defaults under the row's own settings.

One pure function serves both the run and the dry run, so an estimate is made of exactly what will be
sent: the same model, voice and modalities, the prompt in the same place, the same silence padding.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchqwen.items import Item
from batchqwen.models import ModelInfo, get_model, validate_modalities, validate_voice


@dataclass(frozen=True)
class ItemPlan:
    """An item resolved against the defaults."""

    model: ModelInfo
    voice: str
    modalities: tuple[str, ...]
    instructions: str | None
    prompt: str | None  # sent as input text; None when the model takes it inside the instructions
    pad_silence_seconds: float  # silence to send when the item has no audio (0: none needed)


def plan_item(
    item: Item,
    *,
    model: str,
    voice: str | None,
    modalities: tuple[str, ...],
    instructions: str | None,
    pad_silence_seconds: float,
) -> ItemPlan:
    """Per-row overrides over the run's defaults. Raises UsageError for a bad model, voice or modalities."""
    info = get_model(item.model or model)
    chosen_voice = validate_voice(info, item.voice or voice)
    chosen_modalities = validate_modalities(item.modalities or modalities)
    text = item.instructions or instructions
    prompt = item.prompt
    if prompt and not info.text_input:
        # models without text input take the prompt only as instructions
        text = f"{text}\n\n{prompt}" if text else prompt
        prompt = None
    # the service needs audio before any image and before a commit; only a text-input model with a
    # prompt and nothing to look at can do without
    needs_audio = not (info.text_input and prompt and not (item.images or item.video))
    pad = pad_silence_seconds if needs_audio else 0.0
    return ItemPlan(info, chosen_voice, chosen_modalities, text, prompt, pad)
