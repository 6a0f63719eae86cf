"""The offline dry run over real generated media, checked against token counts computed by hand."""

from __future__ import annotations

import asyncio
import csv
import socket
import wave
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from dashscope.tokenizers import get_tokenizer
from PIL import Image

from batchqwen.cost import OutputAssumption, load_prices
from batchqwen.errors import ManifestError
from batchqwen.estimate import ESTIMATE_FILE, EstimateReport, estimate_manifest, format_report

INSTRUCTIONS = "Answer in one short sentence."
PROMPT = "What is in the picture? 图片里有什么？"
RATE = 16_000
FLASH = "qwen3-omni-flash-realtime"
TURBO = "qwen-omni-turbo-realtime"
UNPRICED = "qwen3.5-omni-flash-realtime"


def qwen_tokens(text: str) -> int:
    """Independent count with dashscope's own tokenizer."""
    return len(get_tokenizer("qwen-turbo").encode(text))


def tone(seconds: float) -> np.ndarray[Any, np.dtype[np.int16]]:
    t = np.arange(round(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)


def write_wav(path: Path, seconds: float) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(tone(seconds).tobytes())


def write_encoded(path: Path, seconds: float, codec: str, fmt: str) -> None:
    """MP3 / FLAC through PyAV (it converts our s16 frames to what the encoder wants)."""
    pcm = tone(seconds)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=RATE)
        assert isinstance(stream, av.AudioStream)
        stream.layout = "mono"
        for start in range(0, len(pcm), 1152):
            frame = av.AudioFrame.from_ndarray(pcm[start : start + 1152].reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def write_video(path: Path, seconds: int, width: int, height: int) -> None:
    """An MP4 with an mpeg4 picture at 10 fps and an AAC sound track of the same length."""
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=RATE)
        audio.layout = "mono"
        for i in range(seconds * 10):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), i * 7 % 255, np.uint8), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        pcm = tone(seconds)
        for start in range(0, len(pcm), 1024):
            chunk = av.AudioFrame.from_ndarray(pcm[start : start + 1024].reshape(1, -1), format="s16", layout="mono")
            chunk.sample_rate = RATE
            chunk.pts = start
            for packet in audio.encode(chunk):
                out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A CSV manifest over real files: every kind of input, overrides, and three bad rows."""
    media = tmp_path / "media"
    media.mkdir()
    write_wav(media / "ten.wav", 10.0)
    write_encoded(media / "two.mp3", 2.0, "libmp3lame", "mp3")
    write_encoded(media / "short.flac", 0.4, "flac", "flac")
    Image.new("RGB", (1920, 1080), "navy").save(media / "full_hd.png")
    Image.new("RGB", (224, 224), "red").save(media / "square.jpg")
    Image.new("RGB", (4000, 500), "green").save(media / "wide.png")  # sent at 1920x240
    write_video(media / "clip.mp4", 3, 64, 48)
    (media / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    rows = [
        {"id": "a", "audio": "media/ten.wav"},
        {"id": "b", "audio": "media/two.mp3", "image": "media/full_hd.png"},
        {"id": "c", "audio": "media/short.flac", "image": "media/square.jpg", "model": TURBO},
        {"id": "d", "prompt": PROMPT, "modalities": "text"},
        {"id": "e", "image": "media/wide.png", "model": UNPRICED},
        {"id": "f", "video": "media/clip.mp4", "instructions": "Describe the clip."},
        {"id": "g", "audio": "media/missing.wav"},
        {"id": "h", "audio": "media/corrupt.wav"},
        {"id": "i", "audio": "media/ten.wav", "voice": "Nobody"},
        {"id": "j", "prompt": PROMPT, "model": UNPRICED},
    ]
    columns = ["id", "audio", "image", "video", "prompt", "instructions", "model", "voice", "modalities"]
    path = tmp_path / "manifest.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def run(manifest: Path, out: Path | None, **overrides: Any) -> EstimateReport:
    options: dict[str, Any] = {
        "default_model": FLASH,
        "region": "cn-beijing",
        "prices": load_prices(),
        "output": OutputAssumption(output_seconds_per_item=8.0, text_tokens_per_second_of_speech=3.0),
        "modalities": ("text", "audio"),
        "instructions": INSTRUCTIONS,
        "limit": None,
        "pad_silence_seconds": 1.0,
        "workers": 3,
        "out_dir": out,
    }
    options.update(overrides)
    return estimate_manifest(manifest, **options)


def test_estimate_rows_and_totals_match_hand_counts(job: Path, tmp_path: Path) -> None:
    report = run(job, tmp_path / "out")
    instr, prompt, clip = qwen_tokens(INSTRUCTIONS), qwen_tokens(PROMPT), qwen_tokens("Describe the clip.")
    merged = qwen_tokens(INSTRUCTIONS + "\n\n" + PROMPT)
    # (input_text, input_audio, input_image, output_text, output_audio) by hand:
    expected = {
        "a": (instr, 125, 0, 24, 100),  # 10 s x 12.5; answer 8 s x 12.5 audio, 8 s x 3 transcript
        "b": (instr, 25, 1280, 24, 100),  # 2 s; 1920x1080 = 60 x 34 blocks, clamped at 1280
        "c": (instr, 25, 64, 24, 200),  # turbo: 0.4 s bills as 1 s x 25; 224x224 = 8 x 8; 8 s x 25
        # no audio: 1 s of silence padding; the prompt rides in the instructions; text-only output
        "d": (merged, 13, 0, 24, 0),
        "j": (instr + prompt, 0, 0, 24, 100),  # text-input model, prompt only: no padding
        "e": (instr, 13, 480, 24, 100),  # 4000x500 sent at 1920x240 = 60 x 8 (unfitted: 1280); padded
        "f": (clip, 38, 3 * 4, 24, 100),  # 3 s sound track = 37.5 -> 38; 3 frames of 64x48 = 2 x 2 blocks
    }
    table = pq.read_table(tmp_path / "out" / ESTIMATE_FILE).to_pylist()
    assert [r["id"] for r in table] == list("abcdefghij")  # manifest order
    assert [r["row"] for r in table] == list(range(1, 11))
    by_id = {r["id"]: r for r in table}
    for item_id, tokens in expected.items():
        r = by_id[item_id]
        got = (
            r["input_text_tokens"],
            r["input_audio_tokens"],
            r["input_image_tokens"],
            r["output_text_tokens"],
            r["output_audio_tokens"],
        )
        assert got == tokens, item_id
        assert r["total_tokens"] == sum(tokens)
        assert r["problem"] is None and r["currency"] == "CNY"
    assert by_id["d"]["padded_silence_seconds"] == 1.0 and by_id["a"]["padded_silence_seconds"] == 0.0
    assert by_id["f"]["image_count"] == 3 and by_id["c"]["model"] == TURBO

    # money by hand, Beijing prices; text+audio output billed on audio tokens only
    a = (instr * 2.2 + 125 * 18.9 + 100 * 75.1) / 1e6
    c = (instr * 1.6 + 25 * 25 + 64 * 6 + 200 * 50) / 1e6
    d = (merged * 2.2 + 13 * 18.9 + 24 * 15.2) / 1e6  # text-only output after audio input
    assert by_id["a"]["cost"] == pytest.approx(a)
    assert by_id["c"]["cost"] == pytest.approx(c)
    assert by_id["d"]["cost"] == pytest.approx(d)
    # the unpriced model: tokens counted, cost unknown, never zero
    assert by_id["e"]["cost"] is None and by_id["e"]["price_known"] is False

    assert report.items == 10 and report.problem_count == 3 and report.estimated_items == 7
    flash = report.by_model[FLASH]
    assert flash.items == 4
    assert flash.tokens["input_audio"] == 125 + 25 + 13 + 38
    assert flash.tokens["input_image"] == 1280 + 12
    assert flash.tokens["output_audio"] == 300
    assert report.by_model[TURBO].cost == pytest.approx(c)
    assert report.by_model[UNPRICED].cost is None
    assert report.by_model[UNPRICED].tokens["input_image"] == 480
    assert by_id["j"]["padded_silence_seconds"] == 0.0 and by_id["j"]["cost"] is None
    assert report.tokens["input_audio"] == 125 + 25 + 25 + 13 + 13 + 38
    assert report.total_cost is None  # some items have no known price
    known = sum(r["cost"] for r in table if r["cost"] is not None)
    assert report.known_cost == pytest.approx(known)
    assert report.unpriced_items == 2


def test_problem_rows_are_listed_not_fatal(job: Path, tmp_path: Path) -> None:
    report = run(job, tmp_path / "out")
    problems = {p.id: p.message for p in report.problems}
    assert set(problems) == {"g", "h", "i"}
    assert "missing.wav" in problems["g"] and problems["g"].startswith("input_file")
    assert problems["h"].startswith("media")
    assert "Nobody" in problems["i"]
    text = format_report(report)
    for needle in (
        "10 items, 7 estimated, 3 with problems",
        "Output assumed: 8 s of speech per item; 3 text tokens per second of speech",
        "no known price",
        "UNKNOWN for 2 items of qwen3.5-omni-flash-realtime",
        "row 7 (id g)",
        "CNY per 1M tokens",
        "as of 2026-11",
    ):
        assert needle in text, needle


def test_problem_list_is_capped_but_all_counted(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(f'{{"id": "x{i}", "audio": "nope{i}.wav"}}\n' for i in range(45)), encoding="utf-8")
    report = run(manifest, tmp_path / "out")
    assert report.problem_count == 45 and len(report.problems) == 20
    assert "... and 25 more" in format_report(report)
    assert pq.read_table(tmp_path / "out" / ESTIMATE_FILE).num_rows == 45


def test_all_priced_total_and_limit(job: Path, tmp_path: Path) -> None:
    report = run(job, tmp_path / "out", limit=3, region="singapore")
    assert report.items == 3 and report.region == "ap-southeast-1"
    instr = qwen_tokens(INSTRUCTIONS)
    a = (instr * 3.816 + 125 * 33.54 + 100 * 133.06) / 1e6
    b = (instr * 3.816 + 25 * 33.54 + 1280 * 6.899 + 100 * 133.06) / 1e6
    c = (instr * 1.982 + 25 * 32.586 + 64 * 6.165 + 200 * 65.246) / 1e6
    assert report.total_cost == pytest.approx(a + b + c)
    assert f"Estimated cost: {a + b + c:,.4f} CNY" in format_report(report)


def test_no_socket_is_opened(job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []

    def refuse(name: str) -> Any:
        def blocked(*args: Any, **kwargs: Any) -> Any:
            attempts.append(name)
            raise AssertionError(f"network use in a dry run: {name}")

        return blocked

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    monkeypatch.setattr(asyncio.BaseEventLoop, "create_connection", refuse("loop.create_connection"))
    report = run(job, tmp_path / "out")
    assert report.items == 10 and report.estimated_items == 7
    assert attempts == []


def test_manifest_error_midway_leaves_no_partial_file(tmp_path: Path) -> None:
    write_wav(tmp_path / "one.wav", 1.0)
    lines = [f'{{"id": "r{i}", "audio": "one.wav"}}' for i in range(30)]
    lines.insert(20, "{not json")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(ManifestError):
        run(manifest, out)
    assert not (out / ESTIMATE_FILE).exists()
    assert list(out.iterdir()) == []


def test_without_out_dir_writes_nothing(job: Path, tmp_path: Path) -> None:
    report = run(job, None, workers=1)
    assert report.parquet is None and report.items == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv", "media"]


def test_a_file_named_on_every_row_is_opened_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import functools

    from batchqwen import estimate

    write_wav(tmp_path / "one.wav", 1.5)
    Image.new("RGB", (320, 240), (10, 200, 30)).save(tmp_path / "one.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,audio,image\n" + "".join(f"r{n},one.wav,one.png\n" for n in range(300)), "utf-8")
    opened: list[str] = []

    def counting(probe: Any) -> Any:
        @functools.wraps(probe)
        def wrapper(path: Path, **options: Any) -> Any:
            opened.append(path.name)
            return probe(path, **options)

        return wrapper

    monkeypatch.setattr(estimate, "_PROBES", estimate.ProbeCache())
    monkeypatch.setattr(estimate, "measure_audio", counting(estimate.measure_audio))
    monkeypatch.setattr(estimate, "probe_image_parts", counting(estimate.probe_image_parts))
    report = run(manifest, tmp_path / "out")
    assert report.items == 300 and report.problem_count == 0
    assert sorted(opened) == ["one.png", "one.wav"]  # once each, for 300 rows
    rows = pq.read_table(tmp_path / "out" / ESTIMATE_FILE).to_pylist()
    assert {r["audio_seconds"] for r in rows} == {1.5} and {r["image_count"] for r in rows} == {1}
    # a changed file is a new key: probed again
    write_wav(tmp_path / "one.wav", 2.5)
    run(manifest, tmp_path / "out2")
    assert opened.count("one.wav") == 2


def test_a_big_manifest_is_estimated_in_worker_processes_in_manifest_order(tmp_path: Path) -> None:
    from batchqwen import estimate

    for n in range(3):
        write_wav(tmp_path / f"a{n}.wav", 1.0 + n)
    rows = estimate.PARALLEL_MIN_ROWS + 300
    manifest = tmp_path / "m.csv"
    lines = "".join(f"r{n},a{n % 3}.wav,{'nope.wav' if n == 1234 else ''}\n" for n in range(rows))
    manifest.write_text("id,audio,video\n" + lines, "utf-8")
    report = run(manifest, tmp_path / "out")
    assert report.items == rows
    assert report.problem_count == 1  # row 1234 names a video that does not exist: its own problem
    table = pq.read_table(tmp_path / "out" / ESTIMATE_FILE).to_pylist()
    assert [r["id"] for r in table] == [f"r{n}" for n in range(rows)]  # manifest order
    assert [r["audio_seconds"] for r in table[:6]] == [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]
    limited = run(manifest, tmp_path / "out2", limit=estimate.PARALLEL_MIN_ROWS + 10)
    assert limited.items == estimate.PARALLEL_MIN_ROWS + 10


def test_flac_length_comes_from_streaminfo_as_ffmpeg_reads_it(tmp_path: Path) -> None:
    from media_factory import write_audio

    from batchqwen.probe import flac_seconds, probe_audio

    for n, (seconds, rate) in enumerate([(0.7, 16_000), (2.35, 44_100), (3.0, 48_000)]):
        path = write_audio(tmp_path / f"a{n}.flac", seconds=seconds, rate=rate, channels=1, seed=n)
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            assert stream.duration is not None and stream.time_base is not None
            ffmpeg_seconds = float(stream.duration * stream.time_base)
        assert flac_seconds(path) == pytest.approx(ffmpeg_seconds, abs=1e-9)
        assert probe_audio(path).method == "header"
    not_flac = write_audio(tmp_path / "b.wav", seconds=1.0)
    assert flac_seconds(not_flac) is None  # no fLaC marker: the caller falls back to FFmpeg
