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
import warnings
import wave
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import av
import av.error
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from batchqwen import images as image_plan
from batchqwen import probe
from batchqwen.errors import InputFileError, MediaError
from batchqwen.images import DEFAULT_IMAGES_PER_SECOND, ImageFrames, ImageParts
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
# Multichannel -> mono: ITU-R BS.775 (Table 2, 3/2 to 1/0): M = 0.7071 (L + R) + C + 0.5 (Ls + Rs), LFE
# dropped. A voice in the centre channel keeps its level (FFmpeg's default matrix, normalised for s16,
# put it 11 dB down); mono and stereo keep FFmpeg's own conversion.
DOWNMIX_COEFFICIENTS = {
    "FL": 0.7071, "FR": 0.7071, "FC": 1.0, "LFE": 0.0, "LFE2": 0.0,
    "BL": 0.5, "BR": 0.5, "SL": 0.5, "SR": 0.5, "BC": 0.7071,
    "FLC": 0.7071, "FRC": 0.7071, "TC": 0.5,
}  # fmt: skip
_OTHER_CHANNEL = 0.5  # height and wide channels

# Pillow's other warnings go to the row's notes; its decompression-bomb warning is raised (this filter
# goes in front), so it becomes the row's plain error (MAX_SOURCE_PIXELS is batchqwen's own check)
image_plan.install_warning_hook()
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


# --------------------------------------------------------------------------------------------- files


def _rewound(path: probe.Source) -> Any:
    """A path as it is; an open file (a remote object read by ranges) from its start."""
    if not isinstance(path, Path):
        path.seek(0)
    return path


def _check_file(path: probe.Source) -> None:
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
    return decode_audio_noted(path)[0]


def decode_audio_noted(path: Path) -> tuple[bytes, tuple[str, ...]]:
    """:func:`decode_audio` and the notes for the row (a multichannel downmix)."""
    header = _pcm_wav_header(path)
    if header is not None and header[1:] == (1, 2, INPUT_SAMPLE_RATE) and header[0] > 0:
        # already what the service takes: read the samples as they are, no decoder needed
        with wave.open(str(path), "rb") as wav:
            return wav.readframes(header[0]), ()
    # headers only first (FFmpeg's full stream analysis costs ~30 ms on a WAV); the full analysis is
    # the fallback for containers whose audio stream shows up only later in the file
    for quick in (True, False):
        with _open_container(path, "audio", quick=quick) as container:
            if not container.streams.audio:
                if quick:
                    continue
                raise MediaError(f"no audio stream in {path}")
            stream = container.streams.audio[0]
            mixer = MonoMixer()
            pcm = b"".join(_decode_audio_stream(container, stream, path, mixer))
            break
    if not pcm:
        raise MediaError(f"corrupt or unsupported audio: {path} (no audio samples could be decoded)")
    return pcm, mixer.notes


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


def _decode_audio_stream(container: Any, stream: Any, path: Path, mixer: MonoMixer | None = None) -> Iterator[bytes]:
    mixer = mixer or MonoMixer()
    try:
        for frame in container.decode(stream):
            yield mixer.mix(frame)
        yield mixer.flush()  # flush what the resampler holds back
    except (av.error.FFmpegError, ValueError) as exc:
        raise MediaError(f"corrupt or unsupported audio: {path} ({_reason(exc)})") from None


class MonoMixer:
    """Decoded audio frames -> PCM16LE mono 16 kHz bytes: FFmpeg's conversion for mono and stereo, the
    :data:`DOWNMIX_COEFFICIENTS` (ITU-R BS.775) for more channels, so a centre-channel voice keeps its level."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._coefficients: np.ndarray[Any, np.dtype[np.float32]] | None = None
        self.notes: tuple[str, ...] = ()

    def mix(self, frame: av.AudioFrame) -> bytes:
        if self._resampler is None:
            self._start(frame)
        assert self._resampler is not None
        return self._pcm(self._resampler.resample(frame))

    def flush(self) -> bytes:
        return b"" if self._resampler is None else self._pcm(self._resampler.resample(None))

    def _start(self, frame: av.AudioFrame) -> None:
        names = [channel.name for channel in frame.layout.channels]
        if len(names) <= 2:
            self._resampler = _new_resampler()
            return
        weights = [DOWNMIX_COEFFICIENTS.get(name, _OTHER_CHANNEL) for name in names]
        self._coefficients = np.asarray(weights, dtype=np.float32)
        self._resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=INPUT_SAMPLE_RATE)
        self.notes = (
            f"{frame.layout.name} audio downmixed to mono with ITU-R BS.775 coefficients"
            " (centre 1.0, front 0.7071, surround 0.5, LFE dropped)",
        )

    def _pcm(self, frames: list[av.AudioFrame]) -> bytes:
        if self._coefficients is None:
            return _pcm_of(frames)
        out = []
        for frame in frames:
            mono = self._coefficients @ frame.to_ndarray()  # (channels,) @ (channels, samples)
            out.append(np.clip(np.rint(mono * 32767.0), -32768, 32767).astype("<i2").tobytes())
        return b"".join(out)


def probe_audio_seconds(path: Path) -> float:
    """Duration in seconds of the first audio stream, from container metadata (no decoding), with the
    fallbacks of :func:`batchqwen.probe.probe_audio` where a header is missing or wrong. Same errors as
    decode_audio."""
    return measure_audio(path).seconds


def measure_audio(path: probe.Source) -> probe.Measured:
    """:func:`probe_audio_seconds` with how it was measured (``header``, ``file_size``, ``packet_scan``,
    ``decode``) and why a fallback was taken."""
    return probe.probe_audio(path, decode=_decoded_seconds)


def _decoded_seconds(source: probe.Source) -> float:
    if not isinstance(source, Path):
        raise MediaError("corrupt or unsupported audio: no duration in its header or packets")
    return len(decode_audio(source)) / INPUT_BYTES_PER_SECOND


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


def _open_image(path: probe.Source) -> Image.Image:
    """Lazy Pillow open with the size guard; no pixels decoded yet. ``path`` may be an open binary file
    (a remote object read by ranges)."""
    _check_file(path)
    try:
        try:
            image = Image.open(_rewound(path))
        except UnidentifiedImageError:
            if not image_plan.register_plugins():  # HEIC/HEIF: its plugin is loaded on first need
                raise
            image = Image.open(_rewound(path))
    except PermissionError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # the warning is raised as an exception (the filter set at import), never printed raw
        raise MediaError(
            f"image too large: {path} (over {MAX_SOURCE_PIXELS:,} pixels, Pillow's decompression-bomb limit):"
            " scale it down before sending it"
        ) from None
    except UnidentifiedImageError as exc:
        raise MediaError(_unreadable(path, exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(f"not an image Pillow can read: {path} ({_reason(exc)})") from None
    if image.width * image.height > MAX_SOURCE_PIXELS:
        image.close()
        raise MediaError(f"image too large: {path} ({image.width}x{image.height} is over {MAX_SOURCE_PIXELS:,} pixels)")
    return image


def _unreadable(path: probe.Source, exc: BaseException) -> str:
    """A message for a file Pillow cannot identify that names its format and what to do."""
    try:
        if isinstance(path, Path):
            with path.open("rb") as handle:
                head = handle.read(64)
        else:
            head = _rewound(path).read(64)
    except OSError:
        head = b""
    named = path if isinstance(path, Path) else Path(str(getattr(path, "name", "")))
    kind, advice = image_plan.describe_unreadable(named, head)
    return f"not an image Pillow can read: {path} is {kind} ({_reason(exc)}); {advice}"


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


def _frame_count(image: Image.Image) -> int:
    """Frames or pages of an animated / multi-page image (1 for anything else)."""
    if image.format not in image_plan.MULTI_FRAME_FORMATS:
        return 1
    try:
        return max(1, int(getattr(image, "n_frames", 1)))
    except (OSError, ValueError, EOFError):
        return 1


def probe_image_parts(path: probe.Source, *, image_frames: ImageFrames = "first") -> tuple[tuple[int, int], ImageParts]:
    """The upright size of an image and what it would send (frames × tiles), from its header. Raises
    MediaError for an image too thin to read."""
    with _open_image(path) as image:
        oriented = _oriented_size(image)
        try:
            parts = image_plan.plan_parts(image.format or "", oriented, _frame_count(image), image_frames)
        except ValueError as exc:
            raise MediaError(f"{path}: {exc}") from None
    return oriented, parts


def part_sizes(oriented: tuple[int, int], parts: ImageParts, kept: int) -> list[tuple[int, int]]:
    """The sizes of the first ``kept`` parts, as sent (each tile fitted like an image)."""
    boxes = image_plan.tile_boxes(*oriented)
    sizes = [fit_image_size(right - left, bottom - top) for left, top, right, bottom in boxes]
    return [sizes[n % len(sizes)] for n in range(kept)]


def prepare_image_parts(path: Path, parts: ImageParts, kept: int) -> list[TimedImage]:
    """The first ``kept`` parts of an image file (frame by frame, tile by tile), each prepared like
    :func:`prepare_image`, at 0 s (the caller places them)."""
    if parts.count == 1 or (kept <= 1 and parts.tiles == 1):
        return [prepare_image(path)]
    out: list[TimedImage] = []
    with _open_image(path) as image:
        try:
            for frame in range(parts.frames):
                if len(out) >= kept:
                    break
                if frame:
                    image.seek(frame)
                picture = ImageOps.exif_transpose(image.convert("RGBA") if image.mode == "P" else image)
                picture = _normalize_mode(picture)
                for left, top, right, bottom in image_plan.tile_boxes(*picture.size):
                    if len(out) >= kept:
                        break
                    tile = picture.crop((left, top, right, bottom))
                    data, width, height = _encode_jpeg(tile, fit_image_size(*tile.size))
                    out.append(TimedImage(at_seconds=0.0, jpeg=data, width=width, height=height))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise MediaError(f"image too large: {path}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise MediaError(f"not an image Pillow can read: {path} ({_reason(exc)})") from None
    return out


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
    duration_method: probe.Method = "header"  # how the video's length was measured (see batchqwen.probe)
    audio_method: probe.Method | None = "header"  # how its audio track's was; None when it has none
    notes: tuple[str, ...] = ()  # why a fallback was taken
    bytes_read: int | None = None  # a packet scan's: the file's size (it reads the packets through)


def probe_video(path: probe.Source, *, fps: float = 1.0, max_frames: int = DEFAULT_MAX_VIDEO_FRAMES) -> VideoProbe:
    """Duration, audio length, sampling moments and sent frame size of a video, without decoding: the
    lengths as :func:`batchqwen.probe.stream_duration` measures them (the header where sound, else a
    packet scan), the same measure the run samples its frames on. ``path`` may be an open binary file
    (a remote object read by ranges)."""
    for quick in (True, False):  # a container whose headers lack the frame size gets the full analysis
        opened = (
            _open_container(path, "video", quick=quick)
            if isinstance(path, Path)
            else probe.open_container(path, "video", quick=quick)
        )
        with opened as container:
            if not container.streams.video:
                raise MediaError(f"no video stream in {path}")
            video = container.streams.video[0]
            width, height = video.codec_context.width, video.codec_context.height
            if width <= 0 or height <= 0:
                continue
            try:
                measured = probe.stream_duration(container, video)
                audio = None
                if container.streams.audio:
                    if measured is None or measured.method != "header":
                        container.seek(0)  # the packet scan read to the end
                    audio = probe.stream_duration(container, container.streams.audio[0])
            except (av.error.FFmpegError, ValueError) as exc:
                raise MediaError(f"corrupt or unsupported video: {path} ({_reason(exc)})") from None
        duration = measured.seconds if measured is not None else 0.0
        notes = [m.note for m in (measured, audio) if m is not None and m.note]
        return VideoProbe(
            duration_seconds=duration,
            audio_seconds=0.0 if not audio else audio.seconds,
            frame_times=video_frame_times(duration, fps=fps, max_frames=max_frames),
            frame_size=fit_frame_size(width, height),
            duration_method=measured.method if measured is not None else "decode",
            audio_method=None if audio is None else audio.method,
            notes=tuple(dict.fromkeys(notes)),
            bytes_read=probe.file_size(path) if notes else None,
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
    duration_seconds: float | None = None  # the video's length the moments were taken on


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
        encoder = _FrameEncoder()
        mixer = MonoMixer()
        try:
            # the moments come from the same measure of the video's length as the estimate's
            measured = probe.stream_duration(container, video)
            if measured is None or measured.method != "header":
                container.seek(0)  # the packet scan read to the end
            duration = measured.seconds if measured is not None else None
            read = None
            if video_frames == "keyframes":
                read = _read_by_keyframes(
                    container, video, audio, encoder, duration, fps, max_frames, keyframe_tolerance, mixer
                )
                if read is None:  # key frames that cannot be found or reached by seeking: decode in order
                    container.seek(0)
                    mixer = MonoMixer()
            if read is None:
                read = _read_in_order(container, video, audio, encoder, duration, fps, max_frames, mixer)
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaError(f"corrupt or unsupported video: {path} ({_reason(exc)})") from None
    pcm, frames, targets, keys, mode = read
    mixer_notes = mixer.notes
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
    if encoder.rotation and frames:
        notes.append(
            f"video rotated {encoder.rotation}° clockwise (its display matrix): frames sent upright at"
            f" {frames[0].width}x{frames[0].height}"
        )
    if measured is not None and measured.note:
        notes.append(measured.note)
    notes.extend(mixer_notes)
    return VideoRead(
        pcm16=pcm,
        frames=frames,
        targets=targets,
        key_frames=keys,
        largest_gap_seconds=gap,
        notes=tuple(notes),
        duration_seconds=duration,
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
    container: Any,
    video: Any,
    audio: Any,
    encoder: _FrameEncoder,
    duration: float | None,
    fps: float,
    max_frames: int,
    mixer: MonoMixer | None = None,
) -> _ReadResult:
    """Every frame decoded in file order; the first frame at or after each moment is kept (the exact mode)."""
    video.thread_type = "AUTO"  # every frame is decoded: frame threads pay for themselves here
    all_targets = _targets_for(duration, fps, max_frames)
    targets = list(all_targets)
    taken: list[float] = []
    start = _start_seconds(video)
    resampler = mixer or MonoMixer()
    pcm: list[bytes] = []
    frames: list[TimedImage] = []
    streams = [video] if audio is None else [video, audio]
    for packet in container.demux(*streams):
        for frame in packet.decode():
            if isinstance(frame, av.AudioFrame):
                pcm.append(resampler.mix(frame))
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
        pcm.append(resampler.flush())
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
    mixer: MonoMixer | None = None,
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
    resampler = mixer or MonoMixer()
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
                pcm.append(resampler.mix(sound))
    if audio is not None:
        pcm.append(resampler.flush())
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
        self.rotation = 0  # degrees clockwise applied to the last frame (its display matrix), 0/90/180/270

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
        image = self._upright(frame, image)
        for rung in range(self._rung, len(JPEG_QUALITY_LADDER)):
            data = _jpeg_bytes(image, JPEG_QUALITY_LADDER[rung])
            if len(data) <= MAX_JPEG_BYTES:
                # well under the cap: let the next frame try one rung better
                self._rung = rung - 1 if rung > 0 and len(data) < MAX_JPEG_BYTES * _RUNG_UP_BELOW else rung
                return TimedImage(at_seconds=at_seconds, jpeg=data, width=image.width, height=image.height)
        self._rung = len(JPEG_QUALITY_LADDER) - 1
        data, width, height = _encode_jpeg(image, size)  # noise-like frame: the shrinking last resort
        return TimedImage(at_seconds=at_seconds, jpeg=data, width=width, height=height)

    def _upright(self, frame: av.VideoFrame, image: Image.Image) -> Image.Image:
        """The picture turned as the stream's display matrix says (phones record portrait video as
        landscape frames with a 90° flag). PyAV gives the matrix's rotation counter-clockwise."""
        try:
            ccw = round(float(frame.rotation or 0) / 90) * 90 % 360
        except (TypeError, ValueError):
            ccw = 0
        self.rotation = (360 - ccw) % 360
        if ccw == 0:
            return image
        turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
        return image.transpose(turn[ccw])


def _prepare_frame(frame: av.VideoFrame, at_seconds: float) -> TimedImage:
    """One frame on its own (a fresh encoder: the top quality rung first)."""
    return _FrameEncoder().encode(frame, at_seconds)


# ---------------------------------------------------------------------------------------------- item


def image_times(count: int, audio_seconds: float) -> tuple[float, ...]:
    """Where an item's images sit: image k at k seconds, clamped to the audio's length."""
    end = max(0.0, audio_seconds)
    return tuple(min(float(k), end) for k in range(count))


def silence_note(seconds: float, *, under_video: bool) -> str:
    """The row's note for padded silence (the run's and the estimate's)."""
    if under_video:
        return f"{seconds:.3f} s of silence sent under a video with no sound (its frames need audio)"
    return f"{seconds:.3f} s of silence sent as the audio: the item has none (--pad-silence)"


def prepare_item(
    item: Item,
    *,
    video_fps: float = 1.0,
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
    pad_silence_seconds: float = 0.0,
    video_frames: VideoFrames = "keyframes",
    image_frames: ImageFrames = "first",
    images_per_second: float = DEFAULT_IMAGES_PER_SECOND,
    pad_under_frames: bool = False,
) -> PreparedInput:
    """Decode everything one item sends: audio (the audio file, else the video's track), video frames,
    images placed by :func:`image_times`; all images in time order. When nothing gives audio and
    ``pad_silence_seconds`` > 0, that much silence is the audio (the service needs audio before images);
    with ``pad_under_frames`` (a family whose images a second are a hard limit: LiveTranslate), under a
    video with no sound, silence as long as the video, so its frames are not refused.
    ``video_frames`` picks the video's frames (see :func:`read_video`); ``image_frames`` says whether
    animated / multi-page images send their first frame or all (see :mod:`batchqwen.images`), and extra
    images (frames, tiles) stop at what ``images_per_second`` allows for the audio. Everything decided
    (frames picked, rotation, downmix, silence, what was dropped) is in the result's ``notes``."""
    pcm = b""
    frames: tuple[TimedImage, ...] = ()
    notes: list[str] = []
    video_seconds = 0.0
    remote = [ref for ref in (item.audio, *item.images, item.video) if ref is not None and not isinstance(ref, Path)]
    if remote:  # the runner fetches remote media before this (batchqwen.storage.fetch.localise)
        raise MediaError(f"not fetched yet: {remote[0]}")
    assert isinstance(item.audio, Path | None) and isinstance(item.video, Path | None)
    local_images = [path for path in item.images if isinstance(path, Path)]
    if item.audio is not None:
        pcm, mixed = decode_audio_noted(item.audio)
        notes.extend(mixed)
    if item.video is not None:
        read = read_video(
            item.video,
            fps=video_fps,
            max_frames=max_video_frames,
            with_audio=item.audio is None,
            video_frames=video_frames,
        )
        frames = read.frames
        notes.extend(read.notes)
        video_seconds = read.duration_seconds or 0.0
        if item.audio is None:
            pcm = read.pcm16
    padded = 0.0
    if not pcm and pad_silence_seconds > 0:
        pad = pad_silence_seconds
        under_video = pad_under_frames and bool(frames) and video_seconds > pad
        if under_video:
            pad = video_seconds
        pcm = silence(pad)
        padded = len(pcm) / INPUT_BYTES_PER_SECOND
        notes.append(silence_note(padded, under_video=under_video))
    audio_seconds = len(pcm) / INPUT_BYTES_PER_SECOND
    with image_plan.pillow_warnings() as warned:
        planned = [probe_image_parts(path, image_frames=image_frames)[1] for path in local_images]
        allowed = image_plan.images_allowed(images_per_second, audio_seconds)
        kept = image_plan.keep_counts(planned, len(frames), allowed)
        parts: list[TimedImage] = []
        for path, part, count in zip(local_images, planned, kept, strict=True):
            parts.extend(prepare_image_parts(path, part, count))
            notes.extend(image_plan.parts_notes(path, part, count, images_per_second))
    notes.extend(warned)
    images = [
        replace(image, at_seconds=at) for image, at in zip(parts, image_times(len(parts), audio_seconds), strict=True)
    ]
    ordered = sorted([*frames, *images], key=lambda image: image.at_seconds)  # stable: frames first on ties
    return PreparedInput(pcm16=pcm, images=tuple(ordered), padded_silence_seconds=padded, notes=tuple(notes))


__all__ = [
    "DEFAULT_MAX_VIDEO_FRAMES",
    "DOWNMIX_COEFFICIENTS",
    "FRAME_BLOCK_PX",
    "FRAME_MAX_BLOCKS",
    "JPEG_QUALITY_LADDER",
    "MAX_JPEG_BYTES",
    "MAX_SOURCE_PIXELS",
    "MonoMixer",
    "VideoFrames",
    "VideoProbe",
    "VideoRead",
    "decode_audio",
    "decode_audio_noted",
    "extract_video",
    "fit_frame_size",
    "fit_image_size",
    "image_times",
    "measure_audio",
    "part_sizes",
    "pcm_to_wav",
    "prepare_image",
    "prepare_image_parts",
    "prepare_item",
    "probe_audio_seconds",
    "probe_image_parts",
    "probe_image_size",
    "probe_video",
    "read_video",
    "silence",
    "silence_note",
    "video_frame_times",
]
