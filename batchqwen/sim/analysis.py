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
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

INPUT_RATE = 16_000
INPUT_BYTES_PER_MS = INPUT_RATE * 2 // 1000  # PCM16 mono: 32 bytes per ms
OUTPUT_RATE = 24_000
FRAME_MS = 20  # VAD / analysis frame
FRAME_BYTES = FRAME_MS * INPUT_BYTES_PER_MS
MIN_SPEECH_FRAMES = 3  # 60 ms of energy before we call it speech: a click is not a turn
SEGMENT_GAP_MS = 300  # pauses shorter than this do not split a speech segment in descriptions
SILENCE_FLOOR_DBFS = -96.0  # 16-bit quantisation floor


def vad_threshold_dbfs(threshold: float) -> float:
    """Map the API's ``threshold`` in [-1, 1] to a frame level: -1 -> -70 dBFS, 0 -> -40, 1 -> -10."""
    return -40.0 + 30.0 * threshold


def frame_dbfs(pcm: bytes) -> np.ndarray[Any, np.dtype[np.float64]]:
    """RMS level in dBFS of each whole 20 ms frame of PCM16LE mono 16 kHz audio."""
    n = len(pcm) // FRAME_BYTES
    if n == 0:
        return np.zeros(0)
    samples = np.frombuffer(pcm, dtype="<i2", count=n * FRAME_BYTES // 2).reshape(n, -1)
    rms = np.sqrt(np.mean(np.square(samples, dtype=np.float64), axis=1)) / 32768.0
    return np.asarray(20.0 * np.log10(np.maximum(rms, 1e-5)), dtype=np.float64)


def speech_segments(pcm: bytes, threshold_dbfs: float, *, min_gap_ms: int = SEGMENT_GAP_MS) -> list[tuple[int, int]]:
    """(start_ms, end_ms) of each stretch of frames above ``threshold_dbfs``; short pauses merged."""
    voiced = frame_dbfs(pcm) > threshold_dbfs
    if not voiced.any():
        return []
    edges = np.diff(np.concatenate(([0], voiced.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    merged: list[list[int]] = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if merged and (start - merged[-1][1]) * FRAME_MS < min_gap_ms:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(s * FRAME_MS, e * FRAME_MS) for s, e in merged if e - s >= MIN_SPEECH_FRAMES]


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
