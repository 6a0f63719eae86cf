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

#: the protocol families (``batchqwen.realtime.families``): what a model's session looks like on the wire
PROTOCOLS: tuple[str, ...] = ("omni", "omni_v38", "qwen_audio", "livetranslate", "livetranslate_v38")

FLASH_VOICES: tuple[str, ...] = (
    "Cherry", "Ethan", "Nofish", "Jennifer", "Ryan", "Katerina", "Elias", "Jada", "Dylan",
    "Sunny", "Li", "Marcus", "Roy", "Peter", "Rocky", "Kiki", "Eric",
)  # fmt: skip
FLASH_1201_EXTRA_VOICES: tuple[str, ...] = ("Serena", "Chelsie")
TURBO_VOICES: tuple[str, ...] = ("Chelsie", "Cherry", "Serena", "Ethan")
#: qwen3.5-omni: the Qwen-Omni realtime examples use Tina; Cherry is reported to be accepted by
#: session.update on qwen3.5-omni-flash-realtime and then never answer (QwenAudio/qwen-audio-agent #334),
#: so it is left out of the list and a request for it is refused with that reason
QWEN35_VOICES: tuple[str, ...] = ("Tina", *(v for v in FLASH_VOICES + FLASH_1201_EXTRA_VOICES if v != "Cherry"))
QWEN35_VOICES_SOURCE = "Model Studio 'Qwen-Omni-Realtime' examples (voice Tina); QwenAudio/qwen-audio-agent #334"
QWEN35_BROKEN_VOICES: dict[str, str] = {
    "Cherry": "reported accepted by session.update on qwen3.5-omni-flash-realtime and then never answering"
    " (QwenAudio/qwen-audio-agent #334); use Tina",
}
LIVETRANSLATE_VOICES: tuple[str, ...] = ("Cherry", "Nofish", "Jada", "Dylan", "Sunny", "Peter", "Kiki", "Eric")

SOURCE_2025 = "Model Studio 'Qwen-Omni-Realtime' (2025) via reference/realtime-protocol.md"
SOURCE_SDK = "dashscope 2.0.2 examples/01_atomic_capabilities/audio (not verified against the cloud by the SDK)"


@dataclass(frozen=True)
class Languages:
    """What a translation model takes and gives: wire codes, and the targets it can also speak."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    speech_targets: tuple[str, ...]
    source: str


LIVETRANSLATE_SOURCE = (
    "Model Studio 'Real-time audio and video translation - Qwen' (counts: qwen3 18 languages, 11 spoken;"
    " qwen3.5/3.8 60 languages, 29 spoken); per-code lists from a public copy of that page's table"
)
_LT3_SPOKEN = ("en", "zh", "ja", "ko", "fr", "de", "ru", "es", "pt", "it", "yue")
_LT3_TEXT_ONLY = ("id", "vi", "th", "ar", "hi", "el", "tr")
LIVETRANSLATE_LANGUAGES = Languages(
    sources=_LT3_SPOKEN + _LT3_TEXT_ONLY,
    targets=_LT3_SPOKEN + _LT3_TEXT_ONLY,
    speech_targets=_LT3_SPOKEN,
    source=LIVETRANSLATE_SOURCE,
)
_LT35_SPOKEN = (
    "zh", "en", "ar", "de", "fr", "es", "pt", "id", "it", "ko", "ru", "th", "vi", "ja", "tr", "hi", "ms",
    "nl", "ur", "nb", "sv", "da", "he", "fi", "pl", "is", "cs", "fil", "fa",
)  # fmt: skip
_LT35_TEXT_ONLY = (
    "yue", "el", "af", "ast", "be", "bg", "bn", "bs", "ca", "ceb", "et", "gl", "gu", "hr", "hu", "jv",
    "kk", "kn", "ky", "lv", "mk", "ml", "mr", "pa", "ro", "sk", "sl", "sw", "tg", "az", "uk",
)  # fmt: skip
#: qwen3.5 and qwen3.8 LiveTranslate: 60 languages, 29 with speech (the 3.8 split is the same by count;
#: its per-code list is taken to be 3.5's)
LIVETRANSLATE_35_LANGUAGES = Languages(
    sources=_LT35_SPOKEN + _LT35_TEXT_ONLY,
    targets=_LT35_SPOKEN + _LT35_TEXT_ONLY,
    speech_targets=_LT35_SPOKEN,
    source=LIVETRANSLATE_SOURCE,
)
LIVETRANSLATE_35_VOICES_SOURCE = (
    "Model Studio LiveTranslate server events for qwen3.5 (default voice Cherry); a public copy of the voice"
    " table lists 47 voices with Tina first: the full list is not published on the pages read"
)
QWEN_AUDIO_VOICES: tuple[str, ...] = ("longanqian", "longanlingxin", "longanlingxi", "longanxiaoxin", "longanlufeng")
QWEN_AUDIO_VOICES_SOURCE = SOURCE_SDK + ": realtime_qwen_audio.py (longanqian); others from a public voice table"


@dataclass(frozen=True)
class ModelInfo:
    """What batchqwen needs to know about one realtime model."""

    name: str
    protocol: str  # the protocol family (one of PROTOCOLS): session shape, turn mode, end of session
    series: str  # the model line the token rules belong to (e.g. qwen3-omni-flash)
    audio_tokens_per_second: float
    image_block_px: int
    voices: tuple[str, ...]
    default_voice: str
    max_input_tokens: int
    max_output_tokens: int
    context_tokens: int
    voices_source: str = SOURCE_2025
    #: False where the family's full voice list is not published: any voice is sent, with a warning
    voices_published: bool = True
    #: True where cloned (enrolled) voices are documented: an id outside the list is sent, with a warning
    cloned_voices: bool = False
    #: voices the service is reported to accept and then never answer with: refused, with the reason
    broken_voices: dict[str, str] = field(default_factory=dict)
    image_min_tokens: int = 4
    image_max_tokens: int = 1280
    min_audio_seconds: float = 1.0  # audio shorter than this is billed as this
    input_sample_rate: int = 16_000
    output_sample_rate: int = 24_000
    text_input: bool = False  # conversation.item.create with input_text (qwen3.5-omni and later)
    instructions: bool = True  # takes session instructions (a prompt can travel there)
    images: bool = True  # takes input_image_buffer.append
    max_images_per_second: float | None = None  # LiveTranslate: at most 2 images a second of audio
    #: answers the item's own speech: a row with no audio or video is refused, not padded with silence
    needs_item_audio: bool = False
    tools: bool = False  # function calling (qwen3.5-omni and later)
    translation: Languages | None = None  # LiveTranslate: the languages it serves
    sampling_params: bool = True  # turbo accepts no temperature/top_p/top_k/seed
    default_rpm: int = 60
    default_tpm: int = 100_000
    token_rules_confirmed: bool = True
    session_lifetime_seconds: float = 120 * 60  # Model Studio "Qwen-Omni-Realtime", updated 2026-03-31
    #: how a session ends (``finish_ack``, ``finish_no_ack``, ``close``); None: the protocol family's way
    session_end: str | None = None
    session_end_source: str = ""
    snapshots: tuple[str, ...] = field(default=())


QWEN_AUDIO_PLUS = ModelInfo(
    name="qwen-audio-3.0-realtime-plus",
    protocol="qwen_audio",
    series="qwen-audio-3.0",
    audio_tokens_per_second=12.5,
    image_block_px=32,
    voices=QWEN_AUDIO_VOICES,
    default_voice="longanqian",
    voices_source=QWEN_AUDIO_VOICES_SOURCE,
    voices_published=False,
    max_input_tokens=49_152,
    max_output_tokens=16_384,
    context_tokens=65_536,
    images=False,
    needs_item_audio=True,
    token_rules_confirmed=False,
)

LIVETRANSLATE = ModelInfo(
    name="qwen3-livetranslate-flash-realtime",
    protocol="livetranslate",
    series="qwen3-livetranslate-flash",
    audio_tokens_per_second=12.5,
    image_block_px=32,
    voices=LIVETRANSLATE_VOICES,
    default_voice="Cherry",
    voices_source=LIVETRANSLATE_SOURCE,
    max_input_tokens=49_152,
    max_output_tokens=4_096,
    context_tokens=53_248,
    instructions=False,
    needs_item_audio=True,
    max_images_per_second=2.0,
    translation=LIVETRANSLATE_LANGUAGES,
    token_rules_confirmed=False,
    snapshots=("2025-09-22",),
)
LIVETRANSLATE_35 = replace(
    LIVETRANSLATE,
    voices=("Cherry", "Tina"),
    voices_source=LIVETRANSLATE_35_VOICES_SOURCE,
    voices_published=False,
    translation=LIVETRANSLATE_35_LANGUAGES,
    snapshots=(),
)

REGISTRY: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo(
            name="qwen3-omni-flash-realtime",
            protocol="omni",
            series="qwen3-omni-flash",
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
            protocol="omni",
            series="qwen-omni-turbo",
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
            protocol="omni",
            series="qwen3.5-omni",
            audio_tokens_per_second=12.5,
            image_block_px=32,
            voices=QWEN35_VOICES,
            default_voice="Tina",
            voices_source=QWEN35_VOICES_SOURCE,
            cloned_voices=True,
            broken_voices=QWEN35_BROKEN_VOICES,
            max_input_tokens=49_152,
            max_output_tokens=16_384,
            context_tokens=65_536,
            text_input=True,
            tools=True,
            token_rules_confirmed=False,
            # reported answered "invalid event type" (dashscope/dashscope-sdk-python #140, 2026-06); the v2 SDK
            # still sends it, and the answer, whatever it is, comes after response.done: never the item's failure
            session_end="finish_ack",
            session_end_source="dashscope 2.0.2 v2 realtime.py end_session(); dashscope-sdk-python #140",
        ),
        ModelInfo(
            name="qwen3.5-omni-plus-realtime",
            protocol="omni",
            series="qwen3.5-omni",
            audio_tokens_per_second=12.5,
            image_block_px=32,
            voices=QWEN35_VOICES,
            default_voice="Tina",
            voices_source=QWEN35_VOICES_SOURCE,
            cloned_voices=True,
            broken_voices=QWEN35_BROKEN_VOICES,
            max_input_tokens=49_152,
            max_output_tokens=16_384,
            context_tokens=65_536,
            text_input=True,
            tools=True,
            token_rules_confirmed=False,
        ),
        ModelInfo(
            name="qwen3.8-omni-flash-realtime",
            protocol="omni_v38",
            series="qwen3.8-omni",
            audio_tokens_per_second=12.5,
            image_block_px=32,
            voices=("longanlingxin",),
            default_voice="longanlingxin",
            voices_source=SOURCE_SDK + ": realtime_omni.py",
            voices_published=False,
            max_input_tokens=49_152,
            max_output_tokens=16_384,
            context_tokens=65_536,
            token_rules_confirmed=False,
        ),
        QWEN_AUDIO_PLUS,
        replace(QWEN_AUDIO_PLUS, name="qwen-audio-3.0-realtime-flash"),
        LIVETRANSLATE,
        # qwen3.5 and 3.8: 60 languages, their voice list unpublished; 3.8 speaks the v38 protocol
        replace(LIVETRANSLATE_35, name="qwen3.5-livetranslate-flash-realtime", series="qwen3.5-livetranslate-flash"),
        replace(
            LIVETRANSLATE_35,
            name="qwen3.8-livetranslate-flash-realtime",
            protocol="livetranslate_v38",
            series="qwen3.8-livetranslate-flash",
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
    """The voice to use: the model's default when none is given.

    A voice outside a published list is a usage error, unless the model takes cloned voices; where the
    list is not published any voice is sent (see :func:`voice_warning`). A voice reported to be accepted
    and then never answered is refused with the report.
    """
    if not voice:
        return model.default_voice
    if voice in model.broken_voices:
        raise UsageError(f"voice {voice!r} on {model.name}: {model.broken_voices[voice]}")
    if voice in model.voices or not model.voices_published or model.cloned_voices:
        return voice
    raise UsageError(f"voice {voice!r} is not available on {model.name}; choose from {', '.join(model.voices)}")


def voice_warning(model: ModelInfo, voice: str) -> str | None:
    """What to tell the user about a voice :func:`validate_voice` lets through unchecked, if anything."""
    if voice in model.voices:
        return None
    if not model.voices_published:
        return (
            f"voice {voice!r} is not among the voices known for {model.name} ({', '.join(model.voices)}); its"
            " full list is not published, so it is sent as given and the service decides"
        )
    return f"voice {voice!r} is not a system voice of {model.name}: sent as a cloned voice id"


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
