"""A corpus of media as people have them, generated on the spot with PyAV, Pillow and pillow-heif (no
blobs): the WAV variants of phones, call centres and FFmpeg pipes, MP3 with and without a Xing header,
ADTS AAC, Opus in Ogg and WebM, a browser's MediaRecorder WebM without a duration, FLAC 24/96, AMR, 5.1;
photos (EXIF-rotated JPEG and HEIC, 16-bit PNG, WebP, AVIF, animated GIF, multi-page TIFF, a panorama);
videos (H.264 MP4, a MOV with a 90° rotation flag, VP9 WebM, MKV, HEVC, AV1, one without sound).

:func:`make_corpus` writes every file into a folder and says what each one is and what it should send
(:class:`CorpusFile`). ``python tests/media_corpus.py DIR`` writes it for a look by hand.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import av
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from media_factory import speech_like, write_audio, write_image, write_png16, write_video


@dataclass(frozen=True)
class CorpusFile:
    """One file of the corpus and what sending it should do (with the default options)."""

    name: str
    column: str  # the manifest column: audio, image or video
    path: Path
    seconds: float | None  # the sound's real length (None: no sound, silence is padded)
    images: int = 0  # images sent (video frames, tiles and frames included)
    portrait: bool = False  # every image sent is taller than wide
    fallback: bool = False  # its header is missing or lies: the estimate must not take it at its word


# ------------------------------------------------------------------------------------------- audio


def encode_audio(
    path: Path,
    *,
    container_format: str,
    codec: str,
    seconds: float,
    rate: int,
    layout: str = "mono",
    signal: np.ndarray | None = None,
    bit_rate: int | None = None,
    container_options: dict[str, str] | None = None,
    codec_options: dict[str, str] | None = None,
    vbr_quality: int | None = None,
    sample_format: str | None = None,
) -> Path:
    """Speech-like audio (or ``signal``, float32 (channels, samples)) encoded with ``codec`` into
    ``container_format``, through PyAV."""
    channels = len(av.AudioLayout(layout).channels)
    samples = signal if signal is not None else speech_like(seconds, rate, channels)
    with av.open(str(path), mode="w", format=container_format, options=container_options or {}) as container:
        stream = cast(av.AudioStream, container.add_stream(codec, rate=rate, layout=layout))
        if bit_rate:
            stream.bit_rate = bit_rate
        if sample_format:  # e.g. FLAC from s32 samples: 24 bits a sample
            stream.format = sample_format
        if codec_options:
            stream.codec_context.options = codec_options
        if vbr_quality is not None:  # LAME's -V: quality-driven variable bit rate
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = vbr_quality * 118  # FF_QP2LAMBDA
        frame_size = stream.codec_context.frame_size or 1024
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate, frame_size=frame_size)
        source = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32), format="fltp", layout=layout
        )
        source.sample_rate, source.pts, source.time_base = rate, 0, Fraction(1, rate)
        for frame in [*resampler.resample(source), *resampler.resample(None)]:
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _wav(path: Path, codec: str, rate: int, seconds: float, layout: str = "mono", **kw: Any) -> Path:
    return encode_audio(path, container_format="wav", codec=codec, seconds=seconds, rate=rate, layout=layout, **kw)


def write_pcm_wav(path: Path, *, seconds: float, rate: int = 16_000, chunks_before: bool = False) -> Path:
    """A PCM16 mono WAV written byte by byte; ``chunks_before``: LIST/INFO and bext-like chunks before the
    samples and an id3 chunk after them (what recorders and editors add)."""
    pcm = (speech_like(seconds, rate)[0] * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    chunks = [b"fmt " + struct.pack("<I", len(fmt)) + fmt]
    if chunks_before:
        info = b"INFO" + b"INAM" + struct.pack("<I", 6) + b"memo1\0"
        chunks.append(b"LIST" + struct.pack("<I", len(info)) + info)
        chunks.append(b"junk" + struct.pack("<I", 27) + b"x" * 27 + b"\0")  # an odd size, padded
    chunks.append(b"data" + struct.pack("<I", len(pcm)) + pcm)
    if chunks_before:
        chunks.append(b"id3 " + struct.pack("<I", 10) + b"ID3\x03" + b"\0" * 6)
    body = b"WAVE" + b"".join(chunks)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def as_pipe_wav(path: Path) -> Path:
    """Rewrite a WAV's RIFF and data sizes as 0xFFFFFFFF, as FFmpeg leaves them when it writes to a pipe
    (``ffmpeg -i x -f wav pipe:1 > a.wav``): it cannot seek back to fill them in."""
    data = bytearray(path.read_bytes())
    data[4:8] = b"\xff\xff\xff\xff"
    at = data.index(b"data", 12)
    data[at + 4 : at + 8] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    return path


def cut_off(path: Path, keep_seconds: float, bytes_per_second: int) -> Path:
    """Cut a WAV after ``keep_seconds`` of samples, its header left claiming the whole length."""
    data = path.read_bytes()
    at = data.index(b"data", 12) + 8
    path.write_bytes(data[: at + int(keep_seconds * bytes_per_second)])
    return path


def strip_matroska_duration(path: Path) -> Path:
    """Make a WebM look like a browser's MediaRecorder output: no segment Duration (the element is
    overwritten by an EBML Void of the same length) and no per-track DURATION tags."""
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")  # Duration, an 8-byte float
    if at >= 0:
        data[at : at + 11] = b"\xec\x89" + b"\0" * 9
    at = data.find(b"\x44\x89\x84")  # or a 4-byte float
    if at >= 0:
        data[at : at + 7] = b"\xec\x85" + b"\0" * 5
    path.write_bytes(bytes(data).replace(b"DURATION", b"XURATION"))
    return path


def quiet_then_loud(seconds: float, rate: int, quiet_seconds: float) -> np.ndarray:
    """Near-silence, then loud noise: a variable-rate encoder's first frames are tiny, so a length guessed
    from their bit rate is far too long."""
    n, quiet = round(seconds * rate), round(quiet_seconds * rate)
    rng = np.random.default_rng(3)
    signal = 0.5 * rng.standard_normal(n).astype(np.float32)
    signal[:quiet] *= 0.0005
    return np.clip(signal, -1, 1)[None, :]


def centre_voice(seconds: float, rate: int) -> np.ndarray:
    """5.1 audio (FL FR FC LFE BL BR) with a voice in the centre channel only."""
    voice = speech_like(seconds, rate)[0]
    channels = np.zeros((6, voice.size), dtype=np.float32)
    channels[2] = voice
    return channels


# ------------------------------------------------------------------------------------------ images


def write_animated(path: Path, frames: int, size: tuple[int, int] = (160, 120)) -> Path:
    """An animated GIF / WebP, or a multi-page TIFF, by suffix: ``frames`` different pictures."""
    pictures = []
    for k in range(frames):
        picture = Image.new("RGB", size, (40 * k % 255, 120, 200))
        ImageDraw.Draw(picture).ellipse((10 + 10 * k, 20, 50 + 10 * k, 60), fill=(255, 255, 0))
        pictures.append(picture)
    options: dict[str, Any] = {"save_all": True, "append_images": pictures[1:]}
    if path.suffix.lower() in (".gif", ".webp"):
        options.update(duration=100, loop=0)
    pictures[0].save(path, **options)
    return path


def write_heic(path: Path, width: int, height: int, *, exif_orientation: int) -> Path:
    """An iPhone-style HEIC: pixels stored as the sensor saw them, EXIF Orientation to turn them."""
    from pillow_heif import register_heif_opener

    register_heif_opener()
    image = Image.new("RGB", (width, height), (30, 140, 60))
    ImageDraw.Draw(image).rectangle((0, 0, width // 8, height // 8), fill=(255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = exif_orientation
    image.save(path, format="HEIF", quality=60, exif=exif.tobytes())
    return path


def write_panorama(path: Path, width: int, height: int) -> Path:
    """A very wide strip (an extreme aspect ratio)."""
    ramp = np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))
    Image.fromarray(np.stack([ramp, 255 - ramp, ramp // 2], axis=2), mode="RGB").save(path, compress_level=1)
    return path


# ------------------------------------------------------------------------------------------- video


def encode_video(
    path: Path,
    *,
    container_format: str,
    codec: str,
    seconds: float,
    fps: int = 10,
    size: tuple[int, int] = (192, 108),
    audio_codec: str | None = "aac",
    audio_rate: int = 48_000,
    rotation: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """A clip of a ball crossing a gradient (with a red mark in the stored top-left corner), ``codec``
    in ``container_format``, with a speech-like track when ``audio_codec``; ``rotation``: the display
    matrix's rotation, counter-clockwise degrees as PyAV takes them (-90: shown turned 90° clockwise,
    as a phone records portrait video)."""
    width, height = size
    count = round(seconds * fps)
    with av.open(str(path), mode="w", format=container_format) as container:
        video = cast(av.VideoStream, container.add_stream(codec, rate=fps, options=options or {}))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        if rotation is not None:
            video.set_display_rotation(rotation)
        sound = None
        if audio_codec is not None:
            sound = cast(av.AudioStream, container.add_stream(audio_codec, rate=audio_rate, layout="stereo"))
        for k in range(count):
            picture = Image.new("RGB", size, (20, 60 + k % 100, 120))
            draw = ImageDraw.Draw(picture)
            draw.rectangle((0, 0, height // 6, height // 6), fill=(255, 0, 0))
            x = int(k / max(1, count - 1) * (width - 20))
            draw.ellipse((x, height // 2 - 10, x + 20, height // 2 + 10), fill=(255, 255, 255))
            frame = av.VideoFrame.from_image(picture)  # type: ignore[no-untyped-call]
            frame.pts, frame.time_base = k, Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            frame_size = sound.codec_context.frame_size or 1024
            resampler = av.AudioResampler(
                format=sound.format.name, layout="stereo", rate=audio_rate, frame_size=frame_size
            )
            source = av.AudioFrame.from_ndarray(speech_like(seconds, audio_rate, 2), format="fltp", layout="stereo")
            source.sample_rate, source.pts, source.time_base = audio_rate, 0, Fraction(1, audio_rate)
            for frame in [*resampler.resample(source), *resampler.resample(None)]:
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode(None):
                container.mux(packet)
    return path


_VP9 = {"deadline": "realtime", "cpu-used": "8", "b": "200k"}
_X264 = {"preset": "ultrafast", "crf": "30"}
_X265 = {"preset": "ultrafast", "crf": "32", "x265-params": "log-level=none"}


def make_corpus(folder: Path) -> list[CorpusFile]:
    """Write the whole corpus into ``folder``; what each file is and should send."""
    folder.mkdir(parents=True, exist_ok=True)

    def p(name: str) -> Path:
        return folder / name

    files: list[CorpusFile] = []

    def audio(name: str, path: Path, seconds: float, *, fallback: bool = False) -> None:
        files.append(CorpusFile(name, "audio", path, seconds, fallback=fallback))

    # --- WAV as recorders, telephony, editors and FFmpeg write it
    audio("pcm16", write_pcm_wav(p("pcm16.wav"), seconds=2.5), 2.5)
    audio("pcm16_stereo_44k", write_audio(p("pcm16_stereo_44k.wav"), seconds=2.0), 2.0)
    audio("mulaw", _wav(p("mulaw.wav"), "pcm_mulaw", 8_000, 2.0), 2.0)
    audio("alaw", _wav(p("alaw.wav"), "pcm_alaw", 8_000, 2.0), 2.0)
    audio("s24", _wav(p("s24.wav"), "pcm_s24le", 48_000, 2.0, layout="stereo"), 2.0)
    audio("float32", _wav(p("float32.wav"), "pcm_f32le", 44_100, 2.0), 2.0)
    audio("u8", _wav(p("u8.wav"), "pcm_u8", 11_025, 2.0), 2.0)
    audio("extra_chunks", write_pcm_wav(p("extra_chunks.wav"), seconds=2.0, chunks_before=True), 2.0)
    rf64 = _wav(p("rf64.wav"), "pcm_s16le", 22_050, 2.0, container_options={"rf64": "always"})
    audio("rf64", rf64, 2.0)
    audio("pipe_16k", as_pipe_wav(write_pcm_wav(p("pipe_16k.wav"), seconds=3.2)), 3.2, fallback=True)
    audio("pipe_44k", as_pipe_wav(write_audio(p("pipe_44k.wav"), seconds=3.0)), 3.0, fallback=True)
    cut = cut_off(write_pcm_wav(p("cut_off.wav"), seconds=9.6), 3.2, 32_000)
    audio("cut_off", cut, 3.2, fallback=True)
    # --- compressed audio
    mp3 = {"container_format": "mp3", "codec": "libmp3lame", "seconds": 3.0, "rate": 44_100}
    audio("mp3_cbr_xing", encode_audio(p("cbr_xing.mp3"), bit_rate=64_000, **mp3), 3.0)
    no_xing = {"write_xing": "0"}
    audio("mp3_cbr", encode_audio(p("cbr.mp3"), bit_rate=64_000, container_options=no_xing, **mp3), 3.0, fallback=True)
    quiet = quiet_then_loud(3.0, 44_100, 1.5)
    audio("mp3_vbr_xing", encode_audio(p("vbr_xing.mp3"), signal=quiet, vbr_quality=4, **mp3), 3.0)
    vbr = encode_audio(p("vbr.mp3"), signal=quiet, vbr_quality=4, container_options=no_xing, **mp3)
    audio("mp3_vbr", vbr, 3.0, fallback=True)
    audio("m4a", write_audio(p("voice.m4a"), seconds=3.0), 3.0)
    adts = encode_audio(
        p("raw.aac"),
        container_format="adts",
        codec="aac",
        seconds=4.0,
        rate=44_100,
        signal=quiet_then_loud(4.0, 44_100, 2.0),
    )
    audio("adts_aac", adts, 4.0, fallback=True)
    audio("opus_ogg", write_audio(p("voice.ogg"), seconds=3.0), 3.0)
    webm_opus = {"container_format": "webm", "codec": "libopus", "seconds": 3.0, "rate": 48_000}
    audio("opus_webm", encode_audio(p("voice.webm"), **webm_opus), 3.0)
    recorder = strip_matroska_duration(encode_audio(p("recorder_audio.webm"), **webm_opus))
    audio("mediarecorder_audio", recorder, 3.0, fallback=True)
    flac = encode_audio(
        p("hires.flac"),
        container_format="flac",
        codec="flac",
        seconds=2.0,
        rate=96_000,
        layout="stereo",
        sample_format="s32",
    )
    audio("flac_24_96", flac, 2.0)
    amr = encode_audio(
        p("memo.amr"), container_format="amr", codec="libopencore_amrnb", seconds=3.0, rate=8_000, bit_rate=12_200
    )
    audio("amr_nb", amr, 3.0, fallback=True)
    surround = encode_audio(
        p("surround.flac"),
        container_format="flac",
        codec="flac",
        seconds=2.0,
        rate=48_000,
        layout="5.1",
        signal=centre_voice(2.0, 48_000),
    )
    audio("surround_5_1", surround, 2.0)

    # --- photos (each row alone: 1 s of silence padded under it)
    def image(name: str, path: Path, count: int = 1, *, portrait: bool = False) -> None:
        files.append(CorpusFile(name, "image", path, None, images=count, portrait=portrait))

    image("jpeg_exif_rotated", write_image(p("rotated.jpg"), 320, 240, exif_orientation=6), portrait=True)
    image("png16", write_png16(p("deep.png"), 64, 48))
    image("webp", write_image(p("still.webp"), 200, 150))
    image("animated_gif", write_animated(p("anim.gif"), 6))
    image("animated_webp", write_animated(p("anim.webp"), 4))
    image("heic_exif_rotated", write_heic(p("iphone.heic"), 320, 240, exif_orientation=6), portrait=True)
    image("avif", write_image(p("photo.avif"), 200, 150))
    image("tiff_pages", write_animated(p("scan.tiff"), 3))
    image("panorama", write_panorama(p("panorama.png"), 6000, 60), 2)  # 4 tiles, 2 fit 1 s of audio

    # --- video
    def video(name: str, path: Path, seconds: float | None, frames: int, **kw: Any) -> None:
        files.append(CorpusFile(name, "video", path, seconds, images=frames, **kw))

    video("mp4_h264", write_video(p("clip.mp4"), seconds=3.0, size=(192, 108)), 3.0, 3)
    rotated = encode_video(
        p("portrait.mov"), container_format="mov", codec="libx264", seconds=3.0, rotation=-90, options=_X264
    )
    video("mov_rotated_90", rotated, 3.0, 3, portrait=True)
    vp9 = encode_video(
        p("clip.webm"), container_format="webm", codec="libvpx-vp9", seconds=2.5, audio_codec="libopus", options=_VP9
    )
    video("webm_vp9", vp9, 2.5, 3)
    mkv = encode_video(p("clip.mkv"), container_format="matroska", codec="libx264", seconds=3.0, options=_X264)
    video("mkv_h264", mkv, 3.0, 3)
    recorder_video = encode_video(
        p("recorder_video.webm"),
        container_format="webm",
        codec="libvpx-vp9",
        seconds=4.0,
        audio_codec="libopus",
        options=_VP9,
    )
    video("mediarecorder_video", strip_matroska_duration(recorder_video), 4.0, 4, fallback=True)
    hevc = encode_video(p("clip_hevc.mp4"), container_format="mp4", codec="libx265", seconds=2.0, options=_X265)
    video("mp4_hevc", hevc, 2.0, 2)
    av1 = encode_video(
        p("clip_av1.mp4"), container_format="mp4", codec="libsvtav1", seconds=2.0, options={"preset": "12"}
    )
    video("mp4_av1", av1, 2.0, 2)
    silent = encode_video(
        p("silent.mp4"), container_format="mp4", codec="libx264", seconds=3.0, audio_codec=None, options=_X264
    )
    video("mp4_no_audio", silent, None, 3)
    return files


def write_manifest(path: Path, files: list[CorpusFile]) -> Path:
    """A CSV manifest with one row per corpus file (its name as the id)."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "audio", "image", "video"])
        for f in files:
            cell = str(f.path)
            writer.writerow(
                [
                    f.name,
                    cell if f.column == "audio" else "",
                    cell if f.column == "image" else "",
                    cell if f.column == "video" else "",
                ]
            )
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "media_corpus")
    for entry in make_corpus(target):
        print(f"{entry.name:22} {entry.column:6} {entry.path.name}")
