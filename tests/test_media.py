"""batchqwen.media on real files made by tests/media_factory.py."""

from __future__ import annotations

import io
import math
import tempfile
import time
import wave
from pathlib import Path

import media_factory as mf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from batchqwen import media
from batchqwen.errors import InputFileError, ItemError, MediaError
from batchqwen.items import INPUT_BYTES_PER_SECOND, INPUT_SAMPLE_RATE, Item

AUDIO_SUFFIXES = [".wav", ".mp3", ".flac", ".ogg", ".m4a"]
# one codec frame at the source rate, in seconds: the most a lossy codec's padding may add or trim
CODEC_FRAME_SECONDS = {".wav": 1 / 44_100, ".flac": 1 / 44_100, ".mp3": 1152 / 44_100, ".ogg": 0.02}
CODEC_FRAME_SECONDS[".m4a"] = 1024 / 44_100


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def audio_files(media_dir: Path) -> dict[str, Path]:
    """3 s of stereo 44.1 kHz speech-like audio in every format."""
    return {s: mf.write_audio(media_dir / f"speech{s}", seconds=3.0) for s in AUDIO_SUFFIXES}


@pytest.fixture(scope="module")
def video_file(media_dir: Path) -> Path:
    return mf.write_video(media_dir / "clip.mp4", seconds=3.0, fps=10)


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2))) if len(x) else 0.0


def _jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    image.load()
    return image


# ---------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("suffix", AUDIO_SUFFIXES)
def test_decode_stereo_44k_to_mono_16k(audio_files: dict[str, Path], suffix: str) -> None:
    pcm = media.decode_audio(audio_files[suffix])
    assert len(pcm) % 2 == 0
    seconds = len(pcm) / INPUT_BYTES_PER_SECOND
    assert abs(seconds - 3.0) <= CODEC_FRAME_SECONDS[suffix] + 1 / INPUT_SAMPLE_RATE
    samples = _samples(pcm)
    # the source speaks in the first 0.8 s of each second and pauses for 0.2 s: the decoded mono signal
    # must show that rhythm at the right moments (so it really is the content, at 16 kHz)
    rate = INPUT_SAMPLE_RATE
    speech = np.concatenate([samples[int((s + 0.05) * rate) : int((s + 0.75) * rate)] for s in range(3)])
    pauses = np.concatenate([samples[int((s + 0.85) * rate) : int((s + 0.95) * rate)] for s in range(2)])
    assert _rms(speech) > 2000
    assert _rms(pauses) < _rms(speech) / 10


@pytest.mark.parametrize("suffix", AUDIO_SUFFIXES)
def test_probe_agrees_with_decode(audio_files: dict[str, Path], suffix: str) -> None:
    probed = media.probe_audio_seconds(audio_files[suffix])
    decoded = len(media.decode_audio(audio_files[suffix])) / INPUT_BYTES_PER_SECOND
    assert abs(probed - decoded) < 0.050


@pytest.mark.parametrize("suffix", [".wav", ".mp3"])
def test_probe_is_fast(audio_files: dict[str, Path], suffix: str) -> None:
    # the dry run probes every file of a batch: it must not analyse the stream (~40 ms for a WAV)
    path = audio_files[suffix]
    media.probe_audio_seconds(path)  # warm up
    runs = 20
    start = time.perf_counter()
    for _ in range(runs):
        media.probe_audio_seconds(path)
    per_call = (time.perf_counter() - start) / runs
    assert per_call < 0.020, f"probe took {per_call * 1000:.1f} ms"


def test_mono_16k_wav_decodes_bit_exact(media_dir: Path) -> None:
    path = mf.write_audio(media_dir / "mono16k.wav", seconds=1.25, rate=16_000, channels=1)
    with wave.open(str(path), "rb") as wav:
        original = wav.readframes(wav.getnframes())
    assert media.decode_audio(path) == original


def test_decode_audio_track_of_a_video(video_file: Path) -> None:
    seconds = len(media.decode_audio(video_file)) / INPUT_BYTES_PER_SECOND
    assert abs(seconds - 3.0) < 0.030
    assert abs(media.probe_audio_seconds(video_file) - 3.0) < 0.030


def test_unicode_file_names(media_dir: Path) -> None:
    audio = mf.write_audio(media_dir / "日本語 ünïcødé – speech.mp3", seconds=1.0)
    image = mf.write_image(media_dir / "фото 📷.png", 200, 100)
    assert abs(len(media.decode_audio(audio)) / INPUT_BYTES_PER_SECOND - 1.0) < 0.03
    assert abs(media.probe_audio_seconds(audio) - 1.0) < 0.03
    assert media.prepare_image(image).width == 200
    assert media.probe_image_size(image) == (200, 100)


def test_missing_audio_is_an_input_file_error(tmp_path: Path) -> None:
    for probe in (media.decode_audio, media.probe_audio_seconds):
        with pytest.raises(InputFileError, match="file not found"):
            probe(tmp_path / "nope.wav")
        with pytest.raises(InputFileError, match="not a regular file"):
            probe(tmp_path)


def test_empty_audio_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    for probe in (media.decode_audio, media.probe_audio_seconds):
        with pytest.raises(MediaError, match="file is empty"):
            probe(path)


@pytest.mark.parametrize("name", ["notes.wav", "notes.mp3", "notes.flac"])
def test_text_named_as_audio(tmp_path: Path, name: str) -> None:
    path = mf.write_text(tmp_path / name)
    for probe in (media.decode_audio, media.probe_audio_seconds):
        with pytest.raises(MediaError, match="corrupt or unsupported audio"):
            probe(path)


def test_random_bytes_and_cut_header_are_corrupt(tmp_path: Path, audio_files: dict[str, Path]) -> None:
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    cut = mf.write_truncated(audio_files[".wav"], tmp_path / "cut.wav", keep_fraction=0.00005)
    for path in (garbage, cut):
        with pytest.raises(MediaError, match="corrupt or unsupported audio") as caught:
            media.decode_audio(path)
        assert isinstance(caught.value, ItemError)
        assert str(path) in str(caught.value)


def test_image_has_no_audio_stream(tmp_path: Path) -> None:
    path = mf.write_image(tmp_path / "picture.png")
    with pytest.raises(MediaError, match="no audio stream"):
        media.decode_audio(path)
    with pytest.raises(MediaError, match="no audio stream"):
        media.probe_audio_seconds(path)


def test_silence() -> None:
    assert media.silence(1.5) == bytes(48_000)
    assert media.silence(0) == b""
    with pytest.raises(ValueError):
        media.silence(-1)


def test_pcm_to_wav_opens_with_wave() -> None:
    pcm = (np.sin(np.arange(24_000) / 10) * 10_000).astype("<i2").tobytes()
    data = media.pcm_to_wav(pcm, 24_000)
    with wave.open(io.BytesIO(data), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24_000)
        assert wav.getnframes() == 24_000
        assert wav.readframes(wav.getnframes()) == pcm
    with pytest.raises(ValueError):
        media.pcm_to_wav(b"\x00", 16_000)


def test_wav_written_by_pcm_to_wav_decodes_back(tmp_path: Path) -> None:
    pcm = (np.sin(np.arange(8_000) / 7) * 8_000).astype("<i2").tobytes()
    path = tmp_path / "round.wav"
    path.write_bytes(media.pcm_to_wav(pcm, INPUT_SAMPLE_RATE))
    assert media.decode_audio(path) == pcm


# --------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((6000, 4000), (1620, 1080)),
        ((4000, 6000), (1080, 1620)),
        ((1920, 1080), (1920, 1080)),
        ((1080, 1920), (1080, 1920)),
        ((3000, 3000), (1080, 1080)),
        ((4000, 100), (1920, 48)),
        ((640, 480), (640, 480)),
        ((1, 1), (1, 1)),
        ((100_000, 1), (1920, 1)),
    ],
)
def test_fit_image_size_examples(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert media.fit_image_size(*size) == expected


@given(st.integers(1, 20_000), st.integers(1, 20_000))
def test_fit_image_size_properties(width: int, height: int) -> None:
    w, h = media.fit_image_size(width, height)
    assert max(w, h) <= 1920 and min(w, h) <= 1080
    assert w <= width and h <= height
    if (w, h) != (width, height):
        # scaled: each side is the exactly scaled side rounded (or 1 at least), and one limit is reached
        scale = min(1920 / max(width, height), 1080 / min(width, height))
        for side, scaled in ((w, width * scale), (h, height * scale)):
            assert abs(side - scaled) <= 0.5 + 1e-9 or (side == 1 and scaled < 1)
        assert max(w, h) == 1920 or min(w, h) == 1080
    assert media.fit_image_size(w, h) == (w, h)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 3000),
    st.integers(1, 3000),
    st.sampled_from([".png", ".jpg"]),
    st.sampled_from([1, 6, 8]),
)
def test_prepared_size_matches_fit_and_probe(width: int, height: int, suffix: str, orientation: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = mf.write_image(Path(folder) / f"sweep{suffix}", width, height, exif_orientation=orientation)
        probed = media.probe_image_size(path)
        expected = (height, width) if orientation in (6, 8) else (width, height)
        assert probed == expected
        prepared = media.prepare_image(path)
        assert (prepared.width, prepared.height) == media.fit_image_size(*probed)
        assert _jpeg(prepared.jpeg).size == (prepared.width, prepared.height)
        assert len(prepared.jpeg) <= media.MAX_JPEG_BYTES


def test_big_png_with_alpha(tmp_path: Path) -> None:
    path = mf.write_image(tmp_path / "big.png", 6000, 4000, alpha=True)
    assert media.probe_image_size(path) == (6000, 4000)
    prepared = media.prepare_image(path, at_seconds=2.0)
    assert (prepared.width, prepared.height, prepared.at_seconds) == (1620, 1080, 2.0)
    assert len(prepared.jpeg) <= media.MAX_JPEG_BYTES
    image = _jpeg(prepared.jpeg)
    assert image.mode == "RGB"
    left = np.asarray(image.crop((0, 0, 780, 1080)), dtype=np.int32)  # was transparent: white now
    assert left.min() >= 245
    right = np.asarray(image.crop((840, 0, 1620, 1080)), dtype=np.int32)  # opaque: the drawing
    assert right.mean() < 200


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = mf.write_cmyk_jpeg(tmp_path / "print.jpg", 300, 200)
    with Image.open(path) as source:
        assert source.mode == "CMYK"
        expected = np.asarray(source.convert("RGB"), dtype=np.int32)
    prepared = media.prepare_image(path)
    image = _jpeg(prepared.jpeg)
    assert (image.mode, image.size) == ("RGB", (300, 200))
    assert np.abs(np.asarray(image, dtype=np.int32) - expected).mean() < 6


def test_exif_rotated_jpeg(tmp_path: Path) -> None:
    # stored 400x300 landscape with Orientation 6: displayed as 300x400 portrait, turned clockwise,
    # so the stored top-left corner ends up top-right
    path = mf.write_image(tmp_path / "phone.jpg", 400, 300, exif_orientation=6, mark_corner=True)
    assert media.probe_image_size(path) == (300, 400)
    prepared = media.prepare_image(path)
    assert (prepared.width, prepared.height) == (300, 400)
    image = _jpeg(prepared.jpeg)
    r, g, b = image.getpixel((300 - 10, 10))  # type: ignore[misc]
    assert r > 200 and g < 60 and b < 60
    r, g, b = image.getpixel((10, 10))  # type: ignore[misc]
    assert not (r > 200 and g < 60 and b < 60)


def test_big_exif_rotated_jpeg_uses_fit_size(tmp_path: Path) -> None:
    path = mf.write_image(tmp_path / "camera.jpg", 6000, 4000, exif_orientation=8)
    assert media.probe_image_size(path) == (4000, 6000)
    prepared = media.prepare_image(path)
    assert (prepared.width, prepared.height) == (1080, 1620)


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = mf.write_png16(tmp_path / "ramp16.png", 64, 48)
    image = _jpeg(media.prepare_image(path).jpeg)
    row = [image.getpixel((x, 24))[0] for x in (0, 32, 63)]  # type: ignore[index]
    assert row[0] < 10 and 110 < row[1] < 150 and row[2] > 245


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    image = Image.new("P", (40, 20), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (20, 0, 40, 20))
    image.save(path, transparency=0)  # index 0 (red) is transparent
    out = _jpeg(media.prepare_image(path).jpeg)
    assert min(out.getpixel((5, 10))) > 240  # type: ignore[arg-type]  # white, not red
    r, _, b = out.getpixel((35, 10))  # type: ignore[misc]
    assert b > 200 and r < 60


def test_noise_image_is_shrunk_below_the_byte_limit(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    noise = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, compress_level=1)
    prepared = media.prepare_image(path)
    assert len(prepared.jpeg) <= media.MAX_JPEG_BYTES
    # the documented exception: smaller than fit_image_size says, aspect kept
    assert prepared.width < 1920 and prepared.height < 1080
    assert abs(prepared.width / prepared.height - 16 / 9) < 0.01


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = mf.write_text(tmp_path / "photo.jpg")
    for probe in (media.prepare_image, media.probe_image_size):
        with pytest.raises(MediaError, match="not an image Pillow can read"):
            probe(path)


def test_truncated_image(tmp_path: Path) -> None:
    source = mf.write_image(tmp_path / "whole.jpg", 800, 600)
    path = mf.write_truncated(source, tmp_path / "half.jpg", keep_fraction=0.5)
    with pytest.raises(MediaError, match="not an image Pillow can read"):
        media.prepare_image(path)


def test_missing_and_empty_image(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="file not found"):
        media.prepare_image(tmp_path / "nope.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="file is empty"):
        media.probe_image_size(empty)


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_decompression_bomb_is_refused(tmp_path: Path, side: int) -> None:
    path = mf.write_huge_png_header(tmp_path / "bomb.png", side, side)
    for probe in (media.prepare_image, media.probe_image_size):
        with pytest.raises(MediaError, match="image too large"):
            probe(path)


# ---------------------------------------------------------------------------------------------- video


def test_extract_video_audio_and_frames_at_1_fps(video_file: Path) -> None:
    pcm, frames = media.extract_video(video_file, fps=1.0)
    assert abs(len(pcm) / INPUT_BYTES_PER_SECOND - 3.0) < 0.030
    assert [round(f.at_seconds, 3) for f in frames] == [0.0, 1.0, 2.0]
    images = [_jpeg(f.jpeg) for f in frames]
    for image, frame in zip(images, frames, strict=True):
        assert image.size == (320, 240) == (frame.width, frame.height)
    # the ball moves left to right: its bright column drifts right from frame to frame
    row = [np.asarray(image.convert("L"))[120] for image in images]
    columns = [int(np.argmax(r >= 250)) for r in row]
    assert columns[0] < columns[1] < columns[2]


def test_extract_video_other_rates_and_cap(video_file: Path) -> None:
    _, frames = media.extract_video(video_file, fps=2.0, with_audio=False)
    assert [round(f.at_seconds, 3) for f in frames] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    _, capped = media.extract_video(video_file, fps=10.0, max_frames=3)
    assert [round(f.at_seconds, 3) for f in capped] == [0.0, 1.0, 2.0]  # spread over the whole clip


def test_probe_video_agrees_with_extract(video_file: Path) -> None:
    probe = media.probe_video(video_file, fps=1.0)
    _, frames = media.extract_video(video_file, fps=1.0)
    assert abs(probe.duration_seconds - 3.0) < 0.05
    assert abs(probe.audio_seconds - 3.0) < 0.05
    assert probe.frame_times == (0.0, 1.0, 2.0)
    assert len(frames) == len(probe.frame_times)
    assert probe.frame_size == (frames[0].width, frames[0].height)


def test_video_without_audio_and_big_frames(tmp_path: Path) -> None:
    path = mf.write_video(tmp_path / "silent.mp4", seconds=1.0, fps=5, size=(2560, 1440), audio=False, crf=40)
    pcm, frames = media.extract_video(path)
    assert pcm == b""
    # fitted into 1920x1080, then to the 1280 blocks of 32 px one image is billed for
    assert len(frames) == 1 and (frames[0].width, frames[0].height) == (1504, 846)
    assert media.probe_video(path).audio_seconds == 0.0
    with pytest.raises(MediaError, match="no audio stream"):
        media.decode_audio(path)


def test_audio_file_as_video(audio_files: dict[str, Path]) -> None:
    for probe in (media.extract_video, media.probe_video):
        with pytest.raises(MediaError, match="no video stream"):
            probe(audio_files[".wav"])


def test_bad_video_files(tmp_path: Path) -> None:
    text = mf.write_text(tmp_path / "clip.mp4")
    for probe in (media.extract_video, media.probe_video):
        with pytest.raises(MediaError, match="corrupt or unsupported video"):
            probe(text)
        with pytest.raises(InputFileError, match="file not found"):
            probe(tmp_path / "gone.mp4")


def test_video_frame_times() -> None:
    assert media.video_frame_times(3.0) == (0.0, 1.0, 2.0)
    assert media.video_frame_times(2.5) == (0.0, 1.0, 2.0)
    assert media.video_frame_times(0.4) == (0.0,)
    assert media.video_frame_times(0.0) == (0.0,)
    assert media.video_frame_times(600.0, max_frames=4) == (0.0, 150.0, 300.0, 450.0)
    assert len(media.video_frame_times(600.0)) == media.DEFAULT_MAX_VIDEO_FRAMES


# ----------------------------------------------------------------------------------------------- items


def test_image_times() -> None:
    assert media.image_times(3, 5.0) == (0.0, 1.0, 2.0)
    assert media.image_times(3, 0.5) == (0.0, 0.5, 0.5)
    assert media.image_times(2, 0.0) == (0.0, 0.0)


def test_prepare_item_audio_and_two_images(media_dir: Path, audio_files: dict[str, Path]) -> None:
    first = mf.write_image(media_dir / "first.png", 300, 200)
    second = mf.write_image(media_dir / "second.jpg", 200, 300)
    item = Item(id="a", row=1, audio=audio_files[".flac"], images=(first, second))
    prepared = media.prepare_item(item, pad_silence_seconds=2.0)
    assert prepared.pcm16 == media.decode_audio(audio_files[".flac"])
    assert prepared.padded_silence_seconds == 0.0
    assert [(i.at_seconds, i.width, i.height) for i in prepared.images] == [(0.0, 300, 200), (1.0, 200, 300)]


def test_prepare_item_audio_file_is_the_sound_video_gives_frames(media_dir: Path, video_file: Path) -> None:
    short = mf.write_audio(media_dir / "short.wav", seconds=1.5, rate=16_000, channels=1)
    picture = mf.write_image(media_dir / "extra.png", 100, 100)
    item = Item(id="v", row=2, audio=short, video=video_file, images=(picture, picture))
    prepared = media.prepare_item(item)
    assert prepared.audio_seconds == pytest.approx(1.5, abs=1e-3)
    times = [round(i.at_seconds, 3) for i in prepared.images]
    assert times == sorted(times) == [0.0, 0.0, 1.0, 1.0, 2.0]
    assert sorted((i.width, i.height) for i in prepared.images).count((100, 100)) == 2


def test_prepare_item_video_only(video_file: Path) -> None:
    prepared = media.prepare_item(Item(id="v", row=1, video=video_file), video_fps=2.0)
    assert abs(prepared.audio_seconds - 3.0) < 0.03
    assert len(prepared.images) == 6


def test_prepare_item_prompt_only_pads_silence(media_dir: Path) -> None:
    picture = mf.write_image(media_dir / "alone.png", 64, 64)
    item = Item(id="p", row=3, prompt="hello", images=(picture, picture, picture))
    prepared = media.prepare_item(item, pad_silence_seconds=1.5)
    assert prepared.pcm16 == bytes(48_000)
    assert prepared.padded_silence_seconds == 1.5
    assert [i.at_seconds for i in prepared.images] == [0.0, 1.0, 1.5]
    unpadded = media.prepare_item(Item(id="p", row=3, prompt="hello"))
    assert unpadded.pcm16 == b"" and unpadded.padded_silence_seconds == 0.0 and unpadded.images == ()


def test_prepare_item_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(InputFileError):
        media.prepare_item(Item(id="x", row=1, audio=tmp_path / "gone.mp3"))
    bad = mf.write_text(tmp_path / "bad.png")
    audio = mf.write_audio(tmp_path / "ok.wav", seconds=0.5, rate=16_000, channels=1)
    with pytest.raises(MediaError, match="not an image"):
        media.prepare_item(Item(id="x", row=1, audio=audio, images=(bad,)))


def test_audio_seconds_is_consistent_with_samples() -> None:
    assert math.isclose(len(media.silence(2.0)) / INPUT_BYTES_PER_SECOND, 2.0)


def test_a_jpeg_already_within_the_limits_is_sent_as_it_is_and_others_are_not(tmp_path: Path) -> None:
    from media_factory import write_image, write_truncated

    from batchqwen import media

    fine = write_image(tmp_path / "fine.jpg", 1280, 720)
    prepared = media.prepare_image(fine, at_seconds=1.5)
    assert prepared.jpeg == fine.read_bytes()  # no decode and re-encode: not a byte changed
    assert (prepared.width, prepared.height, prepared.at_seconds) == (1280, 720, 1.5)
    big = write_image(tmp_path / "big.jpg", 2400, 1600)  # over 1920x1080: scaled, so re-encoded
    assert media.prepare_image(big).jpeg != big.read_bytes()
    png = write_image(tmp_path / "p.png", 320, 240)
    assert media.prepare_image(png).jpeg[:2] == b"\xff\xd8"  # converted
    turned = write_image(tmp_path / "turned.jpg", 640, 480, exif_orientation=6)
    upright = media.prepare_image(turned)
    assert upright.jpeg != turned.read_bytes() and (upright.width, upright.height) == (480, 640)
    cut = write_truncated(fine, tmp_path / "cut.jpg")
    with pytest.raises(MediaError):
        media.prepare_image(cut)  # a cut-off JPEG is refused, not passed on
