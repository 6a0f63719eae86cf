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
- Video frames: one per sampling moment of :func:`video_frame_times` (every 1/``fps`` s, at most
  ``max_frames``; a longer video is sampled evenly over its whole length), never one frame twice, each at
  its own timestamp. By default (``video_frames="keyframes"``) a moment takes the nearest key frame within
  half the sampling interval, else the first frame at or after it, decoded forward from the key frame
  before it: decoding follows the frames kept (one pass over the packets for the key frame times and the
  sound, then a seek per key frame needed; decoding forward skips the frames nothing refers to before
  the moment). Measured on 30 s camera-like 1080p H.264 clips at 4 Mbit/s, 1 frame a second
  (bench/bench_video.py, bench/RESULTS.md section 6): 0.30 of the old CPU with a key frame every 0.5 s,
  0.65 with one every 4 s. ``skip_frame="NONKEY"`` over the whole file was measured and not used: it
  decodes every key frame (twice the pictures needed at 0.5 s) and, after a seek, waits for the next one.
  ``video_frames="exact"`` decodes every frame and takes the first at or after each moment
  (frame-accurate on any file); the key-frame mode falls back to it when seeking misses a key frame.
- Video frames are sent at :func:`fit_frame_size`: within 1920×1080 and at most 1280 blocks of 32×32 px,
  the most one image is billed for on qwen3-omni-flash (1 token a block, clamped at 1280), so 1080p goes
  at 1504×846 (1269 tokens) and 720p as it is. On qwen-omni-turbo (28 px blocks) such a frame is 1674
  blocks, billed at its cap of 1280, as a 1080p frame was. FFmpeg scales while converting to RGB (area
  averaging, one pass; Pillow's Lanczos cost 24 ms a 1080p frame, this 5 ms), and each frame is one
  JPEG encode, at the quality rung the previous frame of the video landed on (one rung up again when that
  one came out under 60% of :data:`MAX_JPEG_BYTES`).
- In :func:`prepare_item`, item images sit at 0 s, 1 s, 2 s, ... (the service wants about one image per
  second of audio), clamped to the audio's length. When both an audio file and a video are given, the audio
  file is the sound and the video gives only frames.
"""

from __future__ import annotations

import bisect
import io
import math
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
# video frames are sent at most at the size one image is billed for (the qwen3-omni-flash rule)
FRAME_BLOCK_PX = 32
FRAME_MAX_BLOCKS = 1280
FRAME_INTERPOLATION = "AREA"  # FFmpeg's area-averaging scaler: as cheap as bilinear, made for shrinking
VideoFrames = Literal["keyframes", "exact"]
_RUNG_UP_BELOW = 0.6  # a frame under this share of MAX_JPEG_BYTES lets the next one try a better quality

_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # transpose / rotate 90 / transverse / rotate 270
_FRAME_TIME_TOLERANCE = 1e-3  # seconds: container timestamps are rounded to their time base
# FFmpeg's default stream analysis reads up to 5 s of packets: ~30-60 ms for a WAV. Probes only need
# header fields (and fall back to decoding when a duration is missing), so they read far less.
_QUICK_PROBE = {"probesize": "65536", "analyzeduration": "200000"}


# --------------------------------------------------------------------------------------------- files

#: what the probes read: a local file, or a file object open on one (a remote object read by ranges,
#: :class:`batchqwen.storage.fetch.RemoteFile`, whose ``str()`` names it in messages)
Source = Path | io.IOBase


def _wave_source(path: Source) -> Any:
    if isinstance(path, Path):
        return str(path)
    path.seek(0)
    return path


def _check_file(path: Source) -> None:
    """Missing / not a regular file -> InputFileError; zero bytes -> MediaError."""
    if not isinstance(path, Path):
        return  # an open file: whoever opened it said what was wrong with it
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


def _open_container(path: Source, what: str, *, quick: bool = False) -> Any:
    """av.open with typed errors. ``quick``: read only the headers (for probes that need no decoding)."""
    _check_file(path)
    try:
        return av.open(_wave_source(path), mode="r", options=_QUICK_PROBE if quick else None)
    except PermissionError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise MediaError(f"corrupt or unsupported {what}: {path} ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip() or type(exc).__name__


# --------------------------------------------------------------------------------------------- audio


def decode_audio(path: Source) -> bytes:
    """Decode the first audio stream of any file FFmpeg reads to PCM16LE mono 16 kHz.

    Raises InputFileError when the file is missing, MediaError when it is empty, corrupt, not audio,
    has no audio stream, or yields no samples.
    """
    header = _pcm_wav_header(path)
    if header is not None and header[1:] == (1, 2, INPUT_SAMPLE_RATE) and header[0] > 0:
        # already what the service takes: read the samples as they are, no decoder needed
        with wave.open(_wave_source(path), "rb") as wav:
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


def _pcm_wav_header(path: Source) -> tuple[int, int, int, int] | None:
    """(frames, channels, sample width, rate) of a plain PCM WAV read by the standard library in
    microseconds (FFmpeg's probe takes milliseconds on WAV); None for anything else, which FFmpeg handles."""
    suffix = path.suffix if isinstance(path, Path) else Path(str(getattr(path, "name", ""))).suffix
    if suffix.lower() not in (".wav", ".wave"):
        return None
    try:
        with wave.open(_wave_source(path), "rb") as wav:
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


def _decode_audio_stream(container: Any, stream: Any, path: Source) -> Iterator[bytes]:
    resampler = _new_resampler()
    try:
        for frame in container.decode(stream):
            yield _pcm_of(resampler.resample(frame))
        yield _pcm_of(resampler.resample(None))  # flush what the resampler holds back
    except (av.error.FFmpegError, ValueError) as exc:
        raise MediaError(f"corrupt or unsupported audio: {path} ({_reason(exc)})") from None


def probe_audio_seconds(path: Source) -> float:
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


def _open_image(path: Source) -> Image.Image:
    """Lazy Pillow open with the size guard; no pixels decoded yet."""
    _check_file(path)
    try:
        image = Image.open(path if isinstance(path, Path) else _wave_source(path))
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


def probe_image_size(path: Source) -> tuple[int, int]:
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
            if _sendable_as_is(image, path, oriented, target):
                return TimedImage(at_seconds=at_seconds, jpeg=path.read_bytes(), width=oriented[0], height=oriented[1])
            image.load()  # decode now, so a truncated file fails here as a MediaError
            ImageOps.exif_transpose(image, in_place=True)
            normalized = _normalize_mode(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise MediaError(f"image too large: {path}") from None
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
            raise MediaError(f"not an image Pillow can read: {path} ({_reason(exc)})") from None
        data, width, height = _encode_jpeg(normalized, target)
    return TimedImage(at_seconds=at_seconds, jpeg=data, width=width, height=height)


def _sendable_as_is(image: Image.Image, path: Path, oriented: tuple[int, int], target: tuple[int, int]) -> bool:
    """A JPEG already within every limit (size, bytes, upright, RGB or grey) goes as it is: decoding and
    re-encoding it would cost tens of milliseconds and some quality for nothing. Its entropy-coded data is
    still read through once (at a reduced DCT scale, which is cheap) so a cut-off file is refused here."""
    if image.format != "JPEG" or image.mode not in ("RGB", "L") or target != oriented:
        return False
    if _orientation(image) != 1 or path.stat().st_size > MAX_JPEG_BYTES:
        return False
    image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
    image.load()  # raises for a truncated or corrupt file: the caller turns it into a MediaError
    return True


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
    frame_size: tuple[int, int]  # the size frames are sent at (fit_frame_size of the video's size)


def probe_video(path: Source, *, fps: float = 1.0, max_frames: int = DEFAULT_MAX_VIDEO_FRAMES) -> VideoProbe:
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
                frame_size=fit_frame_size(width, height),
            )
    raise MediaError(f"corrupt or unsupported video: {path} (no frame size)")


def fit_frame_size(width: int, height: int) -> tuple[int, int]:
    """The size a video frame of ``width``×``height`` is sent at: :func:`fit_image_size`, then scaled
    down (aspect kept) until it is at most :data:`FRAME_MAX_BLOCKS` blocks of :data:`FRAME_BLOCK_PX`
    pixels, the most an image is billed for (qwen3-omni-flash: 1 token per 32×32 block, clamped at 1280):
    the service pays no more for a bigger frame, so the extra pixels would only cost decoding time and
    JPEG bytes. 1920×1080 -> 1504×846 (47 × 27 = 1269 blocks); 1280×720 (920 blocks) is kept as it is."""
    fitted = fit_image_size(width, height)
    if _blocks(*fitted) <= FRAME_MAX_BLOCKS:
        return fitted
    w0, h0 = fitted
    scale = math.sqrt(FRAME_MAX_BLOCKS * FRAME_BLOCK_PX**2 / (w0 * h0))
    long0 = max(w0, h0)
    for long_side in range(max(1, int(long0 * scale) + 1), 0, -1):  # a few steps from the area estimate
        ratio = long_side / long0
        size = (max(1, round(w0 * ratio)), max(1, round(h0 * ratio)))
        if _blocks(*size) <= FRAME_MAX_BLOCKS:
            return size
    return 1, 1  # unreachable: a 1x1 frame is one block


def _blocks(width: int, height: int) -> int:
    return math.ceil(width / FRAME_BLOCK_PX) * math.ceil(height / FRAME_BLOCK_PX)


def extract_video(
    path: Path,
    *,
    fps: float = 1.0,
    max_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
    with_audio: bool = True,
    video_frames: VideoFrames = "keyframes",
    keyframe_tolerance: float | None = None,
) -> tuple[bytes, tuple[TimedImage, ...]]:
    """The video's audio track as PCM16LE mono 16 kHz (b"" when it has none or ``with_audio`` is False)
    and its frames, one per moment of :func:`video_frame_times` (see :func:`read_video`, which also says
    how far the frames lie from their moments)."""
    result = read_video(
        path,
        fps=fps,
        max_frames=max_frames,
        with_audio=with_audio,
        video_frames=video_frames,
        keyframe_tolerance=keyframe_tolerance,
    )
    return result.pcm16, result.frames


@dataclass(frozen=True)
class VideoRead:
    """What :func:`read_video` took from a video."""

    pcm16: bytes  # the audio track, PCM16LE mono 16 kHz; b"" when none or not wanted
    frames: tuple[TimedImage, ...]  # in time order, each at its own timestamp
    targets: tuple[float, ...]  # the sampling moments the frames stand for
    key_frames: int  # how many of the frames are key frames taken as they are
    largest_gap_seconds: float  # the largest distance from a frame to its target
    notes: tuple[str, ...]  # for the row's notes: how the frames were chosen


def read_video(
    path: Path,
    *,
    fps: float = 1.0,
    max_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
    with_audio: bool = True,
    video_frames: VideoFrames = "keyframes",
    keyframe_tolerance: float | None = None,
) -> VideoRead:
    """Audio track and frames of a video, with how the frames were chosen.

    One frame per moment of :func:`video_frame_times` (so the estimate predicts the count), none sent
    twice, each at its own timestamp and prepared like :func:`prepare_image` at :func:`fit_frame_size`.

    ``video_frames="keyframes"`` (default): for each moment, the nearest key frame when it lies within
    ``keyframe_tolerance`` seconds (default: half the sampling interval), else the first frame at or
    after the moment, decoded forward from the key frame before it. Decoding follows the frames kept:
    one pass reads the packets (key frame times, and the audio decoded as it goes), then each needed key
    frame is reached by seeking, so a clip with a key frame every 0.5 s decodes one picture per frame kept.
    ``video_frames="exact"``: every frame decoded in order and the first at or after each moment taken,
    as before (frame-accurate on any file, and the cost of decoding the whole video).
    """
    if video_frames not in ("keyframes", "exact"):
        raise ValueError(f"video_frames must be 'keyframes' or 'exact', got {video_frames!r}")
    if keyframe_tolerance is not None and not keyframe_tolerance >= 0:
        raise ValueError(f"keyframe_tolerance must be >= 0, got {keyframe_tolerance!r}")
    with _open_container(path, "video") as container:
        if not container.streams.video:
            raise MediaError(f"no video stream in {path}")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if with_audio and container.streams.audio else None
        duration = _stream_seconds(container, video)
        encoder = _FrameEncoder()
        try:
            read = None
            if video_frames == "keyframes":
                read = _read_by_keyframes(
                    container, video, audio, encoder, duration, fps, max_frames, keyframe_tolerance
                )
                if read is None:  # key frames that cannot be found or reached by seeking: decode in order
                    container.seek(0)
            if read is None:
                read = _read_in_order(container, video, audio, encoder, duration, fps, max_frames)
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaError(f"corrupt or unsupported video: {path} ({_reason(exc)})") from None
    pcm, frames, targets, keys, mode = read
    gap = max((abs(frame.at_seconds - target) for frame, target in zip(frames, targets, strict=False)), default=0.0)
    notes = [_frames_note(frames, targets, keys, gap, mode, fps)]
    if frames and encoder.scaled_from is not None:
        w, h = encoder.scaled_from
        notes.append(
            f"video frames sent at {frames[0].width}x{frames[0].height} from {w}x{h}"
            f" (at most {FRAME_MAX_BLOCKS} blocks of {FRAME_BLOCK_PX} px: what one image is billed for)"
        )
    if len(frames) < len(targets):
        notes.append(f"video has {len(frames)} distinct frames for {len(targets)} sampling moments")
    return VideoRead(
        pcm16=pcm,
        frames=frames,
        targets=targets,
        key_frames=keys,
        largest_gap_seconds=gap,
        notes=tuple(notes),
    )


_ReadResult = tuple[bytes, tuple[TimedImage, ...], tuple[float, ...], int, str]


def _frames_note(
    frames: tuple[TimedImage, ...], targets: tuple[float, ...], keys: int, gap: float, mode: str, fps: float
) -> str:
    how = (
        f"{keys} key frames, {len(frames) - keys} decoded to their moment"
        if mode == "keyframes"
        else "frame-accurate (every frame decoded)"
    )
    return f"video: {len(frames)} frames at {fps:g} fps, {how}; largest gap to a target {gap:.3f} s"


def _targets_for(duration: float | None, fps: float, max_frames: int) -> tuple[float, ...]:
    if duration is not None:
        return video_frame_times(duration, fps=fps, max_frames=max_frames)
    return tuple(k / fps for k in range(max_frames))  # unknown length: plain fps, cut at max_frames


def _read_in_order(
    container: Any, video: Any, audio: Any, encoder: _FrameEncoder, duration: float | None, fps: float, max_frames: int
) -> _ReadResult:
    """Every frame decoded in file order; the first frame at or after each moment is kept (the exact mode)."""
    video.thread_type = "AUTO"  # every frame is decoded: frame threads pay for themselves here
    all_targets = _targets_for(duration, fps, max_frames)
    targets = list(all_targets)
    taken: list[float] = []
    start = _start_seconds(video)
    resampler = _new_resampler()
    pcm: list[bytes] = []
    frames: list[TimedImage] = []
    streams = [video] if audio is None else [video, audio]
    for packet in container.demux(*streams):
        for frame in packet.decode():
            if isinstance(frame, av.AudioFrame):
                pcm.append(_pcm_of(resampler.resample(frame)))
            elif isinstance(frame, av.VideoFrame) and targets and frame.time is not None:
                at = max(0.0, float(frame.time) - start)
                if at + _FRAME_TIME_TOLERANCE >= targets[0]:
                    frames.append(encoder.encode(frame, at))
                    taken.append(targets[0])
                    while targets and targets[0] <= at + _FRAME_TIME_TOLERANCE:
                        targets.pop(0)
        if not targets and audio is None:
            break  # every frame taken and no sound wanted: skip the rest of the file
    if audio is not None:
        pcm.append(_pcm_of(resampler.resample(None)))
    # unknown length: the moments are those the video reached
    return b"".join(pcm), tuple(frames), all_targets if duration is not None else tuple(taken), 0, "exact"


def _start_seconds(stream: Any) -> float:
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _read_by_keyframes(
    container: Any,
    video: Any,
    audio: Any,
    encoder: _FrameEncoder,
    duration: float | None,
    fps: float,
    max_frames: int,
    tolerance: float | None,
) -> _ReadResult | None:
    """The keyframes mode; None when the file's key frames cannot be found or reached (then the caller
    decodes in order)."""
    start = _start_seconds(video)
    tb = video.time_base
    if tb is None:
        return None
    # pass 1: packets only (no video decoding): key frame times, the end of the video, and the audio
    keys: list[float] = []
    end = 0.0
    resampler = _new_resampler()
    pcm: list[bytes] = []
    streams = [video] if audio is None else [video, audio]
    for packet in container.demux(*streams):
        if packet.stream is video:
            if packet.pts is not None:
                at = float(packet.pts * tb) - start
                end = max(end, at)
                if packet.is_keyframe:
                    keys.append(at)
        else:
            for sound in packet.decode():
                pcm.append(_pcm_of(resampler.resample(sound)))
    if audio is not None:
        pcm.append(_pcm_of(resampler.resample(None)))
    keys.sort()
    if not keys:
        return None
    targets = _targets_for(duration if duration is not None else end, fps, max_frames)
    step = targets[1] - targets[0] if len(targets) > 1 else 1.0 / fps
    tol = step / 2 if tolerance is None else tolerance
    # pass 2: each frame kept costs the pictures between the key frame before it and itself
    reader = _SeekingReader(container, video, start)
    frames: list[TimedImage] = []
    taken_keys = 0
    last = -math.inf  # timestamp of the last frame kept: frames strictly increase, none sent twice
    eps = _FRAME_TIME_TOLERANCE
    for n, target in enumerate(targets):
        following = targets[n + 1] if n + 1 < len(targets) else math.inf
        before = bisect.bisect_right(keys, target + eps) - 1
        candidates = [keys[i] for i in (before, before + 1) if 0 <= i < len(keys)]
        near = [
            k
            for k in candidates
            # within the tolerance, newer than the frame before, and not the next moment's (nearer to it)
            if abs(k - target) <= tol + eps and k > last + eps and k - target <= following - k + eps
        ]
        frame: av.VideoFrame | None
        if near:
            key = min(near, key=lambda k: abs(k - target))
            frame = reader.key_frame(key)
            if frame is None:
                return None
            taken_keys += 1
        else:
            frame = reader.forward(keys[max(before, 0)], target, after=last)
            if frame is None:
                continue  # past the last distinct frame: nothing new to send
        at = reader.seconds(frame)
        frames.append(encoder.encode(frame, at))
        last = at
    return b"".join(pcm), tuple(frames), targets, taken_keys, "keyframes"


class _SeekingReader:
    """Reaches frames by seeking to key frames: one key frame on its own, or decoding forward from one."""

    def __init__(self, container: Any, video: Any, start: float) -> None:
        self._container = container
        self._video = video
        self._start = start
        self._frames: Iterator[av.VideoFrame] | None = None  # decoding forward from self._gop
        self._gop: float | None = None
        self._last: float = -math.inf  # timestamp of the last frame the forward decoding gave
        self._skip_before = -math.inf  # frames shown before this are decoded only when referred to

    def seconds(self, frame: av.VideoFrame) -> float:
        return max(0.0, float(frame.pts * self._video.time_base) - self._start)

    def _seek(self, key: float) -> None:
        ts = round((key + self._start) / self._video.time_base)
        self._container.seek(ts, stream=self._video, backward=True, any_frame=False)
        self._frames, self._gop, self._last = None, None, -math.inf
        self._video.codec_context.skip_frame = "DEFAULT"

    def key_frame(self, key: float) -> av.VideoFrame | None:
        """The key frame at ``key`` alone: its packet decoded and the decoder drained (no frames after it)."""
        self._seek(key)
        codec = self._video.codec_context
        eps = _FRAME_TIME_TOLERANCE
        for packet in self._container.demux(self._video):
            if packet.pts is None:
                continue
            at = float(packet.pts * self._video.time_base) - self._start
            if packet.is_keyframe and abs(at - key) <= eps:
                frames = self._video.decode(packet) or self._video.decode(None)
                codec.flush_buffers()
                return next((f for f in frames if f.pts is not None), None)
            if at > key + eps and packet.is_keyframe:
                break  # the seek went past it
        return None

    def forward(self, key: float, target: float, *, after: float) -> av.VideoFrame | None:
        """The first frame at or after ``target`` (and after ``after``), decoding forward from the key
        frame at ``key``, or on from where the last call stopped when that is in the same stretch; at the
        end of the video, the last frame if it is new."""
        eps = _FRAME_TIME_TOLERANCE
        if self._frames is None or self._gop != key or self._last > target + eps:
            self._seek(key)
            self._frames, self._gop = self._decode_on(), key
        self._skip_before = target - eps
        newest: av.VideoFrame | None = None
        for frame in self._frames:
            at = self.seconds(frame)
            self._last = at
            if at + eps >= target and at > after + eps:
                return frame
            newest = frame
        self._frames = None
        if newest is not None and self.seconds(newest) > after + eps:
            return newest
        return None

    def _decode_on(self) -> Iterator[av.VideoFrame]:
        """Frames from the current position to the end. A packet shown before the moment wanted
        (``self._skip_before``) is decoded only when later frames refer to it: frames nothing refers to
        (most B-frames) cannot be the one kept, and FFmpeg skips them (``skip_frame="NONREF"``)."""
        codec = self._video.codec_context
        tb = self._video.time_base
        for packet in self._container.demux(self._video):
            early = packet.pts is not None and float(packet.pts * tb) - self._start < self._skip_before
            codec.skip_frame = "NONREF" if early else "DEFAULT"
            for frame in self._video.decode(packet):
                if frame.pts is not None:
                    yield frame
        codec.skip_frame = "DEFAULT"
        for frame in self._video.decode(None):
            if frame.pts is not None:
                yield frame


class _FrameEncoder:
    """Video frames -> JPEG at :func:`fit_frame_size`: scaled by FFmpeg's own scaler while converting to
    RGB (one pass, no Pillow resample) and encoded once, at the quality the previous frame of the same
    video landed on (frames of one video are alike), one rung up again when that one came out well
    under the cap."""

    def __init__(self) -> None:
        self._rung = 0
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}
        self.scaled_from: tuple[int, int] | None = None

    def encode(self, frame: av.VideoFrame, at_seconds: float) -> TimedImage:
        source = (frame.width, frame.height)
        size = self._sizes.get(source)
        if size is None:
            size = self._sizes[source] = fit_frame_size(*source)
        if size != source:
            self.scaled_from = source
            rgb = frame.reformat(size[0], size[1], format="rgb24", interpolation=FRAME_INTERPOLATION)
        else:
            rgb = frame.reformat(format="rgb24")
        image: Image.Image = rgb.to_image()  # type: ignore[no-untyped-call]  # PyAV leaves it untyped
        for rung in range(self._rung, len(JPEG_QUALITY_LADDER)):
            data = _jpeg_bytes(image, JPEG_QUALITY_LADDER[rung])
            if len(data) <= MAX_JPEG_BYTES:
                # well under the cap: let the next frame try one rung better
                self._rung = rung - 1 if rung > 0 and len(data) < MAX_JPEG_BYTES * _RUNG_UP_BELOW else rung
                return TimedImage(at_seconds=at_seconds, jpeg=data, width=image.width, height=image.height)
        self._rung = len(JPEG_QUALITY_LADDER) - 1
        data, width, height = _encode_jpeg(image, size)  # noise-like frame: the shrinking last resort
        return TimedImage(at_seconds=at_seconds, jpeg=data, width=width, height=height)


def _prepare_frame(frame: av.VideoFrame, at_seconds: float) -> TimedImage:
    """One frame on its own (a fresh encoder: the top quality rung first)."""
    return _FrameEncoder().encode(frame, at_seconds)


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
    video_frames: VideoFrames = "keyframes",
) -> PreparedInput:
    """Decode everything one item sends: audio (the audio file, else the video's track), video frames,
    images placed by :func:`image_times`; all images in time order. When nothing gives audio and
    ``pad_silence_seconds`` > 0, that much silence is the audio (the service needs audio before images).
    ``video_frames`` picks the video's frames (see :func:`read_video`); how they were picked, and the
    largest gap from a frame to its moment, are in the result's ``notes``."""
    pcm = b""
    frames: tuple[TimedImage, ...] = ()
    notes: tuple[str, ...] = ()
    remote = [ref for ref in (item.audio, *item.images, item.video) if ref is not None and not isinstance(ref, Path)]
    if remote:  # the runner fetches remote media before this (batchqwen.storage.fetch.localise)
        raise MediaError(f"not fetched yet: {remote[0]}")
    assert isinstance(item.audio, Path | None) and isinstance(item.video, Path | None)
    if item.audio is not None:
        pcm = decode_audio(item.audio)
    if item.video is not None:
        read = read_video(
            item.video,
            fps=video_fps,
            max_frames=max_video_frames,
            with_audio=item.audio is None,
            video_frames=video_frames,
        )
        frames, notes = read.frames, read.notes
        if item.audio is None:
            pcm = read.pcm16
    padded = 0.0
    if not pcm and pad_silence_seconds > 0:
        pcm = silence(pad_silence_seconds)
        padded = len(pcm) / INPUT_BYTES_PER_SECOND
    audio_seconds = len(pcm) / INPUT_BYTES_PER_SECOND
    images = [
        prepare_image(path, at_seconds=at)
        for path, at in zip(item.images, image_times(len(item.images), audio_seconds), strict=True)
        if isinstance(path, Path)
    ]
    ordered = sorted([*frames, *images], key=lambda image: image.at_seconds)  # stable: frames first on ties
    return PreparedInput(pcm16=pcm, images=tuple(ordered), padded_silence_seconds=padded, notes=notes)


__all__ = [
    "DEFAULT_MAX_VIDEO_FRAMES",
    "FRAME_BLOCK_PX",
    "FRAME_MAX_BLOCKS",
    "JPEG_QUALITY_LADDER",
    "MAX_JPEG_BYTES",
    "MAX_SOURCE_PIXELS",
    "VideoFrames",
    "VideoProbe",
    "VideoRead",
    "decode_audio",
    "extract_video",
    "fit_frame_size",
    "fit_image_size",
    "image_times",
    "pcm_to_wav",
    "prepare_image",
    "prepare_item",
    "probe_audio_seconds",
    "probe_image_size",
    "probe_video",
    "read_video",
    "silence",
    "video_frame_times",
]
