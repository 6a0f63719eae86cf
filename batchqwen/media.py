"""Media preparation: audio -> PCM16 mono 16 kHz, images -> JPEG within the service limits, video ->
audio track + sampled frames, PCM -> WAV. Fast probes for the dry run.

Everything here is a plain blocking function (no event loop): callers run it in a worker thread.
Decoding uses PyAV (FFmpeg's libraries in-process, no ``ffmpeg`` binary needed); images use Pillow.

Errors: a file that is missing or cannot be opened raises :class:`InputFileError`; a file that is present
but empty, corrupt or of the wrong kind raises :class:`MediaError` with a message a person understands.

Choices where the service's documentation is silent (all keyword arguments or module constants):

- Images are scaled down (never up) to fit 1920×1080 in either orientation and encoded as JPEG of at most
  :data:`MAX_JPEG_BYTES`. Quality steps down :data:`JPEG_QUALITY_LADDER` first; only when even the lowest
  rung is too big are the dimensions shrunk further (then the sent size is smaller than
  :func:`fit_image_size` says; :func:`fit_image_size` is exact for everything else).
- Source images above :data:`MAX_SOURCE_PIXELS` (Pillow's own decompression-bomb threshold) are refused.
- Video frames are sampled at ``fps`` by timestamp (the first frame at or after each sampling moment), at
  most ``max_frames`` of them; a longer video is sampled evenly over its whole length instead.
- In :func:`prepare_item`, item images sit at 0 s, 1 s, 2 s, ... (the service wants about one image per
  second of audio), clamped to the audio's length. When both an audio file and a video are given, the audio
  file is the sound and the video gives only frames.
"""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from batchqwen.errors import InputFileError, MediaError
from batchqwen.items import INPUT_BYTES_PER_SECOND, INPUT_SAMPLE_RATE, Item, PreparedInput, TimedImage

MAX_IMAGE_LONG_SIDE = 1920
MAX_IMAGE_SHORT_SIDE = 1080
MAX_JPEG_BYTES = 190_000  # ~190 KB raw stays under 256 KB once base64-encoded
JPEG_QUALITY_LADDER: tuple[int, ...] = (85, 75, 65, 55, 45, 35)
SHRINK_STEP = 0.8  # linear factor per step once the quality ladder is exhausted
# Pillow's default MAX_IMAGE_PIXELS (~89.5 MP, e.g. 9459×9459), fixed here so that a caller changing
# Pillow's global does not change what batchqwen accepts.
MAX_SOURCE_PIXELS = 89_478_485
DEFAULT_MAX_VIDEO_FRAMES = 60  # one minute at 1 fps; each frame costs up to ~1,280 image tokens

_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # transpose / rotate 90 / transverse / rotate 270
_FRAME_TIME_TOLERANCE = 1e-3  # seconds: container timestamps are rounded to their time base
# FFmpeg's default stream analysis reads up to 5 s of packets: ~30-60 ms for a WAV. Probes only need
# header fields (and fall back to decoding when a duration is missing), so they read far less.
_QUICK_PROBE = {"probesize": "65536", "analyzeduration": "200000"}


# --------------------------------------------------------------------------------------------- files


def _check_file(path: Path) -> None:
    """Missing / not a regular file -> InputFileError; zero bytes -> MediaError."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputFileError(f"file not found: {path}") from None
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise InputFileError(f"not a regular file: {path}")
    if size == 0:
        raise MediaError(f"file is empty: {path}")


def _open_container(path: Path, what: str, *, quick: bool = False) -> Any:
    """av.open with typed errors. ``quick``: read only the headers (for probes that need no decoding)."""
    _check_file(path)
    try:
        return av.open(str(path), mode="r", options=_QUICK_PROBE if quick else None)
    except PermissionError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise MediaError(f"corrupt or unsupported {what}: {path} ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip() or type(exc).__name__


# --------------------------------------------------------------------------------------------- audio


def decode_audio(path: Path) -> bytes:
    """Decode the first audio stream of any file FFmpeg reads to PCM16LE mono 16 kHz.

    Raises InputFileError when the file is missing, MediaError when it is empty, corrupt, not audio,
    has no audio stream, or yields no samples.
    """
    header = _pcm_wav_header(path)
    if header is not None and header[1:] == (1, 2, INPUT_SAMPLE_RATE) and header[0] > 0:
        # already what the service takes: read the samples as they are, no decoder needed
        with wave.open(str(path), "rb") as wav:
            return wav.readframes(header[0])
    # headers only first (FFmpeg's full stream analysis costs ~30 ms on a WAV); the full analysis is
    # the fallback for containers whose audio stream shows up only later in the file
    for quick in (True, False):
        with _open_container(path, "audio", quick=quick) as container:
            if not container.streams.audio:
                if quick:
                    continue
                raise MediaError(f"no audio stream in {path}")
            stream = container.streams.audio[0]
            pcm = b"".join(_decode_audio_stream(container, stream, path))
            break
    if not pcm:
        raise MediaError(f"corrupt or unsupported audio: {path} (no audio samples could be decoded)")
    return pcm


def _pcm_wav_header(path: Path) -> tuple[int, int, int, int] | None:
    """(frames, channels, sample width, rate) of a plain PCM WAV read by the standard library in
    microseconds (FFmpeg's probe takes milliseconds on WAV); None for anything else, which FFmpeg handles."""
    if path.suffix.lower() not in (".wav", ".wave"):
        return None
    try:
        with wave.open(str(path), "rb") as wav:
            return wav.getnframes(), wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
    except (wave.Error, EOFError, OSError, ValueError):
        return None


def _new_resampler() -> av.AudioResampler:
    # frame_size: hand back one-second frames instead of one per codec frame (an MP3 frame is 26 ms),
    # which cuts the per-frame Python work of converting them: ~40% of a 5 s MP3's decode time
    return av.AudioResampler(format="s16", layout="mono", rate=INPUT_SAMPLE_RATE, frame_size=INPUT_SAMPLE_RATE)


def _pcm_of(frames: list[av.AudioFrame]) -> bytes:
    # to_ndarray trims the plane's alignment padding, which bytes(plane) would keep
    return b"".join(frame.to_ndarray().tobytes() for frame in frames)


def _decode_audio_stream(container: Any, stream: Any, path: Path) -> Iterator[bytes]:
    resampler = _new_resampler()
    try:
        for frame in container.decode(stream):
            yield _pcm_of(resampler.resample(frame))
        yield _pcm_of(resampler.resample(None))  # flush what the resampler holds back
    except (av.error.FFmpegError, ValueError) as exc:
        raise MediaError(f"corrupt or unsupported audio: {path} ({_reason(exc)})") from None


def probe_audio_seconds(path: Path) -> float:
    """Duration in seconds of the first audio stream, from container metadata (no decoding).

    Falls back to decoding only when the container states no duration. Same errors as decode_audio.
    """
    header = _pcm_wav_header(path)
    if header is not None and header[0] > 0:
        return header[0] / header[3]
    with _open_container(path, "audio", quick=True) as container:
        if not container.streams.audio:
            raise MediaError(f"no audio stream in {path}")
        seconds = _stream_seconds(container, container.streams.audio[0])
    if seconds is None:
        return len(decode_audio(path)) / INPUT_BYTES_PER_SECOND
    return seconds


def _stream_seconds(container: Any, stream: Any) -> float | None:
    """The stream's duration, else the container's, else None."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return float(container.duration) / av.time_base
    return None


def silence(seconds: float) -> bytes:
    """``seconds`` of PCM16LE mono 16 kHz silence (rounded to whole samples)."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"silence needs a finite duration >= 0, got {seconds!r}")
    return bytes(2 * round(seconds * INPUT_SAMPLE_RATE))


def pcm_to_wav(pcm: bytes, sample_rate: int) -> bytes:
    """Wrap PCM16LE mono samples in a WAV file (stdlib ``wave``; pydub warns at import without ffmpeg)."""
    if len(pcm) % 2:
        raise ValueError("PCM16 data must have an even number of bytes")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return buffer.getvalue()


# -------------------------------------------------------------------------------------------- images


def fit_image_size(width: int, height: int) -> tuple[int, int]:
    """The size an image of ``width``×``height`` is sent at: scaled down (never up), aspect kept, so the
    long side is at most 1920 and the short side at most 1080."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    long_side, short_side = max(width, height), min(width, height)
    scale = min(1.0, MAX_IMAGE_LONG_SIDE / long_side, MAX_IMAGE_SHORT_SIDE / short_side)
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def _open_image(path: Path) -> Image.Image:
    """Lazy Pillow open with the size guard; no pixels decoded yet."""
    _check_file(path)
    try:
        image = Image.open(path)
    except PermissionError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # the warning arrives as an exception only where warnings are errors (e.g. under pytest)
        raise MediaError(f"image too large: {path} (over {MAX_SOURCE_PIXELS:,} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"not an image Pillow can read: {path} ({_reason(exc)})") from None
    if image.width * image.height > MAX_SOURCE_PIXELS:
        image.close()
        raise MediaError(f"image too large: {path} ({image.width}x{image.height} is over {MAX_SOURCE_PIXELS:,} pixels)")
    return image


def _orientation(image: Image.Image) -> int:
    if image.format == "PNG" and "exif" not in image.info:
        # Pillow would decode the whole PNG looking for an eXIf chunk after the pixels; an EXIF block
        # placed there is rare enough that we read only one that precedes them
        return 1
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not make the image unusable
        return 1
    return value if isinstance(value, int) else 1


def probe_image_size(path: Path) -> tuple[int, int]:
    """Width and height after EXIF orientation, read from the header (no pixels decoded)."""
    with _open_image(path) as image:
        width, height = image.size
        if _orientation(image) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
    return width, height


def _normalize_mode(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, or RGBA when the image has transparency (flattened later, after
    the resize, which is far cheaper on a big image)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's own conversion clips 16-bit values at 255; scale them instead
        array = np.asarray(image).astype(np.uint32)
        image = Image.fromarray((array >> 8).clip(0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.asarray(image).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return image if image.mode == "RGBA" else image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def _flatten(image: Image.Image) -> Image.Image:
    """RGBA -> RGB on a white background; RGB unchanged."""
    if image.mode != "RGBA":
        return image
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image).convert("RGB")


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    # Pillow resizes RGBA premultiplied, so transparent pixels do not bleed into the edges
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def _encode_jpeg(image: Image.Image, size: tuple[int, int]) -> tuple[bytes, int, int]:
    """Resize an RGB or RGBA image to ``size``, flatten it and encode it within MAX_JPEG_BYTES."""
    original = image
    image = _flatten(_resize(image, size))
    for quality in JPEG_QUALITY_LADDER:
        data = _jpeg_bytes(image, quality)
        if len(data) <= MAX_JPEG_BYTES:
            return data, image.width, image.height
    # last resort: the lowest rung is still too big (noise-like content), so shrink the pixels
    width, height = size
    while True:
        width, height = max(1, int(width * SHRINK_STEP)), max(1, int(height * SHRINK_STEP))
        image = _flatten(_resize(original, (width, height)))
        data = _jpeg_bytes(image, JPEG_QUALITY_LADDER[-1])
        if len(data) <= MAX_JPEG_BYTES or (width == 1 and height == 1):
            return data, width, height


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def prepare_image(path: Path, *, at_seconds: float = 0.0) -> TimedImage:
    """Any image Pillow reads -> a JPEG ready to send: EXIF orientation applied, alpha flattened onto
    white, converted to RGB, scaled with :func:`fit_image_size`, at most MAX_JPEG_BYTES."""
    with _open_image(path) as image:
        try:
            oriented = _oriented_size(image)
            target = fit_image_size(*oriented)
            if image.format == "JPEG" and target != oriented:
                # let libjpeg decode at a reduced DCT scale (never below the target): far faster
                swapped = _orientation(image) in _SWAPPING_ORIENTATIONS
                stored = (target[1], target[0]) if swapped else target
                image.draft(None, stored)
            image.load()  # decode now, so a truncated file fails here as a MediaError
            ImageOps.exif_transpose(image, in_place=True)
            normalized = _normalize_mode(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise MediaError(f"image too large: {path}") from None
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
            raise MediaError(f"not an image Pillow can read: {path} ({_reason(exc)})") from None
        data, width, height = _encode_jpeg(normalized, target)
    return TimedImage(at_seconds=at_seconds, jpeg=data, width=width, height=height)


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    return (height, width) if _orientation(image) in _SWAPPING_ORIENTATIONS else (width, height)


# --------------------------------------------------------------------------------------------- video


def video_frame_times(
    duration_seconds: float, *, fps: float = 1.0, max_frames: int = DEFAULT_MAX_VIDEO_FRAMES
) -> tuple[float, ...]:
    """The moments frames are sampled at: every 1/fps seconds from 0 while inside the video, at most
    ``max_frames`` of them; a longer video is sampled evenly over its whole length instead."""
    if fps <= 0 or max_frames < 1:
        raise ValueError("fps and max_frames must be positive")
    if duration_seconds <= 0:
        return (0.0,)
    step = 1.0 / fps
    count = math.ceil(duration_seconds * fps - _FRAME_TIME_TOLERANCE)
    if count > max_frames:
        step, count = duration_seconds / max_frames, max_frames
    return tuple(k * step for k in range(max(1, count)))


@dataclass(frozen=True)
class VideoProbe:
    """What a dry run needs to know about a video, from metadata only."""

    duration_seconds: float
    audio_seconds: float  # 0.0 when the video has no audio track
    frame_times: tuple[float, ...]  # the sampling moments (actual frames may sit a little later)
    frame_size: tuple[int, int]  # the size frames are sent at (fit_image_size of the video's size)


def probe_video(path: Path, *, fps: float = 1.0, max_frames: int = DEFAULT_MAX_VIDEO_FRAMES) -> VideoProbe:
    """Duration, audio length, sampling moments and sent frame size of a video, without decoding."""
    for quick in (True, False):  # a container whose headers lack the frame size gets the full analysis
        with _open_container(path, "video", quick=quick) as container:
            if not container.streams.video:
                raise MediaError(f"no video stream in {path}")
            video = container.streams.video[0]
            duration = _stream_seconds(container, video) or 0.0
            audio_seconds = 0.0
            if container.streams.audio:
                audio_seconds = _stream_seconds(container, container.streams.audio[0]) or duration
            width, height = video.codec_context.width, video.codec_context.height
        if width > 0 and height > 0:
            return VideoProbe(
                duration_seconds=duration,
                audio_seconds=audio_seconds,
                frame_times=video_frame_times(duration, fps=fps, max_frames=max_frames),
                frame_size=fit_image_size(width, height),
            )
    raise MediaError(f"corrupt or unsupported video: {path} (no frame size)")


def extract_video(
    path: Path,
    *,
    fps: float = 1.0,
    max_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
    with_audio: bool = True,
) -> tuple[bytes, tuple[TimedImage, ...]]:
    """The video's audio track as PCM16LE mono 16 kHz (b"" when it has none or ``with_audio`` is False)
    and frames sampled at ``fps`` (see :func:`video_frame_times`), each prepared like prepare_image, with
    ``at_seconds`` the frame's own timestamp. One pass over the file."""
    with _open_container(path, "video") as container:
        if not container.streams.video:
            raise MediaError(f"no video stream in {path}")
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        audio = container.streams.audio[0] if with_audio and container.streams.audio else None
        duration = _stream_seconds(container, video)
        if duration is not None:
            targets = list(video_frame_times(duration, fps=fps, max_frames=max_frames))
        else:  # unknown length: plain fps, cut at max_frames
            targets = [k / fps for k in range(max_frames)]
        start = _start_seconds(video)
        resampler = _new_resampler()
        pcm: list[bytes] = []
        frames: list[TimedImage] = []
        streams = [video] if audio is None else [video, audio]
        try:
            for packet in container.demux(*streams):
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame):
                        pcm.append(_pcm_of(resampler.resample(frame)))
                    elif isinstance(frame, av.VideoFrame) and targets and frame.time is not None:
                        at = max(0.0, float(frame.time) - start)
                        if at + _FRAME_TIME_TOLERANCE >= targets[0]:
                            frames.append(_prepare_frame(frame, at))
                            while targets and targets[0] <= at + _FRAME_TIME_TOLERANCE:
                                targets.pop(0)
                if not targets and audio is None:
                    break  # every frame taken and no sound wanted: skip the rest of the file
            if audio is not None:
                pcm.append(_pcm_of(resampler.resample(None)))
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaError(f"corrupt or unsupported video: {path} ({_reason(exc)})") from None
    return b"".join(pcm), tuple(frames)


def _start_seconds(stream: Any) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _prepare_frame(frame: av.VideoFrame, at_seconds: float) -> TimedImage:
    image: Image.Image = frame.to_image()  # type: ignore[no-untyped-call]  # RGB; PyAV leaves it untyped
    data, width, height = _encode_jpeg(image, fit_image_size(image.width, image.height))
    return TimedImage(at_seconds=at_seconds, jpeg=data, width=width, height=height)


# ---------------------------------------------------------------------------------------------- item


def image_times(count: int, audio_seconds: float) -> tuple[float, ...]:
    """Where an item's images sit: image k at k seconds, clamped to the audio's length."""
    end = max(0.0, audio_seconds)
    return tuple(min(float(k), end) for k in range(count))


def prepare_item(
    item: Item,
    *,
    video_fps: float = 1.0,
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
    pad_silence_seconds: float = 0.0,
) -> PreparedInput:
    """Decode everything one item sends: audio (the audio file, else the video's track), video frames,
    images placed by :func:`image_times`; all images in time order. When nothing gives audio and
    ``pad_silence_seconds`` > 0, that much silence is the audio (the service needs audio before images)."""
    pcm = b""
    frames: tuple[TimedImage, ...] = ()
    if item.audio is not None:
        pcm = decode_audio(item.audio)
    if item.video is not None:
        video_pcm, frames = extract_video(
            item.video, fps=video_fps, max_frames=max_video_frames, with_audio=item.audio is None
        )
        if item.audio is None:
            pcm = video_pcm
    padded = 0.0
    if not pcm and pad_silence_seconds > 0:
        pcm = silence(pad_silence_seconds)
        padded = len(pcm) / INPUT_BYTES_PER_SECOND
    audio_seconds = len(pcm) / INPUT_BYTES_PER_SECOND
    images = [
        prepare_image(path, at_seconds=at)
        for path, at in zip(item.images, image_times(len(item.images), audio_seconds), strict=True)
    ]
    ordered = sorted([*frames, *images], key=lambda image: image.at_seconds)  # stable: frames first on ties
    return PreparedInput(pcm16=pcm, images=tuple(ordered), padded_silence_seconds=padded)


__all__ = [
    "DEFAULT_MAX_VIDEO_FRAMES",
    "JPEG_QUALITY_LADDER",
    "MAX_JPEG_BYTES",
    "MAX_SOURCE_PIXELS",
    "VideoProbe",
    "decode_audio",
    "extract_video",
    "fit_image_size",
    "image_times",
    "pcm_to_wav",
    "prepare_image",
    "prepare_item",
    "probe_audio_seconds",
    "probe_image_size",
    "probe_video",
    "silence",
    "video_frame_times",
]
