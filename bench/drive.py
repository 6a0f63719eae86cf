"""One client under measurement, in its own process; prints one JSON line. Called by the benchmarks.

    drive.py runner MANIFEST URL CONCURRENCY OUT   batchqwen as users run it: runner.run(RunConfig(...))
    drive.py sdk    MANIFEST URL CONCURRENCY OUT   the dashscope SDK's OmniRealtimeConversation, a thread per session
    drive.py cost   MANIFEST URL N                 CPU per item, decode (media.prepare_item) vs session (run_turn)

Both clients stream unpaced (as fast as the socket takes it), decode the same files with
``media.prepare_item``, send 100 ms audio chunks (3,200 bytes) and the images, commit, ask for a
text+audio response, collect the transcript and the audio, end with session.finish, and write one WAV
per item. CPU is ``time.process_time`` (all threads of this process).

``BENCH_PACKAGE_ROOT=DIR`` runs the ``batchqwen`` package found in DIR instead of the installed one (an
export of an older commit), so a benchmark can measure the version before a change beside the new one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if os.environ.get("BENCH_PACKAGE_ROOT"):  # the older version under measurement, ahead of the editable install
    sys.meta_path[:] = [finder for finder in sys.meta_path if "__editable__" not in type(finder).__module__]
    sys.path.insert(0, os.environ["BENCH_PACKAGE_ROOT"])

import pyarrow.parquet as pq

from batchqwen import media, results
from batchqwen.config import RunConfig
from batchqwen.items import Item, PreparedInput, TurnRequest
from batchqwen.manifest import iter_items
from batchqwen.models import get_model
from batchqwen.realtime.client import ClientSettings, run_turn
from batchqwen.runner import run

MODEL = "qwen3-omni-flash-realtime"
API_KEY = "sk-bench"
CHUNK = 3_200
HUGE = 10**9  # rpm / tpm so high that the limiter never paces


def drive_runner(manifest: Path, url: str, concurrency: int, out: Path) -> dict[str, Any]:
    config = RunConfig(
        manifest=manifest,
        out=out,
        model=os.environ.get("BENCH_MODEL", MODEL),
        translate_to=os.environ.get("BENCH_TRANSLATE_TO") or None,
        base_url=url,
        api_key=API_KEY,
        concurrency=concurrency,
        rpm=HUGE,
        tpm=HUGE,
        progress=False,
        quiet=True,
        chunk_ms=int(os.environ.get("BENCH_CHUNK_MS", "100")),
        # not given: the version's own default (auto since the speed issue, a thread before)
        **(
            {"decode_processes": int(os.environ["BENCH_DECODE_PROCESSES"])}
            if "BENCH_DECODE_PROCESSES" in os.environ
            else {}
        ),
    )
    cpu0, wall0 = time.process_time(), time.perf_counter()
    outcome = asyncio.run(run(config))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    table = pq.read_table(out / "results.parquet", columns=["status", "started_at", "finished_at", "total_seconds"])
    rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    starts = [r["started_at"] for r in rows if r["started_at"] is not None]
    ends = [r["finished_at"] for r in rows if r["finished_at"] is not None]
    session_wall = (max(ends) - min(starts)).total_seconds()
    return {
        "items": len(rows),
        "ok": len(ok),
        "exit_code": outcome.exit_code,
        "session_wall": session_wall,
        "run_wall": wall,
        "cpu": cpu,
        "mean_item_seconds": sum(r["total_seconds"] for r in ok) / max(1, len(ok)),
    }


# ----------------------------------------------------------------------------- the official SDK


def drive_sdk(manifest: Path, url: str, concurrency: int, out: Path) -> dict[str, Any]:
    from dashscope.audio.qwen_omni import MultiModality, OmniRealtimeCallback, OmniRealtimeConversation

    class Collector(OmniRealtimeCallback):
        """What the SDK's samples do in on_event: keep the transcript, decode the audio deltas."""

        def __init__(self) -> None:
            self.created = threading.Event()
            self.done = threading.Event()
            self.audio: list[bytes] = []
            self.transcript: list[str] = []
            self.input_transcript = ""
            self.usage: dict[str, Any] | None = None
            self.error: dict[str, Any] | None = None

        def on_event(self, message: Any) -> None:
            kind = message["type"]
            if kind == "session.created":
                self.created.set()
            elif kind == "response.audio.delta":
                self.audio.append(base64.b64decode(message["delta"]))
            elif kind == "response.audio_transcript.delta":
                self.transcript.append(message["delta"])
            elif kind == "conversation.item.input_audio_transcription.completed":
                self.input_transcript = message["transcript"]
            elif kind == "response.done":
                self.usage = message["response"].get("usage")
                self.done.set()
            elif kind == "error":
                self.error = message["error"]
                self.done.set()

        def on_close(self, close_status_code: Any, close_msg: Any) -> None:
            self.created.set()
            self.done.set()

    (out / "audio").mkdir(parents=True, exist_ok=True)

    def one(item: Item) -> bool:
        prepared = media.prepare_item(item, pad_silence_seconds=1.0)
        collector = Collector()
        conv = OmniRealtimeConversation(model=MODEL, callback=collector, url=url, api_key=API_KEY)
        conv.connect()
        try:
            if not collector.created.wait(10):
                return False
            conv.update_session(
                output_modalities=[MultiModality.TEXT, MultiModality.AUDIO],
                voice="Cherry",
                enable_turn_detection=False,
                enable_input_audio_transcription=True,
                input_audio_transcription_model="gummy-realtime-v1",
            )
            _stream(conv, prepared)
            conv.commit()
            conv.create_response()
            if not collector.done.wait(60) or collector.error is not None:
                return False
            conv.end_session(timeout=5)
        finally:
            conv.close()
        pcm = b"".join(collector.audio)
        (out / "audio" / f"{results.safe_id(item.id)}.wav").write_bytes(media.pcm_to_wav(pcm, 24_000))
        return collector.usage is not None

    items = list(iter_items(manifest))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:  # a thread per session, as the samples do
        oks = list(pool.map(one, items))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"items": len(items), "ok": sum(oks), "session_wall": wall, "run_wall": wall, "cpu": cpu}


def _stream(conv: Any, prepared: PreparedInput) -> None:
    """Audio in 100 ms chunks, each image once its time is reached (audio first, as the service needs)."""
    pcm = prepared.pcm16
    images = list(prepared.images)
    for start in range(0, len(pcm), CHUNK):
        conv.append_audio(base64.b64encode(pcm[start : start + CHUNK]).decode())
        seconds = (start + CHUNK) / 32_000
        while images and images[0].at_seconds <= seconds:
            conv.append_video(base64.b64encode(images.pop(0).jpeg).decode())
    for image in images:
        conv.append_video(base64.b64encode(image.jpeg).decode())


# ----------------------------------------------------------------------------- CPU per item, split


async def _cost(manifest: Path, url: str, count: int) -> dict[str, Any]:
    settings = ClientSettings(base_url=url, api_key=API_KEY)
    model = get_model(MODEL)
    decode = session = 0.0
    items = list(iter_items(manifest, limit=count))
    for item in items:
        t0 = time.process_time()
        prepared = media.prepare_item(item, pad_silence_seconds=1.0)
        t1 = time.process_time()
        request = TurnRequest(model=model, voice=model.default_voice, modalities=("text", "audio"), media=prepared)
        result = await run_turn(request, settings)
        t2 = time.process_time()
        assert result.output_pcm
        decode += t1 - t0
        session += t2 - t1
    n = len(items)
    return {"items": n, "decode_cpu": decode / n, "session_cpu": session / n}


def main() -> None:
    mode, manifest, url, *rest = sys.argv[1:]
    if mode == "runner":
        data = drive_runner(Path(manifest), url, int(rest[0]), Path(rest[1]))
    elif mode == "sdk":
        data = drive_sdk(Path(manifest), url, int(rest[0]), Path(rest[1]))
    elif mode == "cost":
        data = asyncio.run(_cost(Path(manifest), url, int(rest[0])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(data))


if __name__ == "__main__":
    main()
