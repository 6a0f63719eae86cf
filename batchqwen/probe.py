"""How long a file's audio (or video) is, measured so that the dry run agrees with what the run sends.

One truth for durations: :func:`probe_audio` and :func:`stream_duration` are what the estimate uses, and
the run's video reading takes its sampling moments from :func:`stream_duration` too, so both count the
same frames. Each answer says how it was measured (:class:`Measured`.method):

``header``
    the container's own field, where it is sound (WAV/RF64 data size within the file, MP4/MOV, Ogg,
    FLAC, MP3 with a Xing/Info/VBRI header, Matroska with a Duration). The fast path: microseconds to a
    fraction of a millisecond, a few KB read.
``file_size``
    file size × the constant bit rate, where the header's size is impossible: a WAV written to a pipe
    (data size 0xFFFFFFFF or 0) or cut off (a data size past the end of the file). PCM and G.711 are
    constant-rate, so this is exact to the sample.
``packet_scan``
    the container's packets read without decoding (their timestamps and durations), where the header is
    missing or known to be a guess: raw ADTS AAC, AMR and MP3 without a Xing header (FFmpeg estimates
    those from the first frames' bit rate), Matroska/WebM without a Duration (browsers' MediaRecorder),
    and a Matroska track among several (the Duration is the longest track's). Reads the whole file, decodes
    nothing: about a millisecond per minute of compressed audio.
``decode``
    the stream decoded to PCM (the last resort: nothing else gave a length).

Everything takes a path today, or an open binary file object (``read``/``seek``/``tell``), which is
how a remote object with ranged reads is handed over; a fallback's row says how many bytes it read.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import av
import av.error

from batchqwen.errors import InputFileError, MediaError

Method = Literal["header", "file_size", "packet_scan", "decode"]
METHODS: tuple[Method, ...] = ("header", "file_size", "packet_scan", "decode")
Source = Path | IO[bytes]

# containers whose duration FFmpeg guesses from the first frames' bit rate (no index, no length field)
_GUESSED_FORMATS = {"aac", "amr", "amrnb", "amrwb", "ac3", "eac3", "mpeg", "mpegts", "loas", "latm"}
_MATROSKA = "matroska"  # FFmpeg's name is "matroska,webm"
_QUICK_PROBE = {"probesize": "65536", "analyzeduration": "200000"}
_MP3_HEAD = 4096  # bytes read to find the first MPEG frame and its Xing/Info/VBRI header
_UNKNOWN_SIZES = (0xFFFFFFFF, 0)  # what writers to a pipe put in a size they cannot go back and fill
_WAV_SUFFIXES = {".wav", ".wave", ".bwf", ".rf64"}  # files whose header probe.py reads itself
_FLAC_SUFFIXES = {".flac"}  # and FLAC's STREAMINFO (an FFmpeg open costs ~0.2 ms, most of a FLAC's probe)


@dataclass(frozen=True)
class Measured:
    """A duration and how it was measured."""

    seconds: float
    method: Method
    note: str | None = None  # why the header was not trusted, for the row's notes
    bytes_read: int | None = None  # bytes a fallback read (None on the header path of a local file)


# ------------------------------------------------------------------------------------------ sources


class CountingReader(io.RawIOBase):
    """A binary file wrapped so that the bytes read through it are counted (``bytes_read``)."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.bytes_read += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _name(source: Source | CountingReader) -> str:
    return str(source) if isinstance(source, Path) else str(getattr(source, "name", "<file object>"))


def _size(source: Source) -> int:
    """The size in bytes; InputFileError when a path is missing, MediaError when it is empty."""
    if isinstance(source, Path):
        try:
            size = source.stat().st_size
        except FileNotFoundError:
            raise InputFileError(f"file not found: {source}") from None
        except OSError as exc:
            raise InputFileError(f"cannot read {source}: {exc.strerror or exc}") from None
        if not source.is_file():
            raise InputFileError(f"not a regular file: {source}")
    else:
        here = source.tell()
        size = source.seek(0, io.SEEK_END)
        source.seek(here)
    if size == 0:
        raise MediaError(f"file is empty: {_name(source)}")
    return size


def _with_reader(source: Source, use: Callable[[Any], Any]) -> tuple[Any, int]:
    """``use`` a counting reader over ``source`` from its start; (result, bytes read)."""
    if isinstance(source, Path):
        try:
            handle: IO[bytes] = source.open("rb")
        except OSError as exc:
            raise InputFileError(f"cannot read {source}: {exc.strerror or exc}") from None
        with handle:
            reader = CountingReader(handle)
            return use(reader), reader.bytes_read
    source.seek(0)
    reader = CountingReader(source)
    return use(reader), reader.bytes_read


def open_container(source: Source | CountingReader, what: str, *, quick: bool = True) -> Any:
    """av.open on a path (FFmpeg's own I/O) or a file object, with typed errors."""
    target: Any = str(source) if isinstance(source, Path) else source
    if not isinstance(source, Path):
        source.seek(0)
    try:
        return av.open(target, mode="r", options=_QUICK_PROBE if quick else None)
    except PermissionError as exc:
        raise InputFileError(f"cannot read {_name(source)}: {exc.strerror or exc}") from None
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        text = (getattr(exc, "strerror", None) or str(exc)).strip() or type(exc).__name__
        raise MediaError(f"corrupt or unsupported {what}: {_name(source)} ({text})") from None


# --------------------------------------------------------------------------------------------- WAV


@dataclass(frozen=True)
class WavLayout:
    """Where a WAV's samples are and what the header claims (RIFF, RF64 or BW64)."""

    kind: str  # "RIFF", "RF64", "BW64"
    format_tag: int  # 1 PCM, 3 float, 6 A-law, 7 mu-law, 0xFFFE extensible, ...
    channels: int
    rate: int
    block_align: int
    data_offset: int
    declared_bytes: int  # the data size the header states (RF64: from ds64)


def read_wav_layout(reader: IO[bytes]) -> WavLayout | None:
    """The layout of a WAV from its first chunks (up to ``data``), or None for anything that is not one."""
    head = reader.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64", b"BW64") or head[8:12] != b"WAVE":
        return None
    kind = head[:4].decode()
    fmt: tuple[int, int, int, int] | None = None
    ds64_data: int | None = None
    offset = 12
    while True:
        chunk = reader.read(8)
        if len(chunk) < 8:
            return None
        cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        offset += 8
        if cid == b"data":
            if fmt is None or fmt[3] <= 0 or fmt[2] <= 0:
                return None
            declared = ds64_data if ds64_data is not None and size == 0xFFFFFFFF else size
            return WavLayout(kind, fmt[0], fmt[1], fmt[2], fmt[3], offset, declared)
        if size > 1 << 20 and cid not in (b"fmt ", b"ds64"):  # a huge chunk before the data: skip it
            body = b""
        else:
            body = reader.read(size)
            if len(body) < size:
                return None
        if cid == b"fmt " and len(body) >= 16:
            tag, channels, rate, _byte_rate, block_align = struct.unpack("<HHIIH", body[:14])
            fmt = (tag, channels, rate, block_align)
        elif cid == b"ds64" and len(body) >= 16:
            ds64_data = struct.unpack("<Q", body[8:16])[0]
        offset += size + (size & 1)
        reader.seek(offset)


def _wav_seconds(layout: WavLayout, file_size: int, name: str) -> tuple[float, Method, str | None]:
    held = max(0, file_size - layout.data_offset)
    declared = layout.declared_bytes
    if layout.kind == "RIFF" and declared in _UNKNOWN_SIZES:
        usable = held - held % layout.block_align
        note = (
            f"duration from the file size: the WAV header's data size is 0x{declared:08X}"
            " (written to a pipe), so the samples run to the end of the file"
        )
        return usable / layout.block_align / layout.rate, "file_size", note
    if declared > held:
        usable = held - held % layout.block_align
        claimed = declared / layout.block_align / layout.rate
        seconds = usable / layout.block_align / layout.rate
        note = (
            f"duration from the file size: the WAV is cut off"
            f" (its header says {claimed:.2f} s, it holds {seconds:.2f} s)"
        )
        return seconds, "file_size", note
    return declared // layout.block_align / layout.rate, "header", None


# --------------------------------------------------------------------------------------------- MP3


def _mp3_has_length_header(source: Source) -> bool:
    """True when the first MPEG audio frame carries a Xing, Info or VBRI header (the exact frame count).
    Reads about 4 KB past the ID3v2 tag (unbuffered: this runs on every MP3 the estimate probes)."""
    head = _read_at(source, 0, _MP3_HEAD)
    start = 0
    if head[:3] == b"ID3" and len(head) >= 10:
        tag_size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
        start = 10 + tag_size + (10 if head[5] & 0x10 else 0)
    data = head[start:] if start + 1024 <= len(head) else _read_at(source, start, _MP3_HEAD)
    at = 0
    while (at := data.find(b"\xff", at)) >= 0 and at + 1 < len(data):
        if data[at + 1] & 0xE0 == 0xE0:  # frame sync
            frame = data[at : at + 200]
            return b"Xing" in frame or b"Info" in frame or b"VBRI" in frame
        at += 1
    return False


def _read_at(source: Source, offset: int, size: int) -> bytes:
    if isinstance(source, Path):
        with source.open("rb", buffering=0) as handle:
            handle.seek(offset)
            return handle.read(size)
    source.seek(offset)
    return source.read(size)


def flac_seconds(source: Source) -> float | None:
    """A FLAC file's length from its STREAMINFO block (total samples / sample rate, the figure FFmpeg's FLAC
    demuxer reports too); None when the file does not start with it or states no total (0: unknown)."""
    head = _read_at(source, 0, 42)
    if not isinstance(source, Path):
        source.seek(0)
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:  # block type 0 is STREAMINFO
        return None
    info = head[8:42]
    rate = info[10] << 12 | info[11] << 4 | info[12] >> 4
    total = (info[13] & 0x0F) << 32 | int.from_bytes(info[14:18], "big")
    return total / rate if rate > 0 and total > 0 else None


# ----------------------------------------------------------------------------------------- streams


def packet_seconds(container: Any, stream: Any) -> float | None:
    """The stream's length from its packets' timestamps and durations, nothing decoded; None when the
    packets carry no timing."""
    tb = stream.time_base
    first: int | None = None
    end: int | None = None
    summed = 0
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        duration = packet.duration or 0
        summed += duration
        if packet.pts is not None:
            first = packet.pts if first is None else min(first, packet.pts)
            end = packet.pts + duration if end is None else max(end, packet.pts + duration)
    if tb is None:
        return None
    if first is not None and end is not None and end > first:
        return float((end - first) * tb)
    return float(summed * tb) if summed > 0 else None


def _tag_seconds(stream: Any) -> float | None:
    """A Matroska track's DURATION tag (``HH:MM:SS.nnnnnnnnn``, written by FFmpeg and mkvmerge)."""
    text = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if not text:
        return None
    try:
        hours, minutes, seconds = str(text).split(":")
        value = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None
    return value if value > 0 else None


def header_seconds(container: Any, stream: Any) -> float | None:
    """The stream's duration as its header states it, when that header is to be trusted; else None."""
    fmt = container.format.name
    if fmt.split(",")[0] in _GUESSED_FORMATS:
        return None
    if _MATROSKA in fmt:
        tagged = _tag_seconds(stream)
        if tagged is not None:
            return tagged
        # the segment's Duration is the longest track's: it is this stream's only when it is alone
        if len(container.streams) == 1 and container.duration is not None and container.duration > 0:
            return float(container.duration) / av.time_base
        return None
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return float(container.duration) / av.time_base
    return None


def stream_duration(container: Any, stream: Any, *, trust_header: bool = True) -> Measured | None:
    """The length of ``stream`` in an open container: its header when sound, else a packet scan (which
    moves the container's read position: seek back before reading it again). None when neither says."""
    if trust_header:
        seconds = header_seconds(container, stream)
        if seconds is not None:
            return Measured(seconds, "header")
    scanned = packet_seconds(container, stream)
    if scanned is None:
        return None
    return Measured(scanned, "packet_scan", _scan_note(container))


def _scan_note(container: Any) -> str:
    fmt = container.format.name.split(",")[0]
    why = {
        "aac": "raw ADTS AAC has no length field",
        "amr": "raw AMR has no length field",
        "mp3": "an MP3 without a Xing/Info header states no length",
        "matroska": "this Matroska/WebM file states no duration for the stream",
    }.get(fmt, f"the {fmt} header states no reliable length")
    return f"duration from a packet scan (nothing decoded): {why}"


# ------------------------------------------------------------------------------------------- audio


def probe_audio(source: Source, *, decode: Callable[[Source], float] | None = None) -> Measured:
    """The duration of the first audio stream of ``source`` (a path or a binary file object).

    The header when sound; else file size × bit rate (PCM WAV), a packet scan, and, when ``decode`` is
    given, decoding as the last resort (``decode(source)`` returns the decoded seconds). Raises
    InputFileError for a missing file, MediaError for one that is empty, corrupt or has no audio.
    """
    size = _size(source)
    name = _name(source)
    # WAV headers are read here (FFmpeg's WAV probe costs milliseconds); other files go straight to FFmpeg,
    # which reads a misnamed WAV right too. A file object is always sniffed: one small ranged read.
    sniff = not isinstance(source, Path) or source.suffix.lower() in _WAV_SUFFIXES
    layout, header_bytes = _with_reader(source, read_wav_layout) if sniff else (None, 0)
    if layout is not None:
        seconds, method, note = _wav_seconds(layout, size, name)
        if seconds > 0 or method == "header":
            return Measured(seconds, method, note, header_bytes if method != "header" else None)
    if isinstance(source, Path) and source.suffix.lower() in _FLAC_SUFFIXES:
        stated = flac_seconds(source)
        if stated is not None:
            return Measured(stated, "header")
    with open_container(source, "audio") as container:
        if not container.streams.audio:
            raise MediaError(f"no audio stream in {name}")
        stream = container.streams.audio[0]
        trust = True
        if container.format.name == "mp3":
            trust = _mp3_has_length_header(source)
        stated = header_seconds(container, stream) if trust else None
        if stated is not None:
            return Measured(stated, "header")

    # a fallback: read through a counting reader so the row can say what it cost
    def scan(reader: CountingReader) -> Measured | None:
        with open_container(reader, "audio") as counted:
            return stream_duration(counted, counted.streams.audio[0], trust_header=False)

    measured, read = _with_reader(source, scan)
    if measured is not None:
        return Measured(measured.seconds, measured.method, measured.note, read)
    if decode is None:
        raise MediaError(f"corrupt or unsupported audio: {name} (no duration in its header or packets)")
    return Measured(decode(source), "decode", "duration from decoding: neither the header nor the packets say it", size)


def file_size(source: Source) -> int:
    """The size in bytes of a path or an open binary file."""
    if isinstance(source, Path):
        return os.stat(source).st_size
    return _size(source)


__all__ = [
    "METHODS",
    "CountingReader",
    "Measured",
    "Method",
    "Source",
    "WavLayout",
    "file_size",
    "flac_seconds",
    "header_seconds",
    "open_container",
    "packet_seconds",
    "probe_audio",
    "read_wav_layout",
    "stream_duration",
]
