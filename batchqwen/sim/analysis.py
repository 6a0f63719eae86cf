"""What the simulator measures in its input and how it makes its output, as pure functions.

The energy levels and speech segments of PCM16 audio, an image's size and colour, the fingerprint of
what a response answered, and the deterministic tone "speech" of an answer.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, UnidentifiedImageError

# the energy VAD lives in batchqwen.vad (the runner's splitter uses it too): re-exported for the simulator
from batchqwen.vad import FRAME_BYTES as FRAME_BYTES
from batchqwen.vad import FRAME_MS as FRAME_MS
from batchqwen.vad import INPUT_BYTES_PER_MS as INPUT_BYTES_PER_MS
from batchqwen.vad import INPUT_RATE as INPUT_RATE
from batchqwen.vad import MIN_SPEECH_FRAMES as MIN_SPEECH_FRAMES
from batchqwen.vad import SEGMENT_GAP_MS as SEGMENT_GAP_MS
from batchqwen.vad import SILENCE_FLOOR_DBFS as SILENCE_FLOOR_DBFS
from batchqwen.vad import frame_dbfs as frame_dbfs
from batchqwen.vad import speech_segments as speech_segments
from batchqwen.vad import vad_threshold_dbfs as vad_threshold_dbfs

OUTPUT_RATE = 24_000


def loudest_dbfs(pcm: bytes) -> float:
    levels = frame_dbfs(pcm)
    return float(levels.max()) if levels.size else SILENCE_FLOOR_DBFS


def color_name(rgb: tuple[float, float, float]) -> str:
    """A plain colour word for an average RGB (0-255)."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    if v < 0.2:
        return "black"
    if s < 0.2:
        return "white" if v > 0.85 else "gray"
    names = (
        (15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"),
        (260, "blue"), (300, "purple"), (340, "magenta"), (361, "red"),
    )  # fmt: skip
    degrees = h * 360
    return next(name for limit, name in names if degrees < limit)


@dataclass(frozen=True)
class ImageInfo:
    """One received image: the SHA-256 of its bytes, its real size and its average colour's name."""

    digest: bytes
    width: int
    height: int
    color: str


class NotJpeg(ValueError):
    """The bytes are not a decodable JPEG; the message says what they are."""


def probe_jpeg(data: bytes) -> ImageInfo:
    """Size and colour of a JPEG, read with Pillow (a DCT-scaled decode: cheap even for 1080p)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                raise NotJpeg(f"Image must be a JPEG, not {im.format}.")
            width, height = im.size
            im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            pixel = im.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    except NotJpeg:
        raise
    except (ValueError, UnidentifiedImageError, OSError):
        raise NotJpeg("Image is not a decodable JPEG.") from None
    assert isinstance(pixel, tuple)
    rgb = (float(pixel[0]), float(pixel[1]), float(pixel[2]))
    return ImageInfo(hashlib.sha256(data).digest(), width, height, color_name(rgb))


def input_fingerprint(
    pcm: bytes, images: Iterable[bytes] = (), instructions: str | None = None, texts: Iterable[str] = ()
) -> str:
    """Hash of what one response answered: audio bytes, JPEG bytes, instructions and input texts.

    The simulator records deliveries under this key, so a test can compute it for an item and prove the
    item was answered exactly once.
    """
    return fingerprint(pcm, (hashlib.sha256(image).digest() for image in images), instructions, texts)


def fingerprint(pcm: bytes, image_digests: Iterable[bytes], instructions: str | None, texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    h.update(b"audio:%d:" % len(pcm))
    h.update(pcm)
    for digest in image_digests:
        h.update(b"image:" + digest)
    h.update(b"instructions:" + (instructions or "").encode())
    for text in texts:
        h.update(b"text:%d:" % len(text.encode()) + text.encode())
    return h.hexdigest()


@lru_cache(maxsize=8)
def _tone_table(word_ms: int) -> tuple[bytes, ...]:
    """Twelve short PCM16 24 kHz tones (one per pitch), faded in and out; computed once."""
    n = OUTPUT_RATE * word_ms // 1000
    t = np.arange(n) / OUTPUT_RATE
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.005 * OUTPUT_RATE))
    tones = []
    for i in range(12):
        freq = 220.0 * 2 ** (i / 12)
        wave = 0.3 * np.sin(2 * np.pi * freq * t) * fade
        tones.append((wave * 32767).astype("<i2").tobytes())
    return tuple(tones)


def synthesize(text: str, word_ms: int = 60) -> bytes:
    """Deterministic PCM16LE mono 24 kHz 'speech' for ``text``: one tone of ``word_ms`` per word."""
    table = _tone_table(word_ms)
    return b"".join(table[sum(word.encode()) % 12] for word in text.split())


def clip(text: str, limit: int = 80) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
