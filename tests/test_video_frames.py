"""Video frames at the cost of the frames kept (issue 16): media.read_video's key-frame mode against the
exact mode, on real H.264 clips made here with PyAV (a fixed key-frame interval, as cameras encode)."""

from __future__ import annotations

import io
from pathlib import Path

import av
import media_factory as mf
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from batchqwen import media
from batchqwen.cli import main
from batchqwen.config import RunConfig
from batchqwen.errors import InputFileError, MediaError
from batchqwen.items import INPUT_BYTES_PER_SECOND, Item

FPS = 10  # the clips' frame rate: frame k at k/10 s exactly


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("video_frames")
    return {
        # veryfast: B-frames (some of them references, b-pyramid), which decoding forward skips when it can
        "sparse": mf.write_camera_video(
            folder / "sparse.mp4", seconds=12, fps=FPS, keyframe_seconds=4.0, preset="veryfast"
        ),
        "dense": mf.write_camera_video(folder / "dense.mp4", seconds=6, fps=FPS, keyframe_seconds=0.5),
        "odd": mf.write_camera_video(folder / "odd.mp4", seconds=6, fps=FPS, keyframe_seconds=0.7),
        "silent": mf.write_camera_video(folder / "silent.mp4", seconds=5, fps=FPS, keyframe_seconds=2.0, audio=False),
        "hd": mf.write_camera_video(folder / "hd.mp4", seconds=2, fps=5, size=(1920, 1080), keyframe_seconds=1.0),
    }


def _key_frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        tb = video.time_base
        assert tb is not None
        packets = [p for p in container.demux(video) if p.is_keyframe and p.pts is not None]
        return sorted(round(float(p.pts * tb), 3) for p in packets if p.pts is not None)


def _nearest(keys: list[float], target: float) -> float:
    return min(keys, key=lambda key: abs(key - target))


def _times(read: media.VideoRead) -> list[float]:
    return [round(frame.at_seconds, 3) for frame in read.frames]


def _pixels(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"), dtype=np.int16)


def test_clips_have_the_key_frames_asked_for(clips: dict[str, Path]) -> None:
    assert _key_frame_times(clips["sparse"]) == [0.0, 4.0, 8.0]
    assert _key_frame_times(clips["dense"]) == [k / 2 for k in range(12)]


def test_sparse_key_frames_decode_forward_to_the_moment(clips: dict[str, Path]) -> None:
    read = media.read_video(clips["sparse"])
    # 12 moments: 0, 4 and 8 are key frames; the others are decoded forward from the key frame before
    assert read.targets == media.video_frame_times(12.0) == tuple(float(k) for k in range(12))
    assert _times(read) == [float(k) for k in range(12)]
    assert read.key_frames == 3
    assert read.largest_gap_seconds == pytest.approx(0.0, abs=1e-3)
    assert read.notes[0] == (
        "video: 12 frames at 1 fps, 3 key frames, 9 decoded to their moment; largest gap to a target 0.000 s"
    )
    assert abs(len(read.pcm16) / INPUT_BYTES_PER_SECOND - 12.0) < 0.05


def test_dense_key_frames_are_taken_as_they_are(clips: dict[str, Path]) -> None:
    read = media.read_video(clips["dense"])
    assert read.key_frames == len(read.frames) == 6
    assert all(abs(frame.at_seconds - target) <= 0.5 for frame, target in zip(read.frames, read.targets, strict=True))
    assert _times(read) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert "6 key frames, 0 decoded" in read.notes[0]


def test_each_frame_keeps_its_real_timestamp_and_the_note_the_largest_gap(clips: dict[str, Path]) -> None:
    keys = _key_frame_times(clips["odd"])  # 0, 0.7, 1.4, 2.1, 2.8, 3.5, 4.2, 4.9, 5.6
    read = media.read_video(clips["odd"])
    # each moment takes its nearest key frame (all lie within 0.5 s here), at that key frame's own time
    expected = [_nearest(keys, t) for t in read.targets]
    assert _times(read) == expected == [0.0, 0.7, 2.1, 2.8, 4.2, 4.9]
    assert read.key_frames == 6
    gap = max(abs(k - t) for k, t in zip(expected, read.targets, strict=True))
    assert read.largest_gap_seconds == pytest.approx(gap, abs=1e-3)
    assert read.notes[0].endswith(f"largest gap to a target {gap:.3f} s")
    # a tighter tolerance decodes forward instead: frame-accurate again
    tight = media.read_video(clips["odd"], keyframe_tolerance=0.05)
    assert _times(tight) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert tight.key_frames == 1


@pytest.mark.parametrize("name", ["sparse", "dense", "odd"])
def test_exact_mode_is_frame_accurate_and_shows_the_same_pictures(clips: dict[str, Path], name: str) -> None:
    exact = media.read_video(clips[name], video_frames="exact")
    default = media.read_video(clips[name])
    tight = media.read_video(clips[name], keyframe_tolerance=0.0)  # every frame decoded forward or a key
    assert _times(tight) == _times(exact)
    assert _times(exact) == [float(k) for k in range(len(exact.targets))]  # the frame at each moment
    assert exact.largest_gap_seconds == pytest.approx(0.0, abs=1e-3)
    assert "frame-accurate" in exact.notes[0]
    assert exact.pcm16 == default.pcm16
    # a frame decoded forward (or a key frame) is the same picture as the exact mode's at that time
    for ours, theirs in [
        *zip(default.frames, exact.frames, strict=True),
        *zip(tight.frames, exact.frames, strict=True),
    ]:
        if round(ours.at_seconds, 3) == round(theirs.at_seconds, 3):
            assert np.abs(_pixels(ours.jpeg) - _pixels(theirs.jpeg)).mean() < 1.0


@pytest.mark.parametrize("name", ["sparse", "dense", "odd", "silent", "hd"])
@pytest.mark.parametrize("mode", ["keyframes", "exact"])
def test_counts_and_sizes_are_what_the_estimate_predicts(clips: dict[str, Path], name: str, mode: str) -> None:
    probe = media.probe_video(clips[name])
    read = media.read_video(clips[name], video_frames=mode)  # type: ignore[arg-type]
    assert len(read.frames) == len(probe.frame_times) == len(media.video_frame_times(probe.duration_seconds))
    assert {(f.width, f.height) for f in read.frames} == {probe.frame_size}
    times = [f.at_seconds for f in read.frames]
    assert times == sorted(set(times))  # strictly increasing: never a frame sent twice
    assert all(len(f.jpeg) <= media.MAX_JPEG_BYTES for f in read.frames)


def test_a_frame_is_never_sent_twice_even_with_a_wide_tolerance(clips: dict[str, Path]) -> None:
    read = media.read_video(clips["sparse"], keyframe_tolerance=2.0)
    times = _times(read)
    assert len(times) == 12 and times == sorted(set(times))
    # key frame 4 s is nearer to the moment 4 than to 3: moment 3 decodes forward instead of taking it
    assert times[:6] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert read.largest_gap_seconds <= 2.0 + 1e-3
    several = media.read_video(clips["dense"], fps=4.0)  # 24 moments, 12 key frames: 12 decoded forward
    assert len(several.frames) == 24 == len(set(_times(several)))


def test_frames_sent_at_the_token_cap(clips: dict[str, Path]) -> None:
    assert media.fit_frame_size(1920, 1080) == (1504, 846)
    assert media.fit_frame_size(1080, 1920) == (846, 1504)
    assert media.fit_frame_size(1280, 720) == (1280, 720)
    assert media.fit_frame_size(3840, 2160) == (1504, 846)
    for width, height in [(1920, 1080), (4000, 500), (1000, 1000), (1440, 1080)]:
        w, h = media.fit_frame_size(width, height)
        assert -(-w // 32) * -(-h // 32) <= 1280
        assert abs(w / h - width / height) < 0.01 * width / height
    read = media.read_video(clips["hd"])
    assert (read.frames[0].width, read.frames[0].height) == (1504, 846)
    assert any("1504x846 from 1920x1080" in note for note in read.notes)


def test_a_clip_without_audio(clips: dict[str, Path]) -> None:
    for mode in ("keyframes", "exact"):
        read = media.read_video(clips["silent"], video_frames=mode)  # type: ignore[arg-type]
        assert read.pcm16 == b""
        assert _times(read) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert media.probe_video(clips["silent"]).audio_seconds == 0.0
    prepared = media.prepare_item(Item(id="v", row=1, video=clips["silent"]), pad_silence_seconds=1.0)
    assert prepared.padded_silence_seconds == 1.0
    assert len(prepared.images) == 5
    assert prepared.notes and prepared.notes[0].startswith("video: 5 frames at 1 fps")


def test_prepare_item_passes_the_mode_and_the_notes(clips: dict[str, Path]) -> None:
    item = Item(id="v", row=1, video=clips["odd"])
    default = media.prepare_item(item)
    exact = media.prepare_item(item, video_frames="exact")
    assert [round(i.at_seconds, 3) for i in default.images] == [0.0, 0.7, 2.1, 2.8, 4.2, 4.9]
    assert [round(i.at_seconds, 3) for i in exact.images] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert "key frames" in default.notes[0] and "frame-accurate" in exact.notes[0]
    assert default.pcm16 == exact.pcm16
    assert media.prepare_item(Item(id="a", row=1)).notes == ()


def test_corrupt_and_missing_videos_are_media_errors(clips: dict[str, Path], tmp_path: Path) -> None:
    truncated = mf.write_truncated(clips["sparse"], tmp_path / "cut.mp4", keep_fraction=0.5)
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    for mode in ("keyframes", "exact"):
        for path in (truncated, noise, mf.write_text(tmp_path / "text.mp4")):
            with pytest.raises(MediaError, match="corrupt or unsupported video"):
                media.read_video(path, video_frames=mode)  # type: ignore[arg-type]
        with pytest.raises(InputFileError):
            media.read_video(tmp_path / "gone.mp4", video_frames=mode)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="video_frames"):
        media.read_video(clips["dense"], video_frames="fast")  # type: ignore[arg-type]


def test_mp4_with_damaged_packets_still_gives_one_frame_per_moment_or_a_media_error(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    data = bytearray(clips["sparse"].read_bytes())
    rng = np.random.default_rng(1)
    for offset in rng.integers(len(data) // 4, len(data) // 2, 40):  # garbage inside the media data
        data[int(offset) : int(offset) + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    try:
        read = media.read_video(damaged)
    except MediaError:
        return  # refused with a typed error: fine
    times = [f.at_seconds for f in read.frames]
    assert times == sorted(set(times)) and len(times) <= 12  # FFmpeg concealed the damage


def test_cli_option_and_config_default() -> None:
    assert RunConfig(manifest=Path("m.csv"), out=Path("out")).video_frames == "keyframes"
    for command in ("run", "estimate"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "--video-frames [keyframes|exact]" in result.output
