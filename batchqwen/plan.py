"""How one manifest row becomes a session: the run's defaults under the row's own settings.

One pure function serves both the run and the dry run, so an estimate is made of exactly what will be
sent: the same model, voice and modalities, the prompt in the same place, the same silence padding.
What a model cannot take (a row with no speech for a model that answers speech, images for an
audio-only model, a target language a translation model does not serve) fails that row here, before
any session, with a message that says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchqwen.errors import ItemError, UsageError
from batchqwen.images import DEFAULT_IMAGES_PER_SECOND
from batchqwen.items import Item
from batchqwen.models import TEXT_ONLY, ModelInfo, get_model, validate_modalities, validate_voice

#: the language LiveTranslate translates into when no target is given (the service's own default)
DEFAULT_TARGET_LANGUAGE = "en"


@dataclass(frozen=True)
class ItemPlan:
    """An item resolved against the defaults."""

    model: ModelInfo
    voice: str
    modalities: tuple[str, ...]
    instructions: str | None
    prompt: str | None  # sent as input text; None when the model takes it inside the instructions
    pad_silence_seconds: float  # silence to send when the item has no audio (0: none needed)
    target_language: str | None = None  # translation models only
    source_language: str | None = None
    video_fps: float = 1.0  # frames a second taken from the item's video
    notes: tuple[str, ...] = ()  # what planning decided that changes what is sent
    images_per_second: float = DEFAULT_IMAGES_PER_SECOND  # images the family takes per second of audio


def check_translation(model: ModelInfo, target: str | None, source: str | None) -> tuple[str | None, str | None]:
    """The (target, source) languages for a session on ``model``; UsageError for what it cannot serve."""
    languages = model.translation
    if languages is None:
        if target or source:
            raise UsageError(f"{model.name} does not translate; translation models: {', '.join(translation_models())}")
        return None, None
    target = (target or DEFAULT_TARGET_LANGUAGE).strip()
    if target not in languages.targets:
        raise UsageError(
            f"{model.name} cannot translate into {target!r}; supported targets: {', '.join(languages.targets)}"
        )
    if source and source.strip() not in languages.sources:
        raise UsageError(
            f"{model.name} does not take speech in {source!r}; supported sources: {', '.join(languages.sources)}"
        )
    return target, (source.strip() if source else None)


def translation_models() -> list[str]:
    from batchqwen.models import REGISTRY

    return [name for name, info in REGISTRY.items() if info.translation is not None]


def plan_item(
    item: Item,
    *,
    model: str,
    voice: str | None,
    modalities: tuple[str, ...],
    instructions: str | None,
    pad_silence_seconds: float,
    target_language: str | None = None,
    source_language: str | None = None,
    video_fps: float = 1.0,
) -> ItemPlan:
    """Per-row overrides over the run's defaults.

    Raises UsageError for a bad model, voice, modalities or language, ItemError for a row the model
    cannot take.
    """
    info = get_model(item.model or model)
    chosen_voice = validate_voice(info, item.voice or voice)
    chosen_modalities = validate_modalities(item.modalities or modalities)
    notes: list[str] = []
    has_speech = bool(item.audio or item.video)
    if info.needs_item_audio and not has_speech:
        raise ItemError(f"{info.name} answers speech: this row has no audio or video")
    if item.images and not info.images:
        raise ItemError(f"{info.name} takes no images: this row has {len(item.images)}")
    if item.video and not info.images:
        # its frames cannot go; answering the sound alone would pass for an answer about the video
        raise ItemError(f"{info.name} takes no images, so no video frames: give the video's sound as the audio")
    # a run-wide --translate-to applies to translation models only; a row's own column must fit its model
    run_target = target_language if info.translation is not None else None
    run_source = source_language if info.translation is not None else None
    target, source = check_translation(info, item.target_language or run_target, item.source_language or run_source)
    speaks = info.translation is None or target in info.translation.speech_targets
    if not speaks and "audio" in chosen_modalities:
        chosen_modalities = TEXT_ONLY
        notes.append(f"{info.name} has no speech in {target!r}: translated as text only")
    fps = video_fps
    limit = info.max_images_per_second
    if item.video and limit is not None and fps > limit:
        fps = limit
        notes.append(f"{info.name} takes at most {limit:g} images a second: video frames at {limit:g} fps")
    text = item.instructions or instructions
    prompt = item.prompt
    if not info.instructions:
        if prompt:
            raise ItemError(f"{info.name} takes no prompt or instructions: it translates the row's speech")
        if text:
            notes.append(f"{info.name} takes no instructions: they were not sent")
        text = None
    if prompt and not info.text_input:
        # models without text input take the prompt only as instructions
        text = f"{text}\n\n{prompt}" if text else prompt
        prompt = None
    # the service needs audio before any image and before a commit; only a text-input model with a
    # prompt and nothing to look at can do without
    needs_audio = not (info.text_input and prompt and not (item.images or item.video))
    pad = pad_silence_seconds if needs_audio else 0.0
    rate = info.max_images_per_second or DEFAULT_IMAGES_PER_SECOND
    return ItemPlan(info, chosen_voice, chosen_modalities, text, prompt, pad, target, source, fps, tuple(notes), rate)
