"""Conversations: a ``turns`` row is one session with one response per turn, in order; per-turn results,
WAVs and usage (equal to the simulator's own billing of each response); the estimate counting every turn's
re-billed context; partial journal records, and a real kill -9 in the middle of a conversation job."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from media_factory import write_audio, write_image
from test_protocol import run_pair  # the client core against the simulator's, through JSON frames

from batchqwen import manifest, results, runner
from batchqwen.config import RunConfig
from batchqwen.errors import ItemError, ManifestError
from batchqwen.items import ConversationTurn, PreparedInput, TimedImage, TurnRequest
from batchqwen.models import audio_tokens, get_model
from batchqwen.realtime.protocol import ClientTurn
from batchqwen.sim.core import ServerSession
from batchqwen.sim.server import Simulator, SimulatorConfig, SimulatorStats
from batchqwen.tokens import count_text_tokens

OMNI35 = get_model("qwen3.5-omni-flash-realtime")
FLASH = get_model("qwen3-omni-flash-realtime")
KEY = "sk-conversation-test-0001"
FAST = runner.RetryPolicy(base_delay=0.01, max_delay=0.05, throttle_base_delay=0.05, throttle_max_delay=0.1)


def tone(seconds: float, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()


# ----------------------------------------------------------------------------- the core, in memory


def test_three_turns_in_one_session_answer_in_order_with_each_turns_billing() -> None:
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.new("RGB", (320, 240), (20, 40, 200)).save(buffer, format="JPEG")
    image = TimedImage(0.2, buffer.getvalue(), 320, 240)
    turns = (
        ConversationTurn(PreparedInput(tone(1.2))),
        ConversationTurn(PreparedInput(tone(2.0, 660.0), images=(image,))),
        ConversationTurn(PreparedInput(), prompt="And what did I say first?"),
    )
    request = TurnRequest(OMNI35, "Tina", ("text", "audio"), turns[0].media, instructions="Be brief.", turns=turns)
    core = ClientTurn(request)
    server = ServerSession(OMNI35.name)
    run_pair(core, server)
    result = core.result()
    assert [t.index for t in result.turns] == [1, 2, 3]
    said = [t.output_transcript for t in result.turns]
    assert said[0].startswith("I heard 1.2 s of audio") and "saw no image" in said[0]
    assert said[1].startswith("I heard 2.0 s of audio") and "saw 1 image (320×240, mostly blue)" in said[1]
    assert "You wrote: 'And what did I say first?'" in said[2]
    assert result.output_transcript == "\n".join(said)
    assert result.turns[0].input_transcript and result.turns[1].input_transcript
    assert result.turns[2].input_transcript is None  # nothing spoken in a typed turn
    # every turn's usage is what the simulator billed for its response; the context is billed again
    for turn in result.turns:
        [rid] = turn.response_ids
        assert turn.usage == server.usages[rid]
    usage = [t.usage for t in result.turns]
    assert all(u is not None for u in usage)
    first, second, third = (u for u in usage if u is not None)
    assert first.input_audio_tokens == audio_tokens(OMNI35, 1.2)
    assert second.input_audio_tokens == audio_tokens(OMNI35, 1.2) + audio_tokens(OMNI35, 2.0)
    assert third.input_audio_tokens == second.input_audio_tokens and third.input_image_tokens == 80
    # the text re-billed: instructions, the typed turn, and the two earlier answers' text
    assert first.output_text_tokens is not None and second.output_text_tokens is not None
    expected_text = count_text_tokens("Be brief.") + count_text_tokens("And what did I say first?")
    assert third.input_text_tokens == expected_text + first.output_text_tokens + second.output_text_tokens
    assert "Earlier in this session: turn 1: 1.2 s of audio; turn 2: 2.0 s of audio" in said[2]  # its memory
    assert result.usage == first + second + third
    assert result.output_pcm == b"".join(t.output_pcm for t in result.turns)


def test_a_conversation_on_a_server_turn_model_is_refused() -> None:
    model = get_model("qwen3-livetranslate-flash-realtime")
    turns = (ConversationTurn(PreparedInput(tone(1.0))), ConversationTurn(PreparedInput(tone(1.0))))
    with pytest.raises(Exception, match="answers each utterance by itself"):
        ClientTurn(TurnRequest(model, "Cherry", ("text",), turns[0].media, turns=turns))


# ----------------------------------------------------------------------------- the manifest's turns column


def test_turns_column_in_csv_and_jsonl(tmp_path: Path) -> None:
    write_audio(tmp_path / "a.wav", seconds=0.3, rate=16_000, channels=1)
    write_image(tmp_path / "p.png")
    turns = [{"audio": "a.wav"}, {"audio": "a.wav", "images": ["p.png"]}, {"prompt": "  why?  "}]
    csv_path = tmp_path / "m.csv"
    csv_path.write_text('id,turns,note\nc1,"' + json.dumps(turns).replace('"', '""') + '",x\n')
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"id": "c1", "turns": turns, "note": "x"}) + "\n")
    for path in (csv_path, jsonl):
        [item] = list(manifest.iter_items(path))
        assert [t.audio for t in item.turns] == [tmp_path / "a.wav", tmp_path / "a.wav", None]
        assert item.turns[1].images == (tmp_path / "p.png",) and item.turns[2].prompt == "  why?  "
        assert item.passthrough == {"note": "x"}
        manifest.validate_item(item)
        assert manifest.item_files(item) == [tmp_path / "a.wav", tmp_path / "a.wav", tmp_path / "p.png"]
    assert manifest.check_manifest(csv_path).rows == 1


@pytest.mark.parametrize(
    "cell, message",
    [
        ("[{", "column 'turns' is not a JSON list"),
        ('{"audio": "a.wav"}', "must be a JSON list of turns"),
        ('[{"audio": "a.wav", "speed": 2}]', "turn 1 has 'speed'; a turn takes audio, image, video, prompt"),
        ('["a.wav"]', "turn 1 must be an object"),
    ],
)
def test_a_malformed_turns_cell_is_a_manifest_error(tmp_path: Path, cell: str, message: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "x", "turns": cell}) + "\n")
    with pytest.raises(ManifestError, match=message):
        list(manifest.iter_items(path))


def test_a_turn_without_input_or_a_row_mixing_turns_and_inputs_is_that_rows_error(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(
        json.dumps({"id": "empty-turn", "turns": [{"prompt": "hi"}, {}]})
        + "\n"
        + json.dumps({"id": "mixed", "prompt": "hi", "turns": [{"prompt": "there"}]})
        + "\n"
    )
    first, second = manifest.iter_items(path)
    with pytest.raises(ItemError, match="turn 2 has no audio, image, video or prompt"):
        manifest.validate_item(first)
    with pytest.raises(ItemError, match="has turns and audio/image/video/prompt of its own"):
        manifest.validate_item(second)


# ----------------------------------------------------------------------------- whole runs


def write_conversations(folder: Path, count: int, *, seconds: tuple[float, float] = (0.6, 1.2)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / "pic.png", width=320, height=240)
    lines = []
    for n in range(count):
        write_audio(folder / f"a{n}.wav", seconds=seconds[0], rate=16_000, channels=1, seed=n)
        write_audio(folder / f"b{n}.wav", seconds=seconds[1], rate=16_000, channels=1, seed=100 + n)
        turns = [{"audio": f"a{n}.wav"}, {"audio": f"b{n}.wav", "image": "pic.png"}, {"prompt": f"Sum up, {n}."}]
        lines.append(json.dumps({"id": f"talk-{n}", "instructions": "You are a shop assistant.", "turns": turns}))
    path = folder / "conversations.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_job(source: Path, out: Path, **overrides: Any) -> tuple[runner.RunOutcome, SimulatorStats]:
    async def main() -> tuple[runner.RunOutcome, SimulatorStats]:
        async with Simulator(SimulatorConfig()) as sim:
            values: dict[str, Any] = {
                "model": OMNI35.name, "base_url": sim.url, "api_key": KEY, "rpm": 10**6, "tpm": 10**9,
                "pad_silence_seconds": 0.0, "concurrency": 4,
            }  # fmt: skip
            values.update(overrides)
            return await runner.run(RunConfig(source, out, **values), retry=FAST), sim.stats

    return asyncio.run(asyncio.wait_for(main(), 60))


def billed(stats: SimulatorStats, session_id: str) -> dict[str, Any]:
    """What the simulator billed for each response of a session (its own records), by response id."""
    return {record.response_id: record.usage for record in stats.billing[session_id]}


def wav_frames(path: Path) -> tuple[int, bytes]:
    with wave.open(str(path), "rb") as handle:
        return handle.getframerate(), handle.readframes(handle.getnframes())


def test_three_turn_job_answers_in_order_with_turn_wavs_and_the_simulators_usage(tmp_path: Path) -> None:
    source = write_conversations(tmp_path / "job", 3)
    out = tmp_path / "out"
    outcome, stats = run_job(source, out)
    assert outcome.exit_code == 0
    table = pq.read_table(out / "results.parquet")
    assert [f.name for f in table.schema.field("turns").type.value_type] == [
        "turn", "input_transcript", "output_text", "output_transcript", "output_wav", "output_audio_seconds",
        "response_ids", "tool_calls", "usage",
    ]  # fmt: skip
    for n, row in enumerate(table.to_pylist()):
        assert row["status"] == "ok" and row["id"] == f"talk-{n}"
        turns = row["turns"]
        assert [t["turn"] for t in turns] == [1, 2, 3]
        assert turns[0]["output_transcript"].startswith("I heard 0.6 s of audio")
        assert turns[1]["output_transcript"].startswith("I heard 1.2 s of audio")
        assert "saw 1 image (320×240" in turns[1]["output_transcript"]
        assert f"You wrote: 'Sum up, {n}.'" in turns[2]["output_transcript"]
        assert row["output_transcript"] == "\n".join(t["output_transcript"] for t in turns)
        session = billed(stats, row["session_id"])  # one session held the whole conversation
        assert row["response_ids"] == [rid for t in turns for rid in t["response_ids"]] == list(session)
        # per-turn usage: what the simulator billed for that turn's response, field for field
        for turn in turns:
            [rid] = turn["response_ids"]
            charged = session[rid]
            assert turn["usage"] == {
                "input_tokens": charged.input_tokens,
                "output_tokens": charged.output_tokens,
                "total_tokens": charged.total_tokens,
                "input_text_tokens": charged.input_text_tokens,
                "input_audio_tokens": charged.input_audio_tokens,
                "input_image_tokens": charged.input_image_tokens,
                "output_text_tokens": charged.output_text_tokens,
                "output_audio_tokens": charged.output_audio_tokens,
            }
        assert row["usage_total_tokens"] == sum(t["usage"]["total_tokens"] for t in turns)
        # the estimate counted every turn's re-billed context as the simulator bills it: the input exactly,
        # the earlier answers (turn 2 re-reads one, turn 3 two) at the assumed 24 text tokens each where
        # the simulator bills their real text
        assert row["est_input_audio_tokens"] == row["usage_input_audio_tokens"]
        assert row["est_input_image_tokens"] == row["usage_input_image_tokens"]
        said = [t["usage"]["output_text_tokens"] for t in turns]
        assert row["est_input_text_tokens"] - (1 + 2) * 24 == row["usage_input_text_tokens"] - (2 * said[0] + said[1])
        # WAVs: one per turn, and the whole conversation's answer audio
        whole_rate, whole = wav_frames(out / row["output_wav"])
        assert row["output_wav"] == f"audio/talk-{n}.wav"
        pieces = []
        for turn in turns:
            assert turn["output_wav"] == f"audio/talk-{n}/turn-{turn['turn']}.wav"
            rate, pcm = wav_frames(out / turn["output_wav"])
            assert rate == whole_rate == 24_000 and turn["output_audio_seconds"] == round(len(pcm) / 48_000, 3)
            pieces.append(pcm)
        assert whole == b"".join(pieces)


def test_a_conversation_with_a_tool_round_in_each_turn(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    write_audio(folder / "a.wav", seconds=0.5, rate=16_000, channels=1)
    (folder / "tools.py").write_text(
        "def note(text: str) -> dict:\n    '''Write it down.'''\n    return {'ok': text[:5]}\n"
    )
    turns = [{"audio": "a.wav", "prompt": "Please note this."}, {"prompt": "Now note that too."}]
    (folder / "m.jsonl").write_text(json.dumps({"id": "t", "turns": turns}) + "\n")
    out = tmp_path / "out"
    outcome, stats = run_job(folder / "m.jsonl", out, tools=folder / "tools.py")
    assert outcome.exit_code == 0
    [row] = pq.read_table(out / "results.parquet").to_pylist()
    session = billed(stats, row["session_id"])
    assert [len(t["response_ids"]) for t in row["turns"]] == [2, 2]  # a call, then the answer, per turn
    assert [(c["turn"], c["name"]) for c in row["tool_calls"]] == [(1, "note"), (2, "note")]
    assert [c["call_id"] for t in row["turns"] for c in t["tool_calls"]] == [c["call_id"] for c in row["tool_calls"]]
    for turn in row["turns"]:
        total = sum(session[rid].total_tokens for rid in turn["response_ids"])
        assert turn["usage"]["total_tokens"] == total  # both responses of the turn
        assert "Tool note returned" in turn["output_transcript"]


def test_a_prompt_turn_on_a_model_without_text_input_goes_as_that_turns_instructions(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    write_audio(folder / "a.wav", seconds=0.5, rate=16_000, channels=1)
    turns = [{"audio": "a.wav"}, {"audio": "a.wav", "prompt": "Count the beeps."}, {"audio": "a.wav"}]
    (folder / "m.jsonl").write_text(json.dumps({"id": "f", "instructions": "Be kind.", "turns": turns}) + "\n")
    out = tmp_path / "out"
    assert run_job(folder / "m.jsonl", out, model=FLASH.name)[0].exit_code == 0
    [row] = pq.read_table(out / "results.parquet").to_pylist()
    said = [t["output_transcript"] for t in row["turns"]]
    assert said[0].endswith("Instructions: 'Be kind.'.")
    assert said[1].endswith("Instructions: 'Be kind. Count the beeps.'.")  # for that turn only
    assert said[2].endswith("Instructions: 'Be kind.'.")


def test_a_livetranslate_conversation_row_fails_before_any_session(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    write_audio(folder / "a.wav", seconds=0.5, rate=16_000, channels=1)
    (folder / "m.jsonl").write_text(json.dumps({"id": "lt", "turns": [{"audio": "a.wav"}, {"audio": "a.wav"}]}) + "\n")
    out = tmp_path / "out"
    assert run_job(folder / "m.jsonl", out, model="qwen3-livetranslate-flash-realtime")[0].exit_code == 1
    [row] = pq.read_table(out / "results.parquet").to_pylist()
    assert row["attempts"] == 0 and "answers each utterance by itself" in row["error_message"]


def test_partial_records_carry_their_billed_tokens_into_the_rerun(tmp_path: Path) -> None:
    source = write_conversations(tmp_path / "job", 1)
    [item] = manifest.iter_items(source)
    journal = results.Journal(tmp_path / "out")
    partial = results.ResultRow.from_item(item, results.STATUS_PARTIAL, failed_attempt_tokens=321)
    journal.append(partial.to_record())
    stale = results.ResultRow.from_item(item, results.STATUS_PARTIAL, failed_attempt_tokens=5)
    stale.content_hash = "other content"
    done = journal.index()
    assert runner.carried_tokens(done, item) == 321
    journal.append(stale.to_record())
    assert runner.carried_tokens(journal.index(), item) == 0  # another content's tokens are not this item's
    journal.close()
    assert results.needs_run(item, partial.to_record())
    out = tmp_path / "out"
    journal = results.Journal(out)
    journal.append(partial.to_record())
    journal.close()
    assert run_job(source, out)[0].exit_code == 0
    [row] = pq.read_table(out / "results.parquet").to_pylist()
    assert row["status"] == "ok" and row["failed_attempt_tokens"] == 321


# ----------------------------------------------------------------------------- kill -9 and resume


def journal_records(out: Path) -> list[dict[str, Any]]:
    path = out / results.JOURNAL_NAME
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):  # a torn last line
            records.append(json.loads(line))
    return records


def test_kill_9_in_the_middle_of_a_conversation_job_then_resume(tmp_path: Path) -> None:
    source = write_conversations(tmp_path / "job", 3, seconds=(0.8, 0.8))
    out = tmp_path / "out"
    command = [
        str(Path(sys.executable).parent / "batchqwen"), "run", str(source), "--simulate", "--model", OMNI35.name,
        "--out", str(out), "--concurrency", "1", "--quiet", "--pad-silence", "0",
    ]  # fmt: skip
    env = {**os.environ, "DASHSCOPE_API_KEY": ""}
    process = subprocess.Popen([*command, "--pace", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 40
    try:
        while True:  # until one conversation is whole and the next one half done
            records = journal_records(out)
            ok = {r["id"] for r in records if r["status"] == "ok"}
            partial = {r["id"] for r in records if r["status"] == "partial"} - ok
            if ok and partial:
                break
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the run never got half-way through a conversation"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()
    before = {r["id"]: r for r in journal_records(out) if r["status"] == "ok"}
    half = {r["id"]: r for r in journal_records(out) if r["status"] == "partial" and r["id"] not in before}
    assert before and half
    billed_before = {item: record["failed_attempt_tokens"] for item, record in half.items()}
    assert all(tokens > 0 for tokens in billed_before.values())

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items_skipped_already_ok"] == len(before)
    rows = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert sorted(rows) == ["talk-0", "talk-1", "talk-2"]
    for item_id, row in rows.items():
        n = int(item_id.split("-")[1])
        assert row["status"] == "ok"
        turns = row["turns"]  # no turn lost: all three, in order, each answering its own input
        assert [t["turn"] for t in turns] == [1, 2, 3]
        assert turns[0]["output_transcript"].startswith("I heard 0.8 s of audio")
        assert "saw 1 image" in turns[1]["output_transcript"]
        assert f"You wrote: 'Sum up, {n}.'" in turns[2]["output_transcript"]
        assert all((out / t["output_wav"]).exists() for t in turns)
        if item_id in before:  # finished before the kill: not run again
            assert row["session_id"] == before[item_id]["session_id"]
            assert row["finished_at"].isoformat() == before[item_id]["finished_at"]
        else:
            assert row["session_id"] not in {r.get("session_id") for r in before.values()}
        if item_id in half:  # rerun whole; what its first half was billed still counts
            assert row["failed_attempt_tokens"] >= billed_before[item_id]
