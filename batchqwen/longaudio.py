"""Long recordings, decoded and streamed in pieces: never a whole recording's PCM or base64 in memory.

:func:`prepare` runs where the runner decodes (a worker thread or process) and takes the place of
:func:`batchqwen.media.prepare_item` for every item: an item one session can take is prepared by it as
before; one too long for a session (the rules are in :mod:`batchqwen.split`) is, with ``--split auto``:

1. probed from its metadata (no decoding): its estimate against the model's limits decides, before any
   decoding and long before any session. ``--split never`` fails it here, naming the estimate and the
   limit, in milliseconds;
2. decoded once, in one-second pieces, by PyAV to PCM16 mono 16 kHz, while only the energy of each
   20 ms frame is kept (:class:`batchqwen.vad.LevelMeter`) and the PCM goes to a spool file on the output
   disk (``OUT/.long-audio/<id>.wav``; a 16 kHz mono PCM16 WAV is read where it is, with no spool);
3. cut at pauses (:func:`batchqwen.split.plan_segments`), each segment with its own images and frames.

:func:`run_segments` then runs the segments one after the other, each as its own session through the
runner's session function (limiter, retries and breaker as for any item), streaming each segment from
the spool in ``--chunk-ms`` pieces, base64-encoded one piece at a time. The answers' WAVs are joined in
order into the item's one WAV, the rows into the item's one row (:func:`batchqwen.split.merge_rows`).

Why a spool and not a second decode per segment: decoding once costs half the CPU, a retried segment is
read again from its exact sample (compressed audio cannot be seeked sample-exactly), and no decoding
happens on the event loop, where the sessions run. Its cost is 32 KB of disk a second of audio (115 MB
an hour) while the item runs; it is deleted when the item ends, and a run that is killed leaves it for
the item's next run to overwrite.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import tempfile
import wave
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av
import av.error

from batchqwen import images as image_plan
from batchqwen import media
from batchqwen.errors import InputTooLong, MediaError, OutputUnwritable
from batchqwen.images import ImageFrames
from batchqwen.items import INPUT_SAMPLE_RATE, Item, PreparedInput, TimedImage
from batchqwen.models import image_tokens
from batchqwen.results import STATUS_FAILED, STATUS_OK, ResultRow, relative_to_out, safe_id, wav_path
from batchqwen.split import Segment, SessionBudget, SplitMode, merge_rows, plan_segments
from batchqwen.vad import LevelMeter

SPOOL_DIR = ".long-audio"  # under OUT: decoded PCM of long recordings while they run
#: below any speech codec in use (Opus goes down to 750 bytes a second, AMR-NB to 594, Speex to 269): a
#: file smaller than this many bytes per second of the shortest audio a session refuses cannot hold it
MIN_BYTES_PER_SECOND = 200
_QUICK_PROBE = {"probesize": "65536", "analyzeduration": "200000"}  # headers only, as media's probes
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


@dataclass(frozen=True)
class LongRecording:
    """An item too long for one session, measured and cut: where its 16 kHz PCM is read from (a WAV
    file, the spool or the item's own), its segments, every image and frame it sends (in time order),
    and notes for the row."""

    audio: Path
    spooled: bool  # ``audio`` is a spool file of ours, deleted once the item is done
    samples: int
    segments: tuple[Segment, ...]
    images: tuple[TimedImage, ...]
    notes: tuple[str, ...]

    def images_of(self, segment: Segment) -> tuple[TimedImage, ...]:
        """The images that belong to ``segment``, their moments counted from the segment's start."""
        return tuple(
            TimedImage(max(0.0, image.at_seconds - segment.start_seconds), image.jpeg, image.width, image.height)
            for image in self.images
            if segment.holds(image.at_seconds)
        )


# ----------------------------------------------------------------------------- decoding


def probe_seconds(path: Path) -> float | None:
    """Duration from the file's headers only, never decoding; None when they do not say (or the file is
    unreadable: the normal preparation then says what is wrong with it)."""
    header = _wav16_frames(path)
    if header is not None:
        return header / INPUT_SAMPLE_RATE
    try:
        with av.open(str(path), mode="r", options=_QUICK_PROBE) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
                return float(stream.duration * stream.time_base)
            if container.duration is not None and container.duration > 0:
                return float(container.duration) / av.time_base
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return None
    return None


def _wav16_frames(path: Path) -> int | None:
    """Sample count of a WAV that is already PCM16 mono 16 kHz (read as it is), else None."""
    if path.suffix.lower() not in (".wav", ".wave"):
        return None
    try:
        with wave.open(str(path), "rb") as wav:
            fits = (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, INPUT_SAMPLE_RATE)
            return wav.getnframes() if fits and wav.getnframes() > 0 else None
    except (wave.Error, EOFError, OSError, ValueError):
        return None


def decode_pieces(path: Path, mixer: media.MonoMixer | None = None) -> Iterator[bytes]:
    """The first audio stream of ``path`` as PCM16LE mono 16 kHz, in pieces (about a second for mono and
    stereo), the way :func:`batchqwen.media.decode_audio` decodes it: PyAV, through media's
    :class:`~batchqwen.media.MonoMixer` (FFmpeg's conversion, or the ITU-R BS.775 downmix of 5.1), whose
    ``notes`` then say how it was mixed. The two must give the same samples (the long-recording tests
    compare them)."""
    mixer = mixer or media.MonoMixer()
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise MediaError(f"corrupt or unsupported audio: {path} ({exc})") from None
    with container:
        if not container.streams.audio:
            raise MediaError(f"no audio stream in {path}")
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                yield mixer.mix(frame)
            yield mixer.flush()
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaError(f"corrupt or unsupported audio: {path} ({exc})") from None


def _read_wav_pieces(path: Path, piece_samples: int = INPUT_SAMPLE_RATE) -> Iterator[bytes]:
    with wave.open(str(path), "rb") as wav:
        while data := wav.readframes(piece_samples):
            yield data


def measure(source: Path, spool: Path | None) -> tuple[int, LevelMeter, tuple[str, ...]]:
    """Decode ``source`` once (a 16 kHz mono WAV is only read), keeping the frame levels and, when
    ``spool`` is given, writing the PCM there as a WAV; returns the sample count, the levels and the
    notes of the downmix."""
    meter = LevelMeter()
    if spool is None:
        for piece in _read_wav_pieces(source):
            meter.feed(piece)
        return meter.nbytes // 2, meter, ()
    spool.parent.mkdir(parents=True, exist_ok=True)
    mixer = media.MonoMixer()
    pieces = _read_wav_pieces(source) if _wav16_frames(source) is not None else decode_pieces(source, mixer)
    try:
        with wave.open(str(spool), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(INPUT_SAMPLE_RATE)
            for piece in pieces:
                meter.feed(piece)
                out.writeframesraw(piece)
    except OSError as exc:
        spool.unlink(missing_ok=True)
        if exc.errno in _DISK_FULL:
            raise OutputUnwritable(f"cannot spool {source} to {spool}: {exc.strerror or exc}") from exc
        raise
    except BaseException:
        spool.unlink(missing_ok=True)
        raise
    return meter.nbytes // 2, meter, mixer.notes


class SegmentStream:
    """One segment of a 16 kHz PCM16 mono WAV as a :class:`~batchqwen.items.PcmStream`: read from its
    exact first sample each time it is sent, a piece at a time."""

    def __init__(self, path: Path, segment: Segment):
        self.path = path
        self.segment = segment

    @property
    def nbytes(self) -> int:
        return 2 * (self.segment.end - self.segment.start)

    def chunks(self, size: int) -> Iterator[bytes]:
        left = self.segment.end - self.segment.start
        with wave.open(str(self.path), "rb") as wav:
            wav.setpos(self.segment.start)
            while left > 0:
                data = wav.readframes(min(size // 2, left))
                if not data:
                    raise MediaError(f"{self.path} ended early: the file changed while its item ran")
                left -= len(data) // 2
                yield data


# ----------------------------------------------------------------------------- preparation


def prepare(
    item: Item,
    *,
    budget: SessionBudget,
    split: SplitMode,
    spool_dir: Path,
    spool_always: bool = False,
    **media_options: Any,
) -> PreparedInput | LongRecording:
    """What the runner's preparation decodes for ``item``: the item as one session sends it
    (:func:`batchqwen.media.prepare_item` with ``media_options``), or, when one session cannot take it, a
    :class:`LongRecording` (``split`` "auto") or InputTooLong ("never"). ``spool_always``: the audio file
    may go away before the segments are sent (a fetched copy in the download cache), so even a 16 kHz mono
    WAV is copied to the spool.

    Raises ItemError (InputFileError, MediaError, InputTooLong) for the item, OutputUnwritable when the
    spool cannot be written for a full or read-only disk.
    """
    sound = item.audio if item.audio is not None else item.video
    if isinstance(sound, Path) and _may_be_long(sound, budget):  # remote: prepare_item says it is not fetched
        seconds = probe_seconds(sound)
        reason = None if seconds is None else budget.too_long(seconds)
        if seconds is not None and reason is not None:
            if split == "never":
                raise InputTooLong(_never(reason, budget, round(seconds * INPUT_SAMPLE_RATE)))
            return _long_recording(item, sound, budget, spool_dir=spool_dir, spool_always=spool_always, **media_options)
    prepared = media.prepare_item(item, **media_options)
    tokens = sum(image_tokens(budget.model, image.width, image.height) for image in prepared.images)
    reason = budget.too_long(prepared.audio_seconds, tokens)
    if reason is None:
        return prepared
    # the headers did not tell (or told less than the audio is): split what is already decoded
    samples = len(prepared.pcm16) // 2
    if split == "never":
        raise InputTooLong(_never(reason, budget, samples, _moments(budget, prepared.images)))
    if not prepared.pcm16:
        raise InputTooLong(f"{reason}, and it has no audio to cut")
    spool = spool_path(spool_dir, item.id)
    meter = LevelMeter()
    meter.feed(prepared.pcm16)
    _write_spool(spool, prepared.pcm16)
    return _cut(budget, spool, True, samples, meter, prepared.images, prepared.notes)


def _may_be_long(path: Path, budget: SessionBudget) -> bool:
    """Whether the file is big enough to hold audio too long for one session, even at the lowest bit
    rate speech is stored at (:data:`MIN_BYTES_PER_SECOND`); a smaller file is not even probed."""
    try:
        size = path.stat().st_size
    except OSError:
        return False  # the normal preparation says what is wrong with it
    return size >= budget.shortest_too_long_seconds * MIN_BYTES_PER_SECOND


def _never(reason: str, budget: SessionBudget, samples: int, images: Sequence[tuple[float, int]] = ()) -> str:
    try:
        would = f"--split auto would send it as {len(plan_segments(samples, budget, images=images))} sessions"
    except InputTooLong as exc:
        would = f"--split auto cannot help either: {exc}"
    return f"{reason}; not sent (--split never; {would} cut at pauses)"


def _moments(budget: SessionBudget, images: Sequence[TimedImage]) -> list[tuple[float, int]]:
    return [(image.at_seconds, image_tokens(budget.model, image.width, image.height)) for image in images]


def _long_recording(
    item: Item,
    sound: Path,
    budget: SessionBudget,
    *,
    spool_dir: Path,
    spool_always: bool,
    video_fps: float = 1.0,
    max_video_frames: int = media.DEFAULT_MAX_VIDEO_FRAMES,
    video_frames: media.VideoFrames = "keyframes",
    image_frames: ImageFrames = "first",
    images_per_second: float = image_plan.DEFAULT_IMAGES_PER_SECOND,
    **_: Any,  # silence padding is for items without audio: a long recording has its own
) -> LongRecording:
    """Measure and cut a recording too long for one session; its frames and images made as
    :func:`batchqwen.media.prepare_item` makes them, against the recording's exact length."""
    frames: tuple[TimedImage, ...] = ()
    notes: list[str] = []
    if isinstance(item.video, Path):  # the frames only: the sound is decoded below, in pieces
        read = media.read_video(
            item.video, fps=video_fps, max_frames=max_video_frames, with_audio=False, video_frames=video_frames
        )
        frames = read.frames
        notes.extend(read.notes)
    as_is = _wav16_frames(sound) is not None and not spool_always
    spool = None if as_is else spool_path(spool_dir, item.id)
    samples, meter, mixed = measure(sound, spool)
    notes.extend(mixed)
    if samples == 0:
        raise MediaError(f"corrupt or unsupported audio: {sound} (no audio samples could be decoded)")
    seconds = samples / INPUT_SAMPLE_RATE
    local_images = [path for path in item.images if isinstance(path, Path)]
    with image_plan.pillow_warnings() as warned:
        planned = [media.probe_image_parts(path, image_frames=image_frames)[1] for path in local_images]
        kept = image_plan.keep_counts(planned, len(frames), image_plan.images_allowed(images_per_second, seconds))
        parts: list[TimedImage] = []
        for path, part, count in zip(local_images, planned, kept, strict=True):
            parts.extend(media.prepare_image_parts(path, part, count))
            notes.extend(image_plan.parts_notes(path, part, count, images_per_second))
    notes.extend(warned)
    images = [
        replace(image, at_seconds=at) for image, at in zip(parts, media.image_times(len(parts), seconds), strict=True)
    ]
    ordered = tuple(sorted([*frames, *images], key=lambda image: image.at_seconds))
    return _cut(budget, spool or sound, spool is not None, samples, meter, ordered, tuple(notes))


def _cut(
    budget: SessionBudget,
    audio: Path,
    spooled: bool,
    samples: int,
    meter: LevelMeter,
    images: tuple[TimedImage, ...],
    notes: tuple[str, ...],
) -> LongRecording:
    moments = _moments(budget, images)
    exact = budget.too_long(samples / INPUT_SAMPLE_RATE, sum(tokens for _, tokens in moments))
    try:
        if exact is None:  # the headers said more than the audio is: one session, still streamed
            segments: tuple[Segment, ...] = (Segment(1, 1, 0, samples),)
        else:
            segments = plan_segments(samples, budget, levels=meter.levels(), images=moments)
    except BaseException:
        if spooled:
            audio.unlink(missing_ok=True)
        raise
    if exact is None:
        why = f"long recording ({samples / INPUT_SAMPLE_RATE:,.1f} s), streamed from disk in one session"
    else:
        why = (
            f"too long for one session: {exact}; split at pauses into {len(segments)} sessions of at most"
            f" {budget.segment_input_tokens:,} input tokens each"
        )
    return LongRecording(audio, spooled, samples, segments, images, (*notes, why))


def clear_spool(out_dir: Path) -> None:
    """Remove every spool file of ``out_dir`` (a run does it at its start and its end, under its lock)."""
    shutil.rmtree(Path(out_dir) / SPOOL_DIR, ignore_errors=True)


def spool_path(spool_dir: Path, item_id: str) -> Path:
    """Where the decoded PCM of a long item waits while it runs (``.wav``, hidden from the audio folder)."""
    return Path(spool_dir) / f"{safe_id(item_id)}.wav"


def _write_spool(spool: Path, pcm: bytes) -> None:
    spool.parent.mkdir(parents=True, exist_ok=True)
    try:
        with wave.open(str(spool), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(INPUT_SAMPLE_RATE)
            out.writeframes(pcm)
    except OSError as exc:
        spool.unlink(missing_ok=True)
        if exc.errno in _DISK_FULL:
            raise OutputUnwritable(f"cannot spool audio to {spool}: {exc.strerror or exc}") from exc
        raise


# ----------------------------------------------------------------------------- the sessions

#: runs one segment's session: (the segment's media, where its answer's WAV goes) -> its row
SessionRunner = Callable[[PreparedInput, Path], Awaitable[ResultRow]]
#: records a half-done item in the journal (status partial, what was billed so far)
ProgressSink = Callable[[ResultRow], None]


async def run_segments(
    item: Item,
    recording: LongRecording,
    run_session: SessionRunner,
    *,
    out_dir: Path,
    notes: Sequence[str] = (),
    progress: ProgressSink | None = None,
) -> ResultRow:
    """Run a long recording's segments in order, one session each, and return the item's one row.

    A failed segment ends the item (the later ones are not sent). After each segment but the last,
    ``progress`` gets the half-done item's ``partial`` row, so what was billed is on record if the run stops.
    The spool is deleted at the end, whatever happens.
    """
    rows: list[ResultRow] = []
    parts: list[Path] = []
    all_notes = [*notes, *recording.notes]
    try:
        for segment in recording.segments:
            prepared = PreparedInput(
                images=recording.images_of(segment),
                stream=SegmentStream(recording.audio, segment),
            )
            part = segment_wav_path(out_dir, item.id, segment.index)
            row = await run_session(prepared, part)
            rows.append(row)
            if row.output_wav:
                parts.append(part)
            if row.status != STATUS_OK:
                break
            if progress is not None and segment.index < len(recording.segments):
                progress(merge_rows(item, recording.segments, rows, notes=all_notes, partial=True))
        merged = merge_rows(item, recording.segments, rows, notes=all_notes)
        if parts:
            target = wav_path(out_dir, item.id)
            try:
                await asyncio.to_thread(join_wavs, parts, target)
            except OSError as exc:
                if exc.errno in _DISK_FULL:  # the disk, not the item: the run stops, the item runs again
                    raise OutputUnwritable(f"cannot store {target}: {exc.strerror or exc}") from exc
                merged.status, merged.error_type, merged.error_code = STATUS_FAILED, "output", None
                merged.error_message = f"cannot write the output WAV: {exc}"
            else:
                merged.output_wav = relative_to_out(out_dir, target)
        return merged
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
        if recording.spooled:
            recording.audio.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                recording.audio.parent.rmdir()  # only when empty: other long items may be spooled there


def segment_wav_path(out_dir: Path, item_id: str, index: int) -> Path:
    """Where one segment's answer waits to be joined: a hidden name no item's WAV can have."""
    target = wav_path(out_dir, item_id)
    return target.with_name(f".{target.stem}.segment-{index}.wav")


def join_wavs(parts: Sequence[Path], target: Path, *, piece_frames: int = 1 << 16) -> None:
    """Join WAVs of one format into ``target``, a piece at a time, atomically (a temp file renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        params: Any = None
        with wave.open(temp, "wb") as out:
            for part in parts:
                with wave.open(str(part), "rb") as wav:
                    if params is None:
                        params = wav.getparams()
                        out.setparams(params)
                    while data := wav.readframes(piece_frames):
                        out.writeframes(data)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
