"""Long recordings: cut at pauses, one session per segment, streamed in pieces, refused at once with --split never.

The VAD and the cut rule are tested on generated signals whose pauses are known; the whole path (decode,
cut, spool, one session per segment, rows merged) against the simulator with the flash model's input
limit lowered, so that minutes of audio stand for the 70 minutes of the real limit (bench/bench_long.py
runs the real 70 minutes and measures memory); ``--split never`` and ``estimate`` on a real 70-minute WAV.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import time
import wave
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from batchqwen import longaudio, media, models, runner, split, vad
from batchqwen.cli import main
from batchqwen.config import RunConfig
from batchqwen.cost import OutputAssumption
from batchqwen.errors import InputTooLong
from batchqwen.items import Item
from batchqwen.results import STATUS_FAILED, STATUS_OK, ResultRow
from batchqwen.sim.analysis import input_fingerprint
from batchqwen.sim.server import Simulator, SimulatorConfig, SimulatorThread

KEY = "sk-long-recordings-0001"
FLASH = "qwen3-omni-flash-realtime"
RATE = 16_000
LOW_LIMIT = 1_000  # input tokens: 80 s of audio at 12.5 a second; the segment budget is 950 (76 s)


# ----------------------------------------------------------------------------- generated signals


def signal(pattern: list[tuple[str, float]], *, seed: int = 0, loudness: list[float] | None = None) -> np.ndarray:
    """Float samples at 16 kHz: ``("speech", s)`` is a burst of speech-like noise (4 Hz syllable
    envelope that never drops to silence, about -20 dBFS), ``("pause", s)`` room noise (-70 dBFS).
    ``loudness`` scales each burst in turn."""
    rng = np.random.default_rng(seed)
    parts = []
    burst = 0
    for kind, seconds in pattern:
        n = round(seconds * RATE)
        noise = rng.standard_normal(n, dtype=np.float32)
        if kind == "speech":
            gain = loudness[burst] if loudness else 1.0
            burst += 1
            syllables = 0.6 + 0.4 * np.sin(np.arange(n, dtype=np.float32) * np.float32(2 * np.pi * 4 / RATE))
            parts.append(gain * 0.2 * noise * syllables)
        else:
            parts.append(0.0005 * noise)
    return np.clip(np.concatenate(parts), -1, 1)


def pcm_of(samples: np.ndarray) -> bytes:
    return bytes((samples * 32767).astype("<i2").tobytes())


def pauses_of(pattern: list[tuple[str, float]]) -> list[tuple[float, float]]:
    """(start, end) seconds of each pause of ``pattern``."""
    out, at = [], 0.0
    for kind, seconds in pattern:
        if kind == "pause":
            out.append((at, at + seconds))
        at += seconds
    return out


def write_wav(path: Path, pcm: bytes) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm)
    return path


def write_flac(path: Path, samples: np.ndarray) -> Path:
    """44.1 kHz stereo FLAC of 16 kHz mono samples: decoded by PyAV, resampled and downmixed on the way."""
    with av.open(str(path), mode="w", format="flac") as container:
        stream = cast(av.AudioStream, container.add_stream("flac", rate=44_100, layout="stereo"))
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=44_100, frame_size=4608)
        for start in range(0, len(samples), RATE):
            piece = np.ascontiguousarray(samples[np.newaxis, start : start + RATE].astype(np.float32))
            source = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
            source.sample_rate, source.pts, source.time_base = RATE, start, Fraction(1, RATE)
            for frame in resampler.resample(source):
                for packet in stream.encode(frame):
                    container.mux(packet)
        for frame in resampler.resample(None):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


@pytest.fixture
def low_limit(monkeypatch: pytest.MonkeyPatch) -> models.ModelInfo:
    """The flash model with a 1,000-token input limit, for the runner and the in-process simulator alike."""
    lowered = dataclasses.replace(models.REGISTRY[FLASH], max_input_tokens=LOW_LIMIT)
    monkeypatch.setitem(models.REGISTRY, FLASH, lowered)
    return lowered


def budget_of(model: models.ModelInfo) -> split.SessionBudget:
    return split.session_budget(model, texts=(None, None), modalities=("text", "audio"), output=OutputAssumption())


# ----------------------------------------------------------------------------- the VAD and the cuts


def test_level_meter_fed_in_odd_pieces_measures_what_frame_dbfs_measures() -> None:
    pcm = pcm_of(signal([("speech", 1.03), ("pause", 0.5)]))
    meter = vad.LevelMeter()
    for start in range(0, len(pcm), 777 * 2 + 1):  # pieces that split samples and frames alike
        meter.feed(pcm[start : start + 777 * 2 + 1])
    levels = meter.levels()
    whole = vad.frame_dbfs(pcm)
    assert meter.nbytes == len(pcm)
    assert len(levels) == len(whole) + 1  # the last partial frame counts
    assert np.array_equal(levels[: len(whole)], whole)


def test_the_cut_falls_in_the_longest_pause_near_its_aim() -> None:
    # 2 s bursts; pauses of 0.3, 0.6 and 1.2 s; the longest within the window wins, wherever it lies in it
    pattern = [
        ("speech", 2.0), ("pause", 0.3), ("speech", 2.0), ("pause", 1.2), ("speech", 2.0),
        ("pause", 0.6), ("speech", 2.0), ("pause", 0.3), ("speech", 2.0),
    ]  # fmt: skip
    levels = vad.frame_dbfs(pcm_of(signal(pattern)))
    pauses = pauses_of(pattern)
    aim = round(9.0 * 50)  # 9 s, in speech; the 0.6 s pause (7.5-8.1 s) and the 1.2 s one (4.3-5.5 s) in reach
    cut = vad.best_cut(levels, aim - 300, aim + 300, target=aim)
    at = cut.frame / 50
    assert pauses[1][0] < at < pauses[1][1] and cut.in_pause  # the 1.2 s pause, not the nearer 0.6 s one
    assert cut.quiet_frames * 20 / 1000 == pytest.approx(1.2, abs=0.06)
    near = round(7.8 * 50)
    narrow = vad.best_cut(levels, near - 30, near + 30, target=near)  # only the 0.6 s pause in reach
    assert pauses[2][0] < narrow.frame / 50 < pauses[2][1] and narrow.in_pause
    none = vad.best_cut(levels, aim - 30, aim + 30, target=aim)  # 8.4-9.6 s: all speech
    assert 8.4 <= none.frame / 50 <= 9.6 and none.quiet_frames == 0 and not none.in_pause


def test_cuts_never_fall_inside_speech_when_a_pause_is_in_reach() -> None:
    """Random recordings (bursts of 2-12 s, pauses of 0.25-1.5 s) cut into segments of a lowered budget
    (a 15.2 s search window, so a pause is always in reach): every cut inside a pause, every segment
    within the budget, as many as the dry run says from the length alone."""
    model = dataclasses.replace(models.REGISTRY[FLASH], max_input_tokens=LOW_LIMIT)
    budget = budget_of(model)
    rng = np.random.default_rng(7)
    for seed in range(4):
        pattern: list[tuple[str, float]] = []
        while sum(s for _, s in pattern) < 300:
            pattern += [("speech", float(rng.uniform(2, 12))), ("pause", float(rng.uniform(0.25, 1.5)))]
        samples = signal(pattern, seed=seed)
        levels = vad.frame_dbfs(pcm_of(samples))
        segments = split.plan_segments(len(samples), budget, levels=levels)
        dry = split.plan_segments(len(samples), budget)  # what the dry run says, from the length alone
        assert len(segments) == len(dry) >= 5
        assert segments[0].start == 0 and segments[-1].end == len(samples)
        assert all(a.end == b.start for a, b in itertools.pairwise(segments))
        for segment in segments:
            assert budget.input_tokens(segment.seconds) <= budget.segment_input_tokens < LOW_LIMIT
            if segment.cut is not None:
                at = segment.end_seconds
                assert any(start < at < end for start, end in pauses_of(pattern)), (seed, at)
                assert segment.cut.in_pause


def test_continuous_speech_is_cut_at_its_quietest_stretch_and_says_so() -> None:
    model = dataclasses.replace(models.REGISTRY[FLASH], max_input_tokens=LOW_LIMIT)
    samples = signal([("speech", 200.0)])
    budget = budget_of(model)
    segments = split.plan_segments(len(samples), budget, levels=vad.frame_dbfs(pcm_of(samples)))
    assert len(segments) == len(split.plan_segments(len(samples), budget)) == 4
    assert all(not s.cut.in_pause for s in segments if s.cut is not None)
    assert "no pause near the cut" in segments[0].describe()


def test_the_rule_for_a_segment_and_its_limits() -> None:
    flash = models.REGISTRY[FLASH]
    budget = budget_of(flash)
    assert budget.segment_input_tokens == 46_694  # 95 % of 49,152
    assert budget.max_segment_seconds == pytest.approx(3735.52)  # 62.3 minutes of audio at 12.5 a second
    assert budget.too_long(3932.0) is None  # 49,150 tokens: one session takes it, unsplit
    reason = budget.too_long(4203.0)
    assert reason is not None and "52,538" in reason and "49,152" in reason
    # the instructions go with every segment: they shrink every segment
    wordy = split.session_budget(
        flash, texts=("word " * 2000, None), modalities=("text", "audio"), output=OutputAssumption()
    )
    assert wordy.text_tokens > 1_900 and wordy.max_segment_seconds < budget.max_segment_seconds - 150
    # at --pace the session lifetime counts too, less what the runner keeps for the answer
    paced = split.session_budget(flash, texts=(), modalities=("text",), output=OutputAssumption(), pace=1.0)
    assert split.LIFETIME_KEPT_SECONDS == runner.ITEM_TIMEOUT_MARGIN + runner.SESSION_LIFETIME_MARGIN
    assert paced.max_stream_seconds == flash.session_lifetime_seconds - split.LIFETIME_KEPT_SECONDS
    lifetime = dataclasses.replace(flash, session_lifetime_seconds=30 * 60)  # the 2025 pages' 30 minutes
    slow = split.session_budget(lifetime, texts=(), modalities=("text",), output=OutputAssumption(), pace=1.0)
    why = slow.too_long(40 * 60.0)
    assert why is not None and "session lifetime of 30 minutes" in why
    assert all(s.seconds <= 1440 for s in split.plan_segments(40 * 60 * RATE, slow))
    # no split helps when the text alone fills a session
    small = dataclasses.replace(flash, max_input_tokens=2_000)
    crowded = split.session_budget(small, texts=("word " * 1_900,), modalities=("text",), output=OutputAssumption())
    with pytest.raises(InputTooLong, match="no split helps"):
        split.plan_segments(10 * 60 * RATE, crowded)


def test_the_simulator_and_the_runner_share_one_vad_and_the_runner_never_imports_the_simulator() -> None:
    from batchqwen.sim import analysis, core
    from batchqwen.sim import vad as sim_vad

    assert sim_vad.SpeechDetector is vad.SpeechDetector and core.SpeechDetector is vad.SpeechDetector
    assert analysis.frame_dbfs is vad.frame_dbfs and analysis.speech_segments is vad.speech_segments
    code = (
        "import sys, batchqwen.runner, batchqwen.longaudio, batchqwen.estimate;"
        "print([m for m in sys.modules if m.startswith('batchqwen.sim')])"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


# ----------------------------------------------------------------------------- merging the segments' rows


def test_a_failed_segment_fails_the_item_with_its_place_and_everything_billed() -> None:
    item = Item(id="call", row=1, content_hash="h")
    segments = (split.Segment(1, 2, 0, 100 * RATE), split.Segment(2, 2, 100 * RATE, 190 * RATE))
    ok = ResultRow(
        id="call", row=1, status=STATUS_OK, attempts=1, usage_total_tokens=1300, cost=0.02,
        input_transcript="first part", est_cost=0.01, segments=1,
    )  # fmt: skip
    bad = ResultRow(
        id="call", row=1, status=STATUS_FAILED, attempts=2, error_type="timeout",
        error_message="idle timed out after 30 s", failed_attempt_tokens=400, est_cost=0.01, segments=1,
    )  # fmt: skip
    row = split.merge_rows(item, segments, [ok, bad], notes=["split"])
    assert row.status == STATUS_FAILED and row.segments == 2 and row.attempts == 3
    assert row.error_message == "segment 2 of 2 (100.00-190.00 s): idle timed out after 30 s"
    assert row.failed_attempt_tokens == 1700  # the first segment's usage and the failed attempts
    assert row.usage_total_tokens is None and row.cost is None  # billed, but not an ok row's usage
    assert row.input_transcript == "first part"  # paid for: kept
    half = split.merge_rows(item, segments, [ok], notes=["split"], partial=True)
    assert half.status == "partial" and half.failed_attempt_tokens == 1300


# ----------------------------------------------------------------------------- against the simulator

#: three parts of different loudness, 60 s each, cut best at the 1.5 s pauses between them
THIRDS = [0.5, 1.0, 2.0]


def three_part_pattern() -> tuple[list[tuple[str, float]], list[float]]:
    pattern: list[tuple[str, float]] = []
    loudness: list[float] = []
    for part, gain in enumerate(THIRDS):
        for n in range(6):
            pattern.append(("speech", 9.5))
            loudness.append(gain)
            pattern.append(("pause", 0.5 if n < 5 or part == 2 else 1.5))
    return pattern, loudness


@pytest.fixture(scope="module")
def three_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three-part recording as a 16 kHz mono WAV (read as it is) and a 44.1 kHz stereo FLAC (decoded)."""
    folder = tmp_path_factory.mktemp("three")
    pattern, loudness = three_part_pattern()
    samples = signal(pattern, loudness=loudness)
    return {
        "wav": write_wav(folder / "meeting.wav", pcm_of(samples)),
        "flac": write_flac(folder / "meeting.flac", samples),
    }


def write_manifest(folder: Path, rows: list[dict[str, str]]) -> Path:
    target = folder / "manifest.csv"
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["id", "audio"])
        writer.writeheader()
        writer.writerows(rows)
    return target


def config_for(source: Path, out: Path, url: str, **overrides: object) -> RunConfig:
    values: dict[str, object] = {
        "manifest": source,
        "out": out,
        "base_url": url,
        "api_key": KEY,
        "concurrency": 2,
        "rpm": 10**6,
        "tpm": 10**9,
        "pad_silence_seconds": 0.0,
        "progress": False,
    }
    values.update(overrides)
    return RunConfig(**values)  # type: ignore[arg-type]


def run_against(sim_config: SimulatorConfig, config: RunConfig) -> tuple[runner.RunOutcome, Simulator]:
    async def go() -> tuple[runner.RunOutcome, Simulator]:
        async with Simulator(sim_config) as sim:
            outcome = await runner.run(dataclasses.replace(config, base_url=sim.url))
            return outcome, sim

    return asyncio.run(asyncio.wait_for(go(), 120))


def test_a_long_recording_is_split_at_its_pauses_and_run_one_session_a_segment(
    tmp_path: Path, low_limit: models.ModelInfo, three_parts: dict[str, Path]
) -> None:
    pattern, _ = three_part_pattern()
    write_wav(tmp_path / "short.wav", pcm_of(signal([("speech", 2.0), ("pause", 0.5)])))
    # the FLAC is decoded by PyAV in pieces, spooled and cut
    rows = [{"id": "meeting", "audio": str(three_parts["flac"])}, {"id": "short", "audio": "short.wav"}]
    source = write_manifest(tmp_path, rows)
    out = tmp_path / "out"
    outcome, sim = run_against(SimulatorConfig(), config_for(source, out, ""))
    assert outcome.exit_code == runner.EXIT_OK, outcome.reason
    rows = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    long, short = rows["meeting"], rows["short"]
    assert long["status"] == "ok" and long["segments"] == 3 and short["segments"] == 1
    # the cuts: in the 1.5 s pauses between the thirds, and the segments are exactly what the simulator got
    decoded = media.decode_audio(three_parts["flac"])  # the same decoder, whole, for the check only
    found = re.findall(r"segment \d of 3: ([\d.,]+)-([\d.,]+) s", " ".join(long["notes"]))
    spans = [(float(a.replace(",", "")), float(b.replace(",", ""))) for a, b in found]
    assert len(spans) == 3 and spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(len(decoded) / 2 / RATE)
    pauses = pauses_of(pattern)
    for (_, end), pause in zip(spans[:2], (pauses[5], pauses[11]), strict=True):
        assert pause[0] < end < pause[1]  # inside the long pause between two thirds
    assert sim.stats.sessions == 4 and sim.stats.max_deliveries() == 1
    assert outcome.summary["sessions_started"] == 4  # each segment a session of the limiter's (RPM) too
    for start, end in spans:
        piece = decoded[round(start * RATE) * 2 : round(end * RATE) * 2]
        assert sim.stats.delivered.get(input_fingerprint(piece, (), "")) == 1  # each segment, exactly, once
    # every segment under the limit: the simulator refuses more (context_length_exceeded), none was refused
    segment_tokens = [models.audio_tokens(low_limit, end - start) for start, end in spans]
    assert max(segment_tokens) <= budget_of(low_limit).segment_input_tokens < LOW_LIMIT
    assert long["usage_input_tokens"] == sum(segment_tokens)
    assert long["usage_total_tokens"] == long["usage_input_tokens"] + long["usage_output_tokens"]
    assert long["cost"] > 0 and long["cost_basis"] == "usage" and len(long["response_ids"]) == 3
    assert len(long["session_id"].split(";")) == 3
    # the answers in order: each third's loudness and length, as the simulator heard them
    said = long["output_transcript"]
    heard = re.findall(r"I heard ([\d.]+) s of audio \(\d+ speech segments?, loudest (-?\d+) dBFS\)", said)
    assert [float(s) for s, _ in heard] == pytest.approx([end - start for start, end in spans], abs=0.06)
    assert [int(level) for _, level in heard] == sorted(int(level) for _, level in heard)  # quiet, louder, loudest
    assert long["input_transcript"].count("[speech") == 18
    # one WAV of the three answers, nothing left over: no segment parts, no spool
    with wave.open(str(out / long["output_wav"]), "rb") as wav:
        assert wav.getnframes() / wav.getframerate() == pytest.approx(long["output_audio_seconds"], abs=0.01)
    assert sorted(p.name for p in (out / "audio").iterdir()) == ["meeting.wav", "short.wav"]
    assert not (out / longaudio.SPOOL_DIR).exists()
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    assert [r["status"] for r in journal if r["id"] == "meeting"] == ["partial", "partial", "ok"]


def test_split_never_fails_before_any_connection(
    tmp_path: Path, low_limit: models.ModelInfo, three_parts: dict[str, Path]
) -> None:
    source = write_manifest(tmp_path, [{"id": "meeting", "audio": str(three_parts["flac"])}])
    out = tmp_path / "out"
    outcome, sim = run_against(SimulatorConfig(), config_for(source, out, "", split="never"))
    assert outcome.exit_code == runner.EXIT_SOME_FAILED
    assert sim.stats.connections == 0 and sim.stats.sessions == 0
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["status"] == "failed" and row["error_type"] == "too_long" and row["attempts"] == 0
    assert "exceeds qwen3-omni-flash-realtime's limit of 1,000 input tokens" in row["error_message"]
    assert "--split auto would send it as 3 sessions" in row["error_message"]


def test_headers_without_a_length_are_split_from_what_was_decoded(
    tmp_path: Path, low_limit: models.ModelInfo, monkeypatch: pytest.MonkeyPatch, three_parts: dict[str, Path]
) -> None:
    """A file whose headers give no length is decoded whole as before; if it is too long for one session
    it is then cut the same way (from memory: the only case a whole recording is held)."""
    path = three_parts["wav"]
    item = Item(id="meeting", row=1, audio=path)
    budget = budget_of(low_limit)
    probed = longaudio.prepare(item, budget=budget, split="auto", spool_dir=tmp_path / "a")
    monkeypatch.setattr(longaudio, "probe_seconds", lambda path: None)
    decoded = longaudio.prepare(item, budget=budget, split="auto", spool_dir=tmp_path / "b")
    assert isinstance(probed, longaudio.LongRecording) and isinstance(decoded, longaudio.LongRecording)
    assert probed.segments == decoded.segments and len(decoded.segments) == 3
    assert not probed.spooled and probed.audio == path  # a 16 kHz mono WAV is read where it is
    assert decoded.spooled and decoded.audio.exists()
    with pytest.raises(InputTooLong, match="3 sessions"):
        longaudio.prepare(item, budget=budget, split="never", spool_dir=tmp_path / "c")


def test_the_pieces_are_the_samples_media_decodes_a_5_1_downmix_included(tmp_path: Path) -> None:
    """The streaming decoder and media.decode_audio give the same PCM (and the same downmix note) for
    stereo and 5.1: a long recording sounds as the same file would had it been short."""
    from media_corpus import centre_voice, encode_audio

    surround = encode_audio(
        tmp_path / "surround.flac", container_format="flac", codec="flac", seconds=3.0, rate=48_000,
        layout="5.1", signal=centre_voice(3.0, 48_000),
    )  # fmt: skip
    stereo = write_flac(tmp_path / "stereo.flac", signal([("speech", 2.0), ("pause", 0.5)]))
    for path in (surround, stereo):
        samples, meter, notes = longaudio.measure(path, tmp_path / f"{path.stem}.spool.wav")
        with wave.open(str(tmp_path / f"{path.stem}.spool.wav"), "rb") as spooled:
            pcm = spooled.readframes(spooled.getnframes())
        whole, whole_notes = media.decode_audio_noted(path)
        assert pcm == whole and samples == len(whole) // 2 and notes == whole_notes
        assert np.array_equal(meter.levels()[: len(whole) // 640], vad.frame_dbfs(whole))
    assert "downmixed to mono" in " ".join(longaudio.measure(surround, tmp_path / "again.wav")[2])


def test_a_run_killed_between_segments_resumes_whole_and_counts_what_was_billed(
    tmp_path: Path, low_limit: models.ModelInfo, three_parts: dict[str, Path]
) -> None:
    source = write_manifest(tmp_path, [{"id": "meeting", "audio": str(three_parts["flac"])}])
    out = tmp_path / "out"
    journal = out / "journal.jsonl"
    # the CLI in its own process, with the same lowered limit, killed once segment 1 is on record
    code = (
        "import dataclasses, sys; from batchqwen import models; from batchqwen.cli import main;"
        f"models.REGISTRY[{FLASH!r}] = dataclasses.replace(models.REGISTRY[{FLASH!r}], max_input_tokens={LOW_LIMIT});"
        "sys.exit(main())"
    )
    args = ["run", str(source), "--out", str(out), "--rpm", "100000", "--tpm", "1000000000", "-q"]
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,), latency_seconds=1.5)) as sim:
        env = {**os.environ, "DASHSCOPE_API_KEY": KEY}
        proc = subprocess.Popen([sys.executable, "-c", code, *args, "--base-url", sim.url], env=env)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                if journal.exists() and b'"partial"' in journal.read_bytes():
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the run ended before it could be killed"
            proc.kill()
        finally:
            proc.wait(10)
        (record,) = [json.loads(line) for line in journal.read_text().splitlines()]
        assert record["status"] == "partial" and record["segments"] == 3
        billed = record["failed_attempt_tokens"]
        assert billed > 0 and (out / longaudio.SPOOL_DIR).exists()  # the killed run's spool, left behind
        sessions_before = sim.stats.sessions
        rows = pq.read_table(out / "results.parquet").to_pylist() if (out / "results.parquet").exists() else []
        assert all(r["status"] != "ok" for r in rows)

    outcome, _ = run_against(SimulatorConfig(), config_for(source, out, ""))
    assert outcome.exit_code == runner.EXIT_OK, outcome.reason
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["status"] == "ok" and row["segments"] == 3 and len(row["response_ids"]) == 3  # rerun whole
    assert row["failed_attempt_tokens"] == billed  # the killed run's segment, still counted
    assert sessions_before >= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tokens"]["failed_attempt_tokens"] == billed
    assert not (out / longaudio.SPOOL_DIR).exists()


# ----------------------------------------------------------------------------- 70 real minutes, refused or estimated


@pytest.fixture(scope="module")
def seventy_minutes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 70-minute 16 kHz mono WAV (134 MB, a 12 s phrase-and-pause block over and over): the
    issue's example, 52,538 input tokens against flash's 49,152."""
    folder = tmp_path_factory.mktemp("seventy")
    block = pcm_of(signal([("speech", 10.0), ("pause", 2.0)]))
    seconds = 4203
    with wave.open(str(folder / "meeting.wav"), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        for _ in range(seconds // 12):
            out.writeframes(block)
        out.writeframes(block[: (seconds % 12) * RATE * 2])
    write_manifest(folder, [{"id": "meeting", "audio": "meeting.wav"}])
    return folder


def test_seventy_minutes_with_split_never_fail_before_any_byte_is_sent(seventy_minutes: Path, tmp_path: Path) -> None:
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,))) as sim:
        result = CliRunner().invoke(
            main,
            ["run", str(seventy_minutes / "manifest.csv"), "--base-url", sim.url, "--out", str(tmp_path / "o"),
             "--split", "never"],
            env={"DASHSCOPE_API_KEY": KEY},
        )  # fmt: skip
        assert sim.stats.connections == 0 and sim.stats.sessions == 0  # nothing was sent
    assert result.exit_code == 1, result.output
    (row,) = pq.read_table(tmp_path / "o" / "results.parquet").to_pylist()
    assert row["error_type"] == "too_long"
    message = row["error_message"]
    assert "estimated input of 52,538 tokens (4,203.0 s of audio)" in message
    assert "limit of 49,152 input tokens" in message and "--split auto would send it as 2 sessions" in message


@pytest.mark.parametrize("mode", ["auto", "never"])
def test_estimate_reports_seventy_minutes_in_either_mode(seventy_minutes: Path, tmp_path: Path, mode: str) -> None:
    result = CliRunner().invoke(
        main, ["estimate", str(seventy_minutes / "manifest.csv"), "--out", str(tmp_path), "--split", mode]
    )
    assert result.exit_code == 0, result.output
    assert "52,538 tokens" in result.output and "49,152 input tokens" in result.output
    (row,) = pq.read_table(tmp_path / "estimate.parquet").to_pylist()
    if mode == "auto":
        assert "Too long for one session (1 rows" in result.output and "as 2 sessions" in result.output
        assert row["segments"] == 2 and row["problem"] is None
        assert row["input_audio_tokens"] == 52_538 and row["output_audio_tokens"] == 2 * 100  # an answer each
    else:
        assert "Problems (1 rows" in result.output and "--split auto would send it as 2 sessions" in result.output
        assert row["segments"] is None and row["problem"].startswith("too_long:")
