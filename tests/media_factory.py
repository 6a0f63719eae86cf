"""Real media files for tests, generated on the spot with PyAV, Pillow and numpy (no ffmpeg binary).

Every function writes one file to the path it is given and returns that path; contents are
deterministic. Other test modules import these, so the signatures are kept stable:

- :func:`speech_like` - a float32 waveform that looks like speech to an energy VAD (voiced harmonics,
  syllable-rate envelope, pauses)
- :func:`write_audio` - WAV / MP3 / FLAC / OGG (Opus) / M4A (AAC), any rate and channel count
- :func:`write_image` - PNG / JPEG / anything Pillow writes, optional alpha and EXIF orientation
- :func:`write_cmyk_jpeg`, :func:`write_png16`, :func:`write_huge_png_header`
- :func:`write_video` - MP4 (H.264 + AAC) with moving shapes and optional speech-like audio
- :func:`write_camera_video` - camera-like MP4: panning detailed scene, sensor noise, a fixed key-frame
  interval, a chosen bit rate
- :func:`write_text`, :func:`write_truncated`
"""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import numpy as np
from PIL import Image, ImageDraw

# suffix -> (container format, audio codec, sample format the encoder takes, forced encoder rate or None)
_AUDIO_CODECS: dict[str, tuple[str, str, str, int | None]] = {
    ".wav": ("wav", "pcm_s16le", "s16", None),
    ".mp3": ("mp3", "libmp3lame", "s16p", None),
    ".flac": ("flac", "flac", "s16", None),
    ".ogg": ("ogg", "libopus", "s16", 48_000),  # Opus only runs at 8/12/16/24/48 kHz
    ".opus": ("ogg", "libopus", "s16", 48_000),
    ".m4a": ("mp4", "aac", "fltp", None),
}


def speech_like(seconds: float, rate: int = 16_000, channels: int = 1, *, seed: int = 0) -> np.ndarray:
    """A deterministic speech-like waveform, float32 in [-1, 1], shape (channels, samples).

    Voiced harmonics around 120-180 Hz, a ~4 Hz syllable envelope, and a short pause every second, so an
    energy-based VAD sees speech and gaps. Channels differ slightly (a little delay), like a real stereo
    recording.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    pitch = 150 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.5
    envelope *= (t % 1.0) < 0.8  # a 200 ms pause each second
    signal = 0.3 * voice * envelope + 0.003 * rng.standard_normal(n)
    rows = [np.roll(signal, 7 * c) for c in range(channels)]
    return np.clip(np.stack(rows), -1, 1).astype(np.float32)


def write_audio(path: Path, *, seconds: float = 3.0, rate: int = 44_100, channels: int = 2, seed: int = 0) -> Path:
    """Encode speech-like audio to ``path``; the suffix picks the format (.wav .mp3 .flac .ogg .m4a).

    ``rate`` and ``channels`` describe the source; WAV/MP3/FLAC/AAC keep them, Opus is stored at 48 kHz.
    """
    container_format, codec, sample_format, forced_rate = _AUDIO_CODECS[path.suffix.lower()]
    samples = speech_like(seconds, rate, channels, seed=seed)
    layout = "mono" if channels == 1 else "stereo"
    out_rate = forced_rate or rate
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = cast(av.AudioStream, container.add_stream(codec, rate=out_rate, layout=layout))
        frame_size = stream.codec_context.frame_size or 1024
        resampler = av.AudioResampler(format=sample_format, layout=layout, rate=out_rate, frame_size=frame_size)
        source = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
        source.sample_rate = rate
        source.pts = 0
        source.time_base = Fraction(1, rate)
        for frame in [*resampler.resample(source), *resampler.resample(None)]:
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _drawing(width: int, height: int, *, seed: int = 0) -> Image.Image:
    """An RGB picture with a gradient and a few shapes (compresses like a simple photo)."""
    vertical = Image.linear_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    horizontal = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90)
    horizontal = horizontal.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((width, height))
    diagonal = Image.blend(horizontal, vertical, 0.5)
    image = Image.merge("RGB", (horizontal, vertical, diagonal))
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, max(1, width // 2))), int(rng.integers(0, max(1, height // 2)))
        x1, y1 = x0 + max(1, width // 4), y0 + max(1, height // 4)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    return image


def write_image(
    path: Path,
    width: int = 320,
    height: int = 240,
    *,
    alpha: bool = False,
    exif_orientation: int | None = None,
    quality: int = 90,
    mark_corner: bool = False,
    seed: int = 0,
) -> Path:
    """A drawing saved by suffix (.png, .jpg, .webp, .gif, ...). ``alpha``: RGBA with a transparent left
    half (PNG/WebP). ``exif_orientation``: the EXIF Orientation tag (6 = display rotated 90° clockwise),
    with pixels stored unrotated as a camera does. ``mark_corner``: a pure red square (1/8 of the short
    side) in the stored top-left corner, to check where rotation puts it. PNGs use fast compression."""
    image = _drawing(width, height, seed=seed)
    if mark_corner:
        side = max(1, min(width, height) // 8)
        ImageDraw.Draw(image).rectangle((0, 0, side - 1, side - 1), fill=(255, 0, 0))
    if alpha:
        image = image.convert("RGBA")
        mask = np.full((height, width), 255, dtype=np.uint8)
        mask[:, : width // 2] = 0
        image.putalpha(Image.fromarray(mask, mode="L"))
    options: dict[str, Any] = {}
    if path.suffix.lower() in (".jpg", ".jpeg"):
        options["quality"] = quality
    if path.suffix.lower() == ".png":
        options["compress_level"] = 1
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        options["exif"] = exif.tobytes()
    image.save(path, **options)
    return path


def write_cmyk_jpeg(path: Path, width: int = 300, height: int = 200) -> Path:
    """A CMYK JPEG (as print workflows produce)."""
    _drawing(width, height).convert("CMYK").save(path, "JPEG", quality=90)
    return path


def write_png16(path: Path, width: int = 64, height: int = 48) -> Path:
    """A 16-bit grayscale PNG: a horizontal ramp over the full 0..65535 range."""
    ramp = np.tile(np.linspace(0, 65535, width, dtype=np.uint16), (height, 1))
    Image.fromarray(ramp).save(path)  # mode I;16
    return path


def write_huge_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width``×``height`` with almost no data: a decompression-bomb shape
    that costs nothing to make. Pillow's lazy open sees the size; decoding it would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def write_video(
    path: Path,
    *,
    seconds: float = 3.0,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
    audio: bool = True,
    audio_rate: int = 44_100,
    codec: str = "libx264",
    crf: int = 30,
) -> Path:
    """An MP4 of a ball moving across a gradient, H.264 at ``fps``, with a stereo AAC speech-like track
    of the same length when ``audio``. Frame k has pts k/fps exactly."""
    width, height = size
    frame_count = round(seconds * fps)
    with av.open(str(path), mode="w", format="mp4") as container:
        video = cast(
            av.VideoStream,
            container.add_stream(codec, rate=fps, options={"crf": str(crf), "preset": "veryfast"}),
        )
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        sound = container.add_stream("aac", rate=audio_rate, layout="stereo") if audio else None
        background = np.asarray(_drawing(width, height))
        for k in range(frame_count):
            picture = Image.fromarray(background)
            draw = ImageDraw.Draw(picture)
            cx = int((k / max(1, frame_count - 1)) * (width - 40)) + 20
            draw.ellipse((cx - 20, height // 2 - 20, cx + 20, height // 2 + 20), fill=(255, 255, 255))
            frame = av.VideoFrame.from_image(picture)  # type: ignore[no-untyped-call]
            frame.pts = k
            frame.time_base = Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=audio_rate, frame_size=1024)
            source = av.AudioFrame.from_ndarray(speech_like(seconds, audio_rate, 2), format="fltp", layout="stereo")
            source.sample_rate, source.pts, source.time_base = audio_rate, 0, Fraction(1, audio_rate)
            for frame in [*resampler.resample(source), *resampler.resample(None)]:
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
    return path


def write_text(path: Path, text: str = "this is not media, just a text file\n") -> Path:
    """A plain text file (give it a media suffix to test misnamed files)."""
    path.write_text(text, encoding="utf-8")
    return path


def write_truncated(source: Path, path: Path, *, keep_fraction: float = 0.5) -> Path:
    """A copy of ``source`` cut after ``keep_fraction`` of its bytes."""
    data = source.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep_fraction))])
    return path


def write_camera_video(
    path: Path,
    *,
    seconds: float = 6.0,
    fps: int = 30,
    size: tuple[int, int] = (320, 180),
    keyframe_seconds: float = 2.0,
    bit_rate: int | None = None,
    noise: float = 2.0,
    texture: float = 5.0,
    audio: bool = True,
    preset: str = "ultrafast",
    seed: int = 0,
) -> Path:
    """An MP4 shaped like a camera's: a slowly panning scene with fine detail (``texture``: its standard
    deviation in 8-bit levels), a moving object and sensor noise that changes every frame (``noise``,
    likewise; ~2 a clean camera, ~8 a dim room), H.264
    with a key frame exactly every ``keyframe_seconds`` (fixed GOP, no scene-cut key frames, as camera
    encoders do), at ``bit_rate`` bits/s when given (else x264's default CRF), and a speech-like AAC track
    when ``audio``. Frame k has pts k/fps exactly; key frames sit at multiples of ``keyframe_seconds``."""
    width, height = size
    gop = max(1, round(keyframe_seconds * fps))
    frame_count = round(seconds * fps)
    rng = np.random.default_rng(seed)
    pan = max(8, width // 4)
    scene = np.asarray(_drawing(width + pan, height + pan, seed=seed)).astype(np.int16)
    # fine texture (foliage, fabric): what makes real footage cost bits and JPEG bytes
    if texture > 0:
        scene += rng.normal(0, texture, (height + pan, width + pan, 1)).astype(np.int16)
    grain = rng.normal(0, noise, (height + 16, width + 16, 3)).astype(np.int16) if noise > 0 else None
    options = {"preset": preset, "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
    if bit_rate is None:
        options["crf"] = "28"
    else:
        options.update(maxrate=str(bit_rate), bufsize=str(2 * bit_rate))
    with av.open(str(path), mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps, options=options)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        video.codec_context.gop_size = gop
        if bit_rate is not None:
            video.bit_rate = bit_rate
        sound = container.add_stream("aac", rate=44_100, layout="stereo") if audio else None
        for k in range(frame_count):
            t = k / max(1, frame_count - 1)
            x, y = int(t * pan), int((0.5 - 0.5 * np.cos(np.pi * t)) * pan)
            picture = scene[y : y + height, x : x + width].copy()
            cx, cy = int(width * (0.2 + 0.6 * t)), height // 2 + int(height * 0.2 * np.sin(6 * np.pi * t))
            r = max(2, height // 10)
            picture[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r] = (230, 40, 40)
            if grain is not None:
                ox, oy = int(rng.integers(0, 16)), int(rng.integers(0, 16))
                picture += grain[oy : oy + height, ox : ox + width]
            frame = av.VideoFrame.from_ndarray(np.clip(picture, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts = k
            frame.time_base = Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=44_100, frame_size=1024)
            source = av.AudioFrame.from_ndarray(speech_like(seconds, 44_100, 2), format="fltp", layout="stereo")
            source.sample_rate, source.pts, source.time_base = 44_100, 0, Fraction(1, 44_100)
            for chunk in [*resampler.resample(source), *resampler.resample(None)]:
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
    return path
