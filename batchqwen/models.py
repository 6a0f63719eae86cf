"""The model registry, as data: capabilities, token rules, limits and default rate limits.

Facts come from ``shared/reference/realtime-protocol.md``. Values marked unconfirmed (the qwen3.5-omni
family's token rules) are best guesses that a user can override by registering a model of their own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from batchqwen.errors import UsageError

TEXT_ONLY: tuple[str, ...] = ("text",)
TEXT_AND_AUDIO: tuple[str, ...] = ("text", "audio")
ALLOWED_MODALITIES: tuple[tuple[str, ...], ...] = (TEXT_ONLY, TEXT_AND_AUDIO)

FLASH_VOICES: tuple[str, ...] = (
    "Cherry", "Ethan", "Nofish", "Jennifer", "Ryan", "Katerina", "Elias", "Jada", "Dylan",
    "Sunny", "Li", "Marcus", "Roy", "Peter", "Rocky", "Kiki", "Eric",
)  # fmt: skip
FLASH_1201_EXTRA_VOICES: tuple[str, ...] = ("Serena", "Chelsie")
TURBO_VOICES: tuple[str, ...] = ("Chelsie", "Cherry", "Serena", "Ethan")


@dataclass(frozen=True)
class ModelInfo:
    """What batchqwen needs to know about one realtime model."""

    name: str
    family: str
    audio_tokens_per_second: float
    image_block_px: int
    voices: tuple[str, ...]
    default_voice: str
    max_input_tokens: int
    max_output_tokens: int
    context_tokens: int
    image_min_tokens: int = 4
    image_max_tokens: int = 1280
    min_audio_seconds: float = 1.0  # audio shorter than this is billed as this
    input_sample_rate: int = 16_000
    output_sample_rate: int = 24_000
    text_input: bool = False  # conversation.item.create with input_text (qwen3.5-omni and later)
    tools: bool = False  # function calling (qwen3.5-omni and later)
    sampling_params: bool = True  # turbo accepts no temperature/top_p/top_k/seed
    default_rpm: int = 60
    default_tpm: int = 100_000
    token_rules_confirmed: bool = True
    snapshots: tuple[str, ...] = field(default=())


REGISTRY: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo(
            name="qwen3-omni-flash-realtime",
            family="qwen3-omni-flash",
            audio_tokens_per_second=12.5,
            image_block_px=32,
            voices=FLASH_VOICES + FLASH_1201_EXTRA_VOICES,
            default_voice="Cherry",
            max_input_tokens=49_152,
            max_output_tokens=16_384,
            context_tokens=65_536,
            snapshots=("2025-09-15", "2025-12-01"),
        ),
        ModelInfo(
            name="qwen-omni-turbo-realtime",
            family="qwen-omni-turbo",
            audio_tokens_per_second=25.0,
            image_block_px=28,
            voices=TURBO_VOICES,
            default_voice="Chelsie",
            max_input_tokens=30_720,
            max_output_tokens=2_048,
            context_tokens=32_768,
            sampling_params=False,
            snapshots=("latest", "2025-05-08"),
        ),
        ModelInfo(
            name="qwen3.5-omni-flash-realtime",
            family="qwen3.5-omni",
            audio_tokens_per_second=12.5,
            image_block_px=32,
            voices=FLASH_VOICES + FLASH_1201_EXTRA_VOICES,
            default_voice="Cherry",
            max_input_tokens=49_152,
            max_output_tokens=16_384,
            context_tokens=65_536,
            text_input=True,
            tools=True,
            token_rules_confirmed=False,
        ),
        ModelInfo(
            name="qwen3.5-omni-plus-realtime",
            family="qwen3.5-omni",
            audio_tokens_per_second=12.5,
            image_block_px=32,
            voices=FLASH_VOICES + FLASH_1201_EXTRA_VOICES,
            default_voice="Cherry",
            max_input_tokens=49_152,
            max_output_tokens=16_384,
            context_tokens=65_536,
            text_input=True,
            tools=True,
            token_rules_confirmed=False,
        ),
    )
}

#: names that resolve to a registered model (the handbook's ``qwen-omni-realtime`` among them)
ALIASES: dict[str, str] = {"qwen-omni-realtime": "qwen3-omni-flash-realtime"}

DEFAULT_MODEL = "qwen3-omni-flash-realtime"

_SNAPSHOT = re.compile(r"^(?P<base>.+?)-(?P<snap>\d{4}-\d{2}-\d{2}|latest)$")


def get_model(name: str) -> ModelInfo:
    """Resolve a model name, an alias or a dated snapshot (``...-2025-09-15``) to its registry entry.

    A snapshot keeps its own name (it is what goes into the URL) and its base model's rules.
    """
    name = name.strip()
    if name in REGISTRY:
        return REGISTRY[name]
    if name in ALIASES:
        return replace(REGISTRY[ALIASES[name]], name=name)
    match = _SNAPSHOT.match(name)
    if match and match["base"] in REGISTRY:
        return replace(REGISTRY[match["base"]], name=name)
    known = ", ".join(sorted(REGISTRY))
    raise UsageError(f"unknown model {name!r}; known models: {known} (and their dated snapshots)")


def validate_modalities(modalities: tuple[str, ...]) -> tuple[str, ...]:
    """The service accepts only ["text"] or ["text", "audio"]; order does not matter to us."""
    normalized = tuple(sorted(set(modalities), key=lambda m: (m != "text", m)))
    if normalized not in ALLOWED_MODALITIES:
        raise UsageError(f"modalities must be 'text' or 'text,audio', not {','.join(modalities)!r}")
    return normalized


def validate_voice(model: ModelInfo, voice: str | None) -> str:
    """The voice to use: the model's default when none is given; an unknown voice is a usage error."""
    if not voice:
        return model.default_voice
    if voice not in model.voices:
        raise UsageError(f"voice {voice!r} is not available on {model.name}; choose from {', '.join(model.voices)}")
    return voice


# ----------------------------------------------------------------------------- token rules
# One place for the documented rules, used by the estimator, the simulator's usage and the tests alike.


def audio_tokens(model: ModelInfo, seconds: float) -> int:
    """Audio tokens for ``seconds`` of audio (input or output): rate x duration, at least 1 s, rounded up."""
    if seconds <= 0:
        return 0
    billed = max(seconds, model.min_audio_seconds)
    return math.ceil(round(billed * model.audio_tokens_per_second, 6))


def image_tokens(model: ModelInfo, width: int, height: int) -> int:
    """Image tokens for an image of the size actually sent: one per block (partial blocks count), clamped."""
    if width <= 0 or height <= 0:
        return 0
    block = model.image_block_px
    blocks = math.ceil(width / block) * math.ceil(height / block)
    return min(max(blocks, model.image_min_tokens), model.image_max_tokens)
