"""Video preparation CPU: the extract_video before issue 16 beside the new default and the exact mode.

The bench makes its own clips (``media_factory.write_camera_video``): 30 s, 30 fps, H.264 (x264
``veryfast``) at a camera's bit rate (4 Mbit/s at 1080p, 2.5 Mbit/s at 720p) with a fixed key-frame
interval (every 0.5 s or every 4 s, no scene-cut key frames), AAC sound; "camera" footage has fine
detail and light sensor noise, "noisy" footage a dim room's grain. Clips are cached in ``--cache``.

Every clip is prepared in this process by (1) ``old_extract_video``, a copy of ``media.extract_video``
as it was before the change (every frame decoded, each kept frame converted with ``to_image``, resized
by Pillow and encoded down a quality ladder), (2) ``media.read_video`` (the new default,
``video_frames="keyframes"``) and (3) ``media.read_video(video_frames="exact")``; CPU is
``time.process_time`` (all threads), the best of ``--repeat`` runs.

    .venv/bin/python bench/bench_video.py [--repeat 2] [--seconds 30] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
from common import media_factory, table  # type: ignore[attr-defined]  # tests/ put on sys.path there

from batchqwen import media
from batchqwen.errors import MediaError
from batchqwen.items import TimedImage
from batchqwen.media import (
    DEFAULT_MAX_VIDEO_FRAMES,
    _encode_jpeg,
    _new_resampler,
    _open_container,
    _pcm_of,
    _reason,
    _start_seconds,
    _stream_seconds,
    fit_image_size,
    video_frame_times,
)

QUOTA_SESSIONS_PER_MINUTE = 60  # the default account quota: sessions (items) a minute
_FRAME_TIME_TOLERANCE = 1e-3


# ----------------------------------------------------------------- the implementation before issue 16


def old_extract_video(
    path: Path,
    *,
    fps: float = 1.0,
    max_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
    with_audio: bool = True,
) -> tuple[bytes, tuple[TimedImage, ...]]:
    """``media.extract_video`` as of the commit before issue 16 (git show c0e9516^:batchqwen/media.py)."""
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
                            frames.append(_old_prepare_frame(frame, at))
                            while targets and targets[0] <= at + _FRAME_TIME_TOLERANCE:
                                targets.pop(0)
                if not targets and audio is None:
                    break  # every frame taken and no sound wanted: skip the rest of the file
            if audio is not None:
                pcm.append(_pcm_of(resampler.resample(None)))
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaError(f"corrupt or unsupported video: {path} ({_reason(exc)})") from None
    return b"".join(pcm), tuple(frames)


def _old_prepare_frame(frame: av.VideoFrame, at_seconds: float) -> TimedImage:
    image = frame.to_image()  # type: ignore[no-untyped-call]
    data, width, height = _encode_jpeg(image, fit_image_size(image.width, image.height))
    return TimedImage(at_seconds=at_seconds, jpeg=data, width=width, height=height)


# ------------------------------------------------------------------------------------------ clips


@dataclass(frozen=True)
class Clip:
    height: int  # 720 or 1080
    footage: str  # "camera" or "noisy"
    keyframe_seconds: float
    seconds: float

    @property
    def name(self) -> str:
        return f"{self.footage}_{self.height}p_kf{self.keyframe_seconds:g}s_{self.seconds:g}s.mp4"

    def make(self, folder: Path) -> Path:
        path = folder / self.name
        if not path.exists():
            width = self.height * 16 // 9
            noise, texture = (2.0, 5.0) if self.footage == "camera" else (8.0, 8.0)
            partial = path.with_suffix(".part.mp4")
            media_factory.write_camera_video(
                partial,
                seconds=self.seconds,
                fps=30,
                size=(width, self.height),
                keyframe_seconds=self.keyframe_seconds,
                bit_rate=4_000_000 if self.height >= 1080 else 2_500_000,
                noise=noise,
                texture=texture,
                preset="veryfast",
            )
            partial.rename(path)
        return path


def _cpu(function: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.process_time()
        result = function()
        best = min(best, time.process_time() - started)
    return best, result


def measure_clip(path: Path, seconds: float, repeat: int) -> dict[str, Any]:
    old_cpu, (_, old_frames) = _cpu(lambda: old_extract_video(path), repeat)
    new_cpu, new = _cpu(lambda: media.read_video(path), repeat)
    exact_cpu, exact = _cpu(lambda: media.read_video(path, video_frames="exact"), repeat)
    probe = media.probe_video(path)
    # frame-accurate: the exact mode's frames are the old ones (the first frame at or after each moment)
    accurate = [round(f.at_seconds, 3) for f in exact.frames] == [round(f.at_seconds, 3) for f in old_frames]
    return {
        "per_minute": 60.0 / seconds,
        "old": old_cpu,
        "new": new_cpu,
        "exact": exact_cpu,
        "frames": (len(old_frames), len(new.frames), len(exact.frames), len(probe.frame_times)),
        "new_keys": new.key_frames,
        "new_gap": new.largest_gap_seconds,
        "exact_gap": exact.largest_gap_seconds,
        "exact_accurate": accurate,
        "sizes": (old_frames[0].width, old_frames[0].height, new.frames[0].width, new.frames[0].height),
        "kb": (
            sum(len(f.jpeg) for f in old_frames) / len(old_frames) / 1000,
            sum(len(f.jpeg) for f in new.frames) / len(new.frames) / 1000,
        ),
        "unique": len({f.at_seconds for f in new.frames}) == len(new.frames),
        "estimate_size": probe.frame_size == (new.frames[0].width, new.frames[0].height),
    }


def render(results: list[tuple[Clip, dict[str, Any]]]) -> str:
    header = [
        "clip (30 fps H.264, 1 frame/s kept)",
        "old CPU s/min",
        "new default s/min",
        "new/old",
        "exact s/min",
        "exact/old",
        "frames old/new/exact/estimate",
        "new: key frames, largest gap",
        "exact: frame-accurate",
        "sent size old -> new, mean JPEG KB",
    ]
    rows = []
    for clip, r in results:
        k = r["per_minute"]
        ow, oh, nw, nh = r["sizes"]
        rows.append(
            [
                f"{clip.footage} {clip.height}p, key frame every {clip.keyframe_seconds:g} s",
                f"{r['old'] * k:.2f}",
                f"{r['new'] * k:.2f}",
                f"{r['new'] / r['old']:.2f}",
                f"{r['exact'] * k:.2f}",
                f"{r['exact'] / r['old']:.2f}",
                "/".join(str(n) for n in r["frames"]),
                f"{r['new_keys']}, {r['new_gap']:.3f} s" + ("" if r["unique"] else " (DUPLICATE)"),
                f"{'yes' if r['exact_accurate'] else 'NO'} (gap {r['exact_gap']:.3f} s)",
                f"{ow}x{oh} -> {nw}x{nh}, {r['kb'][0]:.0f} -> {r['kb'][1]:.0f}"
                + ("" if r["estimate_size"] else " (ESTIMATE SIZE DIFFERS)"),
            ]
        )
    cores = os.cpu_count() or 1
    lines = [table(header, rows), ""]
    for clip, r in results:
        if clip.height != 1080:
            continue
        per_video = {mode: r[mode] * r["per_minute"] for mode in ("old", "new", "exact")}
        rates = ", ".join(f"{mode} {cores * 60 / cpu:.0f}" for mode, cpu in per_video.items())
        lines.append(
            f"- {clip.footage} 1080p, key frame every {clip.keyframe_seconds:g} s: one-minute videos prepared a"
            f" minute on {cores} cores: {rates} (quota: {QUOTA_SESSIONS_PER_MINUTE} sessions a minute);"
            f" cores needed per {QUOTA_SESSIONS_PER_MINUTE} a minute: old {per_video['old']:.1f},"
            f" new {per_video['new']:.1f}, exact {per_video['exact']:.1f}"
        )
    return "\n".join(lines)


def clips(seconds: float, quick: bool) -> list[Clip]:
    heights = [1080] if quick else [720, 1080]
    footages = ["camera"] if quick else ["camera", "noisy"]
    return [Clip(h, f, kf, seconds) for h in heights for f in footages for kf in (0.5, 4.0)]


def measure(*, seconds: float = 30.0, repeat: int = 2, quick: bool = False, cache: Path | None = None) -> str:
    folder = cache or Path(os.environ.get("TMPDIR", "/tmp")) / "batchqwen-bench-video"
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for clip in clips(seconds, quick):
        path = clip.make(folder)
        results.append((clip, measure_clip(path, seconds, repeat)))
    return render(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length (30 or 60)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best CPU is kept")
    parser.add_argument("--quick", action="store_true", help="1080p camera clips only")
    parser.add_argument("--cache", type=Path, default=None, help="folder for the generated clips")
    args = parser.parse_args()
    print(measure(seconds=args.seconds, repeat=args.repeat, quick=args.quick, cache=args.cache))


if __name__ == "__main__":
    main()
