"""The simulator's server core: the realtime service's session logic with no I/O.

:class:`ServerSession` consumes parsed client events and returns the server events the service would
send, in order. It never sleeps, never touches a socket and never picks faults: latency, throttling,
faults and timeouts belong to the WebSocket layer in :mod:`batchqwen.sim.server`. A client core can
therefore be tested against it in memory::

    server = ServerSession("qwen3-omni-flash-realtime")
    for event in server.opening_events():        # [SessionCreated]
        client.receive(event)
    for event in client_events:
        for reply in server.receive(event):      # or server.receive_frame(text)
            client.receive(reply)
    if server.should_close:                      # after session.finished or a fatal error
        ...

Every response is produced whole by the ``receive`` call that triggers it (``response.create``, or the
audio chunk on which the server VAD detects the end of speech), so in memory no response is ever "in
progress": ``response.cancel`` answers an error here, and the WebSocket layer, which streams responses
over time, handles a cancel that arrives mid-stream itself (see :meth:`ServerSession.cancelled_done`).

Answers are deterministic descriptions of the input ("I heard 3.2 s of audio (...)"), plainly not a
model; usage follows the documented token rules in :mod:`batchqwen.models` and
:func:`batchqwen.tokens.count_text_tokens`.
"""

from __future__ import annotations

import base64
import binascii
import colorsys
import hashlib
import io
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from batchqwen.errors import ProtocolError, UsageError
from batchqwen.models import ModelInfo, audio_tokens, get_model, image_tokens
from batchqwen.realtime import events as ev
from batchqwen.tokens import count_text_tokens

INPUT_RATE = 16_000
INPUT_BYTES_PER_MS = INPUT_RATE * 2 // 1000  # PCM16 mono: 32 bytes per ms
OUTPUT_RATE = 24_000
FRAME_MS = 20  # VAD / analysis frame
FRAME_BYTES = FRAME_MS * INPUT_BYTES_PER_MS
MIN_SPEECH_FRAMES = 3  # 60 ms of energy before we call it speech: a click is not a turn
SEGMENT_GAP_MS = 300  # pauses shorter than this do not split a speech segment in descriptions
AUDIO_HISTORY_TURNS = 8  # flash keeps the last 8 audio turns; each response re-bills them
SILENCE_FLOOR_DBFS = -96.0  # 16-bit quantisation floor

AUDIO_FORMATS = ("pcm16", "pcm", "pcm24")
SAMPLING_PARAMS = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "repetition_penalty")
DEFAULT_TURN_DETECTION: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 800,
}
IMAGE_BEFORE_AUDIO = "Error append image before append audio."
FAULT_KINDS: tuple[str, ...] = ("disconnect", "server_error", "hang", "malformed", "throttle")

ThrottleMode = Literal["handshake", "error"]


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything about the simulator that does not depend on where it listens.

    Rates are probabilities per response, drawn from one ``random.Random(seed)`` per server.
    """

    api_keys: tuple[str, ...] = ()  # empty: any non-empty bearer key is accepted
    latency_seconds: float = 0.0  # before the first event of each response
    delta_delay_seconds: float = 0.0  # between two delta events of a response
    rpm: int | None = None  # sessions per sliding window (a minute); None: unlimited
    tpm: int | None = None  # tokens (of delivered responses) per sliding minute; None: unlimited
    window_seconds: float = 60.0  # the quota window; shorter only to test or benchmark quotas quickly
    throttle_mode: ThrottleMode = "handshake"  # handshake: HTTP 429; error: `error` Throttling.* then close
    disconnect_rate: float = 0.0  # abrupt TCP drop mid-response, no close frame
    server_error_rate: float = 0.0  # `error` of type server_error mid-response, then close
    hang_rate: float = 0.0  # stop answering mid-response, connection left open
    malformed_rate: float = 0.0  # a frame that is not JSON mid-response, then close
    seed: int = 0
    session_lifetime_seconds: float = 7200.0
    idle_timeout_seconds: float = 300.0  # no client frame for this long: cut (pings do not count)
    max_image_base64_bytes: int = 256 * 1024
    max_frame_bytes: int = 4 * 1024 * 1024
    word_ms: int = 60  # synthesized output audio per answer word
    audio_delta_ms: int = 100  # output audio per response.audio.delta
    finish_unsupported_models: tuple[str, ...] = ()  # models answering session.finish with an error

    def fault_rates(self) -> dict[str, float]:
        return {
            "disconnect": self.disconnect_rate,
            "server_error": self.server_error_rate,
            "hang": self.hang_rate,
            "malformed": self.malformed_rate,
        }


# ----------------------------------------------------------------------------- analysis helpers


def vad_threshold_dbfs(threshold: float) -> float:
    """Map the API's ``threshold`` in [-1, 1] to a frame level: -1 -> -70 dBFS, 0 -> -40, 1 -> -10."""
    return -40.0 + 30.0 * threshold


def frame_dbfs(pcm: bytes) -> np.ndarray[Any, np.dtype[np.float64]]:
    """RMS level in dBFS of each whole 20 ms frame of PCM16LE mono 16 kHz audio."""
    n = len(pcm) // FRAME_BYTES
    if n == 0:
        return np.zeros(0)
    samples = np.frombuffer(pcm, dtype="<i2", count=n * FRAME_BYTES // 2).reshape(n, -1)
    rms = np.sqrt(np.mean(np.square(samples, dtype=np.float64), axis=1)) / 32768.0
    return np.asarray(20.0 * np.log10(np.maximum(rms, 1e-5)), dtype=np.float64)


def speech_segments(pcm: bytes, threshold_dbfs: float, *, min_gap_ms: int = SEGMENT_GAP_MS) -> list[tuple[int, int]]:
    """(start_ms, end_ms) of each stretch of frames above ``threshold_dbfs``; short pauses merged."""
    voiced = frame_dbfs(pcm) > threshold_dbfs
    if not voiced.any():
        return []
    edges = np.diff(np.concatenate(([0], voiced.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    merged: list[list[int]] = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if merged and (start - merged[-1][1]) * FRAME_MS < min_gap_ms:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(s * FRAME_MS, e * FRAME_MS) for s, e in merged if e - s >= MIN_SPEECH_FRAMES]


def loudest_dbfs(pcm: bytes) -> float:
    levels = frame_dbfs(pcm)
    return float(levels.max()) if levels.size else SILENCE_FLOOR_DBFS


def color_name(rgb: tuple[float, float, float]) -> str:
    """A plain colour word for an average RGB (0-255)."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    if v < 0.2:
        return "black"
    if s < 0.2:
        return "white" if v > 0.85 else "gray"
    names = (
        (15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"),
        (260, "blue"), (300, "purple"), (340, "magenta"), (361, "red"),
    )  # fmt: skip
    degrees = h * 360
    return next(name for limit, name in names if degrees < limit)


def input_fingerprint(
    pcm: bytes, images: Iterable[bytes] = (), instructions: str | None = None, texts: Iterable[str] = ()
) -> str:
    """Hash of what one response answered: audio bytes, JPEG bytes, instructions and input texts.

    The simulator records deliveries under this key, so a test can compute it for an item and prove the
    item was answered exactly once.
    """
    return _fingerprint(pcm, (hashlib.sha256(image).digest() for image in images), instructions, texts)


def _fingerprint(pcm: bytes, image_digests: Iterable[bytes], instructions: str | None, texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    h.update(b"audio:%d:" % len(pcm))
    h.update(pcm)
    for digest in image_digests:
        h.update(b"image:" + digest)
    h.update(b"instructions:" + (instructions or "").encode())
    for text in texts:
        h.update(b"text:%d:" % len(text.encode()) + text.encode())
    return h.hexdigest()


@lru_cache(maxsize=8)
def _tone_table(word_ms: int) -> tuple[bytes, ...]:
    """Twelve short PCM16 24 kHz tones (one per pitch), faded in and out; computed once."""
    n = OUTPUT_RATE * word_ms // 1000
    t = np.arange(n) / OUTPUT_RATE
    fade = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.005 * OUTPUT_RATE))
    tones = []
    for i in range(12):
        freq = 220.0 * 2 ** (i / 12)
        wave = 0.3 * np.sin(2 * np.pi * freq * t) * fade
        tones.append((wave * 32767).astype("<i2").tobytes())
    return tuple(tones)


def synthesize(text: str, word_ms: int = 60) -> bytes:
    """Deterministic PCM16LE mono 24 kHz 'speech' for ``text``: one tone of ``word_ms`` per word."""
    table = _tone_table(word_ms)
    return b"".join(table[sum(word.encode()) % 12] for word in text.split())


# ----------------------------------------------------------------------------- session state


@dataclass(frozen=True)
class _Image:
    digest: bytes
    width: int
    height: int
    color: str


@dataclass
class _UserItem:
    """One user item in the conversation: committed audio (+ images), input text, or a tool output."""

    id: str
    kind: Literal["audio", "text", "tool_output"]
    pcm: bytes = b""
    images: tuple[_Image, ...] = ()
    text: str = ""
    call_name: str = ""


@dataclass
class _Vad:
    in_speech: bool = False
    voiced_run: int = 0
    silence_ms: int = 0
    start_byte: int = 0  # session byte offset where the committed item will start (padding included)
    item_id: str = ""


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


class _Rejected(Exception):
    """A client event the service refuses with an invalid_request_error; the session stays open."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


@dataclass
class _Answer:
    text: str
    fingerprint: str
    call: tuple[str, str] | None = None  # (tool name, arguments JSON) when the answer is a function call


class ServerSession:
    """The service's side of one realtime session, free of I/O.

    API: ``ServerSession(model, *, config=None)``; :meth:`opening_events` (``session.created``, or an
    ``error`` for an unknown model); :meth:`receive` (one parsed client event -> server events);
    :meth:`receive_frame` (a raw text frame, malformed JSON answered with an error);
    :attr:`should_close` (True once the service would close: after ``session.finished`` or a fatal
    error); :attr:`fingerprints` (response id -> :func:`input_fingerprint` of what it answered);
    :attr:`usages` (response id -> :class:`~batchqwen.realtime.events.Usage`); :meth:`cancelled_done`.
    """

    def __init__(self, model: str, *, config: SimulatorConfig | None = None, session_id: str | None = None):
        self.config = config or SimulatorConfig()
        self.model_name = model
        self.session_id = session_id or _new_id("sess_")
        self.should_close = False
        self.fingerprints: dict[str, str] = {}
        self.usages: dict[str, ev.Usage] = {}
        self.model: ModelInfo | None
        try:
            self.model = get_model(model) if model else None
        except UsageError:
            self.model = None
        info = self.model
        self.session: dict[str, Any] = {
            "id": self.session_id,
            "object": "realtime.session",
            "model": model,
            "modalities": ["text", "audio"],
            "voice": info.default_voice if info else "",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm24",
            "instructions": "",
            "input_audio_transcription": None,
            "turn_detection": dict(DEFAULT_TURN_DETECTION),
            "tools": [],
            "tool_choice": "auto",
            "temperature": None if info and not info.sampling_params else 0.9,
            "max_tokens": "inf",
        }
        self._buffer = bytearray()  # uncommitted audio
        self._buffer_start = 0  # session byte offset of _buffer[0]
        self._vad_pos = 0  # session byte offset up to which the VAD has looked
        self._vad = _Vad()
        self._images: list[_Image] = []  # uncommitted images
        self._audio_seen = False
        self._history: list[_UserItem] = []  # billed context
        self._pending: list[_UserItem] = []  # items the next response answers
        self._calls: dict[str, str] = {}  # call_id -> tool name, of function calls made

    # ------------------------------------------------------------------ public API

    def opening_events(self) -> list[ev.Event]:
        """What the service sends right after the handshake."""
        if self.model is None:
            self.should_close = True
            return [self._error(f"Model not exist: {self.model_name!r}", code="model_not_found", param="model")]
        return [ev.SessionCreated(session=dict(self.session), event_id=ev.new_event_id())]

    def receive_frame(self, frame: str | bytes) -> list[ev.Event]:
        """Parse one client frame and answer it; a frame that is not a valid event gets an error."""
        try:
            event = ev.parse_event(frame)
        except ProtocolError as exc:
            return [self._error(str(exc), code="invalid_event")]
        return self.receive(event)

    def receive(self, event: ev.Event) -> list[ev.Event]:
        """Answer one client event with the server events the service would send, in order."""
        if self.should_close:
            return []
        try:
            return self._dispatch(event)
        except _Rejected as exc:
            return [self._error(exc.message, code=exc.code, param=exc.param)]

    def cancelled_done(self, response_id: str) -> ev.ResponseDone:
        """The ``response.done`` of a response the client cancelled mid-stream (input billed, no output)."""
        full = self.usages.get(response_id, ev.Usage())
        usage = ev.Usage(
            total_tokens=full.input_tokens,
            input_tokens=full.input_tokens,
            input_text_tokens=full.input_text_tokens,
            input_audio_tokens=full.input_audio_tokens,
            input_image_tokens=full.input_image_tokens,
            output_text_tokens=0,
            output_audio_tokens=0,
        )
        return ev.ResponseDone(
            response={
                "id": response_id,
                "object": "realtime.response",
                "status": "cancelled",
                "status_details": {"type": "cancelled", "reason": "client_cancelled"},
                "output": [],
                "usage": usage.to_json(),
            },
            event_id=ev.new_event_id(),
        )

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, event: ev.Event) -> list[ev.Event]:
        if isinstance(event, ev.SessionUpdate):
            return self._session_update(event.session)
        if isinstance(event, ev.InputAudioBufferAppend):
            return self._append_audio(event.audio)
        if isinstance(event, ev.InputImageBufferAppend):
            return self._append_image(event.image)
        if isinstance(event, ev.InputAudioBufferCommit):
            return self._commit_manual()
        if isinstance(event, ev.InputAudioBufferClear):
            self._buffer_start += len(self._buffer)
            self._buffer.clear()
            self._images.clear()
            self._vad_pos = self._buffer_start
            self._vad = _Vad()
            return [ev.InputAudioBufferCleared(event_id=ev.new_event_id())]
        if isinstance(event, ev.ResponseCreate):
            return self._respond(event.response or {})
        if isinstance(event, ev.ResponseCancel):
            raise _Rejected("Cancellation failed: no active response found.", code="response_cancel_not_active")
        if isinstance(event, ev.ConversationItemCreate):
            return self._item_create(event.item)
        if isinstance(event, ev.SessionFinish):
            family = self.model.series if self.model else ""
            if (
                self.model_name in self.config.finish_unsupported_models
                or family in self.config.finish_unsupported_models
            ):
                raise _Rejected("Invalid event type: session.finish", code="invalid_event", param="type")
            self.should_close = True
            return [ev.SessionFinished(event_id=ev.new_event_id())]
        name = event.event_type if isinstance(event, ev.UnknownEvent) else event.type
        raise _Rejected(f"Invalid event type: {name}", code="invalid_event", param="type")

    def _error(
        self, message: str, *, code: str, param: str | None = None, type_: str = "invalid_request_error"
    ) -> ev.Error:
        return ev.Error(
            error={"type": type_, "code": code, "message": message, "param": param},
            event_id=ev.new_event_id(),
        )

    # ------------------------------------------------------------------ session.update

    def _session_update(self, update: dict[str, Any]) -> list[ev.Event]:
        assert self.model is not None
        model = self.model
        new = dict(self.session)  # validated as a whole: a rejected update changes nothing
        if "modalities" in update:
            mods = update["modalities"]
            if not isinstance(mods, list) or sorted(map(str, mods)) not in (["text"], ["audio", "text"]):
                raise _Rejected(
                    f"Invalid modalities: {mods!r}; supported: ['text'] and ['text', 'audio'].",
                    param="session.modalities",
                )
            new["modalities"] = ["text"] if mods == ["text"] else ["text", "audio"]
        voice = update.get("voice")
        if voice is not None:
            if voice not in model.voices:
                raise _Rejected(
                    f"Invalid voice {voice!r} for {self.model_name}; supported: {', '.join(model.voices)}.",
                    param="session.voice",
                )
            new["voice"] = voice
        for key in ("input_audio_format", "output_audio_format"):
            value = update.get(key)
            if value is not None:
                if value not in AUDIO_FORMATS:
                    raise _Rejected(
                        f"Invalid {key} {value!r}; supported: {', '.join(AUDIO_FORMATS)}.",
                        param=f"session.{key}",
                    )
                new[key] = value
        self._check_new_style_audio(update.get("audio"))
        if "instructions" in update:
            text = update["instructions"]
            if text is not None and not isinstance(text, str):
                raise _Rejected("instructions must be a string.", param="session.instructions")
            new["instructions"] = text or ""
        if "input_audio_transcription" in update:
            value = update["input_audio_transcription"]
            if value is not None and not isinstance(value, dict):
                raise _Rejected(
                    "input_audio_transcription must be an object or null.",
                    param="session.input_audio_transcription",
                )
            new["input_audio_transcription"] = (
                None if value is None else {**value, "model": value.get("model") or "gummy-realtime-v1"}
            )
        if "turn_detection" in update:
            new["turn_detection"] = self._check_turn_detection(update["turn_detection"])
        self._check_sampling(update, new)
        if "tools" in update:
            tools = update["tools"] or []
            if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
                raise _Rejected("tools must be a list of objects.", param="session.tools")
            if tools and update.get("enable_search"):
                raise _Rejected("tools and enable_search cannot be used together.", param="session.tools")
            new["tools"] = tools
        if "smooth_output" in update:
            new["smooth_output"] = update["smooth_output"]
        if "tool_choice" in update:
            new["tool_choice"] = update["tool_choice"]
        if self.session["turn_detection"] != new["turn_detection"]:
            self._vad = _Vad()
            self._vad_pos = self._buffer_start + len(self._buffer)
        self.session = new
        return [ev.SessionUpdated(session=dict(new), event_id=ev.new_event_id())]

    @staticmethod
    def _check_new_style_audio(audio: Any) -> None:
        """The SDK's newer ``session.audio.{input,output}.format`` form: PCM at the model's rates only."""
        if audio is None:
            return
        if not isinstance(audio, dict):
            raise _Rejected("audio must be an object.", param="session.audio")
        for side, rate in (("input", INPUT_RATE), ("output", OUTPUT_RATE)):
            fmt = (audio.get(side) or {}).get("format") if isinstance(audio.get(side), dict) else None
            if fmt is None:
                continue
            if not isinstance(fmt, dict) or fmt.get("type", "pcm") not in AUDIO_FORMATS:
                raise _Rejected(f"Unsupported {side} audio format {fmt!r}.", param=f"session.audio.{side}.format.type")
            if fmt.get("sample_rate", rate) != rate:
                raise _Rejected(
                    f"Unsupported {side} sample rate {fmt.get('sample_rate')!r}; only {rate} Hz.",
                    param=f"session.audio.{side}.format.sample_rate",
                )

    @staticmethod
    def _check_turn_detection(value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise _Rejected("turn_detection must be an object or null.", param="session.turn_detection")
        merged = {**DEFAULT_TURN_DETECTION, **{k: v for k, v in value.items() if v is not None}}
        if merged["type"] != "server_vad":
            raise _Rejected(
                f"Invalid turn_detection type {merged['type']!r}; only 'server_vad'.",
                param="session.turn_detection.type",
            )
        ranges = {
            "threshold": (-1.0, 1.0),
            "silence_duration_ms": (200, 6000),
            "prefix_padding_ms": (0, 6000),
        }
        for key, (low, high) in ranges.items():
            number = merged[key]
            if isinstance(number, bool) or not isinstance(number, int | float) or not low <= number <= high:
                raise _Rejected(
                    f"Invalid turn_detection.{key} {number!r}; must be in [{low}, {high}].",
                    param=f"session.turn_detection.{key}",
                )
        return merged

    def _check_sampling(self, update: dict[str, Any], new: dict[str, Any]) -> None:
        assert self.model is not None
        for key in SAMPLING_PARAMS:
            if update.get(key) is None:
                continue
            if not self.model.sampling_params:
                raise _Rejected(f"Model {self.model_name} does not support parameter '{key}'.", param=f"session.{key}")
            value = update[key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _Rejected(f"{key} must be a number.", param=f"session.{key}")
            if (key == "temperature" and not 0 <= value < 2) or (key == "top_p" and not 0 < value <= 1):
                raise _Rejected(f"Invalid {key} {value!r}.", param=f"session.{key}")
            new[key] = value
        if update.get("max_tokens") is not None:
            value = update["max_tokens"]
            if value != "inf" and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= self.model.max_output_tokens
            ):
                raise _Rejected(
                    f"Invalid max_tokens {value!r}; must be in [1, {self.model.max_output_tokens}].",
                    param="session.max_tokens",
                )
            new["max_tokens"] = value

    # ------------------------------------------------------------------ input buffers

    def _append_audio(self, audio_b64: str) -> list[ev.Event]:
        try:
            pcm = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError):
            raise _Rejected("audio is not valid base64.", param="audio") from None
        if not pcm:
            return []
        self._audio_seen = True
        self._buffer += pcm
        if self.session["turn_detection"] is None:
            return []
        return self._run_vad()

    def _append_image(self, image_b64: str) -> list[ev.Event]:
        if not self._audio_seen:
            raise _Rejected(IMAGE_BEFORE_AUDIO, param="image")
        if len(image_b64) > self.config.max_image_base64_bytes:
            raise _Rejected(
                f"Image too large: {len(image_b64)} base64 bytes > {self.config.max_image_base64_bytes}.",
                param="image",
            )
        try:
            jpeg = base64.b64decode(image_b64, validate=True)
            with Image.open(io.BytesIO(jpeg)) as im:
                if im.format != "JPEG":
                    raise _Rejected(f"Image must be a JPEG, not {im.format}.", param="image")
                width, height = im.size
                im.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # DCT-scaled decode: cheap
                pixel = im.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
        except _Rejected:
            raise
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
            raise _Rejected("Image is not a decodable JPEG.", param="image") from None
        assert isinstance(pixel, tuple)
        rgb = (float(pixel[0]), float(pixel[1]), float(pixel[2]))
        self._images.append(_Image(hashlib.sha256(jpeg).digest(), width, height, color_name(rgb)))
        return []

    def _commit_manual(self) -> list[ev.Event]:
        if not self._buffer and not self._images:
            raise _Rejected(
                "Error committing input audio buffer: the buffer is empty.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = self._vad.item_id if self._vad.in_speech else _new_id("item_")
        events = self._commit(len(self._buffer), item_id)
        self._vad = _Vad()
        self._vad_pos = self._buffer_start
        return events

    def _commit(self, end: int, item_id: str, start: int = 0) -> list[ev.Event]:
        """Commit buffer bytes [start, end) (buffer-relative) plus the pending images as one user item."""
        end -= end % 2
        item = _UserItem(item_id, "audio", pcm=bytes(self._buffer[start:end]), images=tuple(self._images))
        del self._buffer[:end]
        self._buffer_start += end
        self._images.clear()
        self._add_item(item)
        events: list[ev.Event] = [
            ev.InputAudioBufferCommitted(item_id=item_id, event_id=ev.new_event_id()),
            ev.ConversationItemCreated(
                item={
                    "id": item_id,
                    "object": "realtime.item",
                    "type": "message",
                    "status": "in_progress",
                    "role": "user",
                    "content": [{"type": "input_audio", "transcript": None}],
                },
                event_id=ev.new_event_id(),
            ),
        ]
        if self.session["input_audio_transcription"] is not None:
            events.append(
                ev.InputAudioTranscriptionCompleted(
                    item_id=item_id,
                    content_index=0,
                    transcript=self._transcript(item.pcm),
                    event_id=ev.new_event_id(),
                )
            )
        return events

    def _add_item(self, item: _UserItem) -> None:
        self._history.append(item)
        self._pending.append(item)
        audio_items = [i for i in self._history if i.kind == "audio"]
        if len(audio_items) > AUDIO_HISTORY_TURNS:
            self._history.remove(audio_items[0])

    def _threshold_dbfs(self) -> float:
        detection = self.session["turn_detection"] or DEFAULT_TURN_DETECTION
        return vad_threshold_dbfs(float(detection["threshold"]))

    def _transcript(self, pcm: bytes) -> str:
        segments = speech_segments(pcm, self._threshold_dbfs())
        if not segments:
            return "[no speech]"
        return " ".join(f"[speech {s / 1000:.1f}–{e / 1000:.1f} s]" for s, e in segments)

    # ------------------------------------------------------------------ server VAD

    def _run_vad(self) -> list[ev.Event]:
        """Feed the new whole frames to the energy VAD; speech end commits and answers on its own."""
        detection = self.session["turn_detection"]
        threshold = vad_threshold_dbfs(float(detection["threshold"]))
        prefix = int(detection["prefix_padding_ms"]) * INPUT_BYTES_PER_MS
        silence_needed = int(detection["silence_duration_ms"])
        offset = self._vad_pos - self._buffer_start
        frames = (len(self._buffer) - offset) // FRAME_BYTES
        if frames <= 0:
            return []
        levels = frame_dbfs(bytes(self._buffer[offset : offset + frames * FRAME_BYTES]))
        events: list[ev.Event] = []
        vad = self._vad
        for i, voiced in enumerate((levels > threshold).tolist()):
            frame_start = self._vad_pos + i * FRAME_BYTES
            if not vad.in_speech:
                vad.voiced_run = vad.voiced_run + 1 if voiced else 0
                if vad.voiced_run == MIN_SPEECH_FRAMES:
                    onset = frame_start - (MIN_SPEECH_FRAMES - 1) * FRAME_BYTES
                    vad.in_speech, vad.silence_ms = True, 0
                    vad.start_byte = max(self._buffer_start, onset - prefix)
                    vad.item_id = _new_id("item_")
                    events.append(
                        ev.InputAudioBufferSpeechStarted(
                            audio_start_ms=vad.start_byte // INPUT_BYTES_PER_MS,
                            item_id=vad.item_id,
                            event_id=ev.new_event_id(),
                        )
                    )
                continue
            vad.silence_ms = 0 if voiced else vad.silence_ms + FRAME_MS
            if vad.silence_ms >= silence_needed:
                end = frame_start + FRAME_BYTES
                events.append(
                    ev.InputAudioBufferSpeechStopped(
                        audio_end_ms=end // INPUT_BYTES_PER_MS,
                        item_id=vad.item_id,
                        event_id=ev.new_event_id(),
                    )
                )
                events += self._commit(end - self._buffer_start, vad.item_id, vad.start_byte - self._buffer_start)
                try:
                    events += self._respond({})
                except _Rejected as exc:
                    events.append(self._error(exc.message, code=exc.code, param=exc.param))
                vad = self._vad = _Vad()
        self._vad_pos += frames * FRAME_BYTES
        if not vad.in_speech:
            # Between turns only the prefix padding can still be needed: keep memory flat on long silence.
            drop = self._vad_pos - self._buffer_start - prefix - MIN_SPEECH_FRAMES * FRAME_BYTES
            if drop > 0:
                del self._buffer[:drop]
                self._buffer_start += drop
        return events

    # ------------------------------------------------------------------ conversation.item.create

    def _item_create(self, item: dict[str, Any]) -> list[ev.Event]:
        assert self.model is not None
        if not self.model.text_input:
            raise _Rejected(
                f"conversation.item.create is not supported by model {self.model_name}.",
                code="invalid_event",
                param="type",
            )
        kind = item.get("type")
        item_id = str(item.get("id") or _new_id("item_"))
        if kind == "message":
            parts = item.get("content")
            if item.get("role", "user") != "user" or not isinstance(parts, list):
                raise _Rejected("Only user messages with a content list are accepted.", param="item")
            texts = [p.get("text") for p in parts if isinstance(p, dict) and p.get("type") == "input_text"]
            if not texts or not all(isinstance(t, str) for t in texts) or len(texts) != len(parts):
                raise _Rejected("Message content must be input_text parts.", param="item.content")
            self._add_item(_UserItem(item_id, "text", text="\n".join(str(t) for t in texts)))
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if call_id not in self._calls:
                raise _Rejected(f"Unknown call_id {call_id!r}.", param="item.call_id")
            if not isinstance(output, str):
                raise _Rejected("function_call_output needs a string output.", param="item.output")
            self._add_item(_UserItem(item_id, "tool_output", text=output, call_name=self._calls[str(call_id)]))
        else:
            raise _Rejected(f"Unsupported item type {kind!r}.", param="item.type")
        created = {"id": item_id, "object": "realtime.item", "status": "completed", **item}
        created["id"] = item_id
        return [ev.ConversationItemCreated(item=created, event_id=ev.new_event_id())]

    # ------------------------------------------------------------------ responses

    def _usage_input(self, instructions: str) -> tuple[int, int, int]:
        """(text, audio, image) input tokens of the whole billed context."""
        assert self.model is not None
        text = count_text_tokens(instructions)
        audio = image = 0
        for item in self._history:
            text += count_text_tokens(item.text)
            if item.kind == "audio":
                audio += audio_tokens(self.model, len(item.pcm) / (INPUT_BYTES_PER_MS * 1000))
                image += sum(image_tokens(self.model, i.width, i.height) for i in item.images)
        return text, audio, image

    def _respond(self, request: dict[str, Any]) -> list[ev.Event]:
        assert self.model is not None
        modalities = request.get("modalities") or self.session["modalities"]
        if not isinstance(modalities, list) or sorted(map(str, modalities)) not in (
            ["text"],
            ["audio", "text"],
        ):
            raise _Rejected(f"Invalid modalities: {modalities!r}.", param="response.modalities")
        audio_mode = "audio" in modalities
        instructions = request.get("instructions")
        if not isinstance(instructions, str):
            instructions = str(self.session.get("instructions") or "")
        text_in, audio_in, image_in = self._usage_input(instructions)
        if text_in + audio_in + image_in > self.model.max_input_tokens:
            raise _Rejected(
                f"Input of {text_in + audio_in + image_in} tokens > limit {self.model.max_input_tokens}.",
                code="context_length_exceeded",
                param="input",
            )
        pending, self._pending = self._pending, []
        answer = self._answer(pending, instructions)
        response_id, item_id = _new_id("resp_"), _new_id("item_")
        self.fingerprints[response_id] = answer.fingerprint

        if answer.call is not None:
            name, arguments = answer.call
            call_id = _new_id("call_")
            self._calls[call_id] = name
            out_text, out_audio = count_text_tokens(arguments), 0
            output_item: dict[str, Any] = {
                "id": item_id,
                "object": "realtime.item",
                "type": "function_call",
                "status": "completed",
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
            }
            body: list[ev.Event] = [
                ev.ResponseFunctionCallArgumentsDelta(
                    response_id=response_id,
                    item_id=item_id,
                    call_id=call_id,
                    delta=arguments,
                    event_id=ev.new_event_id(),
                ),
                ev.ResponseFunctionCallArgumentsDone(
                    response_id=response_id,
                    item_id=item_id,
                    call_id=call_id,
                    name=name,
                    arguments=arguments,
                    event_id=ev.new_event_id(),
                ),
            ]
            added_item = {**output_item, "status": "in_progress", "arguments": ""}
            part: dict[str, Any] | None = None
        else:
            pcm = synthesize(answer.text, self.config.word_ms) if audio_mode else b""
            out_text = count_text_tokens(answer.text)
            out_audio = audio_tokens(self.model, len(pcm) / (OUTPUT_RATE * 2)) if audio_mode else 0
            part = {"type": "audio", "transcript": answer.text} if audio_mode else {"type": "text", "text": answer.text}
            output_item = {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
            added_item = {**output_item, "status": "in_progress", "content": []}
            body = self._content_events(response_id, item_id, answer.text, pcm, audio_mode)

        usage = ev.Usage(
            total_tokens=text_in + audio_in + image_in + out_text + out_audio,
            input_tokens=text_in + audio_in + image_in,
            output_tokens=out_text + out_audio,
            input_text_tokens=text_in,
            input_audio_tokens=audio_in,
            input_image_tokens=image_in,
            output_text_tokens=out_text,
            output_audio_tokens=out_audio if audio_mode else None,
        )
        self.usages[response_id] = usage
        response = {
            "id": response_id,
            "object": "realtime.response",
            "status": "in_progress",
            "status_details": None,
            "modalities": ["text", "audio"] if audio_mode else ["text"],
            "voice": self.session["voice"],
            "output_audio_format": self.session["output_audio_format"],
            "output": [],
            "usage": None,
        }
        events: list[ev.Event] = [
            ev.ResponseCreated(response=response, event_id=ev.new_event_id()),
            ev.ResponseOutputItemAdded(
                response_id=response_id, output_index=0, item=added_item, event_id=ev.new_event_id()
            ),
        ]
        if part is not None:
            empty = {**part, "transcript": ""} if audio_mode else {**part, "text": ""}
            events.append(
                ev.ResponseContentPartAdded(
                    response_id=response_id, item_id=item_id, part=empty, event_id=ev.new_event_id()
                )
            )
        events += body
        if part is not None:
            events.append(
                ev.ResponseContentPartDone(
                    response_id=response_id, item_id=item_id, part=part, event_id=ev.new_event_id()
                )
            )
        events += [
            ev.ResponseOutputItemDone(
                response_id=response_id, output_index=0, item=output_item, event_id=ev.new_event_id()
            ),
            ev.ResponseDone(
                response={
                    **response,
                    "status": "completed",
                    "output": [output_item],
                    "usage": usage.to_json(),
                },
                event_id=ev.new_event_id(),
            ),
        ]
        return events

    def _content_events(
        self, response_id: str, item_id: str, text: str, pcm: bytes, audio_mode: bool
    ) -> list[ev.Event]:
        """Text (or transcript) deltas of a few words each, interleaved with ~100 ms audio deltas."""
        words = text.split(" ")
        pieces = [" ".join(words[i : i + 4]) + (" " if i + 4 < len(words) else "") for i in range(0, len(words), 4)]
        if not audio_mode:
            events: list[ev.Event] = [
                ev.ResponseTextDelta(response_id=response_id, item_id=item_id, delta=p, event_id=ev.new_event_id())
                for p in pieces
            ]
            return [
                *events,
                ev.ResponseTextDone(response_id=response_id, item_id=item_id, text=text, event_id=ev.new_event_id()),
            ]
        step = OUTPUT_RATE * 2 * self.config.audio_delta_ms // 1000
        chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
        events = []
        for n, piece in enumerate(pieces):
            events.append(
                ev.ResponseAudioTranscriptDelta(
                    response_id=response_id, item_id=item_id, delta=piece, event_id=ev.new_event_id()
                )
            )
            # audio deltas spread evenly over the transcript pieces, so text leads audio slightly
            for chunk in chunks[n * len(chunks) // len(pieces) : (n + 1) * len(chunks) // len(pieces)]:
                delta = base64.b64encode(chunk).decode()
                events.append(
                    ev.ResponseAudioDelta(
                        response_id=response_id, item_id=item_id, delta=delta, event_id=ev.new_event_id()
                    )
                )
        events.append(
            ev.ResponseAudioTranscriptDone(
                response_id=response_id, item_id=item_id, transcript=text, event_id=ev.new_event_id()
            )
        )
        events.append(ev.ResponseAudioDone(response_id=response_id, item_id=item_id, event_id=ev.new_event_id()))
        return events

    def _answer(self, pending: Sequence[_UserItem], instructions: str) -> _Answer:
        """The deterministic answer to the items since the last response (or a function call)."""
        pcm = b"".join(i.pcm for i in pending if i.kind == "audio")
        images = [img for i in pending for img in i.images]
        texts = [i.text for i in pending if i.kind != "audio"]
        fingerprint = _fingerprint(pcm, (img.digest for img in images), instructions, texts)
        call = self._maybe_call(pending, instructions)
        if call is not None:
            return _Answer(text="", fingerprint=fingerprint, call=call)

        seconds = len(pcm) / (INPUT_BYTES_PER_MS * 1000)
        segments = speech_segments(pcm, self._threshold_dbfs())
        plural = "" if len(segments) == 1 else "s"
        level = f"loudest {loudest_dbfs(pcm):.0f} dBFS"
        heard = f"I heard {seconds:.1f} s of audio ({len(segments)} speech segment{plural}, {level})"
        if images:
            described = "; ".join(f"{i.width}×{i.height}, mostly {i.color}" for i in images)
            saw = f"saw {len(images)} image{'' if len(images) == 1 else 's'} ({described})"
        else:
            saw = "saw no image"
        sentences = [f"{heard} and {saw}."]
        for item in pending:
            if item.kind == "text":
                sentences.append(f"You wrote: '{_clip(item.text)}'.")
            elif item.kind == "tool_output":
                sentences.append(f"Tool {item.call_name} returned: '{_clip(item.text)}'.")
        sentences.append(f"Instructions: '{_clip(instructions)}'." if instructions else "No instructions.")
        return _Answer(text=" ".join(sentences), fingerprint=fingerprint)

    def _maybe_call(self, pending: Sequence[_UserItem], instructions: str) -> tuple[str, str] | None:
        """A function call when the model has tools, one is declared and the new text names it."""
        assert self.model is not None
        if not self.model.tools or any(i.kind == "tool_output" for i in pending):
            return None
        prompt = " ".join([instructions, *(i.text for i in pending if i.kind == "text")])
        for tool in self.session.get("tools") or []:
            function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
            name = function.get("name")
            if isinstance(name, str) and name and name in prompt:
                props = (function.get("parameters") or {}).get("properties") or {}
                args = {key: _example_value(spec, prompt) for key, spec in props.items()}
                return name, json.dumps(args, ensure_ascii=False, sort_keys=True)
        return None


def _example_value(spec: Any, prompt: str) -> Any:
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "string":
        return _clip(prompt, 40)
    if kind in ("integer", "number"):
        return len(prompt)
    if kind == "boolean":
        return True
    return None


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = [
    "FAULT_KINDS",
    "IMAGE_BEFORE_AUDIO",
    "ServerSession",
    "SimulatorConfig",
    "frame_dbfs",
    "input_fingerprint",
    "speech_segments",
    "synthesize",
    "vad_threshold_dbfs",
]
