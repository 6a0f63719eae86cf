"""Results: safe file names, the crash-safe journal, atomic files, results.parquet in manifest order."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchqwen.errors import HandshakeRejected, InputFileError, ServerError, TimedOut
from batchqwen.items import Item
from batchqwen.results import (
    RESULT_COLUMNS,
    RESULT_SCHEMA,
    Journal,
    ResultRow,
    atomic_write_bytes,
    error_fields,
    failed_row,
    needs_run,
    redact,
    relative_to_out,
    safe_id,
    summarize,
    wav_path,
    write_results,
    write_summary,
    write_wav_atomic,
)

SAFE_NAME = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def item(n: int, **kw: Any) -> Item:
    return Item(id=f"id-{n}", row=n, prompt="p", content_hash=f"h{n}", **kw)


# ----------------------------------------------------------------------------- safe_id


@pytest.mark.parametrize(
    "hostile",
    ["../../x", "a/b", "a\\b", "CON", "con.txt", "nul", "..", ".", "", ".hidden", "x" * 500, "条目", "a\x00b", "é"],
)
def test_safe_id_hostile_examples(hostile: str, tmp_path: Path) -> None:
    name = safe_id(hostile)
    assert set(name) <= SAFE_NAME and name and not name.startswith(".")
    assert name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL"}
    assert len(name) <= 100
    assert name != hostile  # every example needed a change, so it carries the hash suffix
    path = wav_path(tmp_path, hostile)
    assert path.parent == tmp_path / "audio"
    assert path.resolve().is_relative_to(tmp_path.resolve())


def test_safe_id_keeps_plain_ids_and_separates_lookalikes() -> None:
    assert safe_id("item-001.a_b") == "item-001.a_b"
    assert safe_id("café").startswith("cafe--")
    lookalikes = ["a/b", "a_b", "a\\b", "a:b", "A_b", "a_B"]
    names = [safe_id(x) for x in lookalikes]
    assert len({n.lower() for n in names}) == len(lookalikes)  # distinct even on case-insensitive disks
    # an id that already looks like a hashed name cannot collide with the name it imitates
    imitator = safe_id("a/b").lower()
    assert safe_id(imitator) != safe_id("a/b")


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=120))
def test_safe_id_is_always_a_plain_file_name(item_id: str) -> None:
    name = safe_id(item_id)
    assert name and set(name) <= SAFE_NAME
    assert not name.startswith(".") and name not in {".", ".."}
    assert len(name) <= 100
    assert name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT1"}
    assert safe_id(item_id) == name  # deterministic


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_safe_id_is_injective_even_ignoring_case(a: str, b: str) -> None:
    if a != b:
        assert safe_id(a).lower() != safe_id(b).lower()


def test_wav_path_refuses_a_symlinked_escape(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (out / "audio").symlink_to(outside)
    with pytest.raises(Exception, match="would leave"):
        wav_path(out, "a")
    assert relative_to_out(tmp_path, tmp_path / "audio" / "a.wav") == "audio/a.wav"


# ----------------------------------------------------------------------------- rows and errors


def test_result_row_matches_the_schema_column_for_column() -> None:
    assert [f.name for f in dataclasses.fields(ResultRow)] == list(RESULT_COLUMNS)
    assert RESULT_SCHEMA.field("started_at").type.tz == "UTC"


def test_failed_row_from_server_error_is_redacted() -> None:
    key = "sk-0123456789abcdef0123"
    exc = ServerError(f"bad key {key} used", error_type="invalid_request_error", code="InvalidApiKey")
    row = failed_row(item(3, modalities=("text", "audio")), exc, attempts=2, secrets=[key])
    assert row.status == "failed" and row.id == "id-3" and row.row == 3 and row.attempts == 2
    assert row.error_type == "server_error" and row.error_code == "InvalidApiKey"
    assert row.error_message == "bad key *** used"
    assert row.modalities == "text,audio" and row.content_hash == "h3"


def test_error_fields_for_other_errors() -> None:
    assert error_fields(HandshakeRejected(401))["error_code"] == "401"
    assert error_fields(TimedOut("connect", 5))["error_type"] == "timeout"
    fields = error_fields(InputFileError("row 4: file not found: /x.wav"))
    assert fields == {"error_type": "input_file", "error_code": None, "error_message": "row 4: file not found: /x.wav"}
    assert error_fields(ValueError())["error_message"] == "ValueError"
    long = error_fields(RuntimeError("x" * 10_000))["error_message"]
    assert long is not None and len(long) <= 4_000


def test_redact_masks_given_secrets_and_key_shapes() -> None:
    text = "Authorization: Bearer abc.def-123 and sk-abcdefghijklmnop and api_key=hunter22 and MYSECRET"
    out = redact(text, ["MYSECRET", ""])
    assert "abc.def-123" not in out and "sk-abcdefghijklmnop" not in out and "hunter22" not in out
    assert "MYSECRET" not in out
    assert redact("nothing to hide", ["sk-zzz"]) == "nothing to hide"


def test_needs_run_rules() -> None:
    it = item(1)
    ok = {"id": "id-1", "status": "ok", "content_hash": "h1"}
    assert needs_run(it, None)
    assert not needs_run(it, ok)
    assert needs_run(it, ok | {"content_hash": "changed"})
    assert needs_run(it, ok | {"status": "failed"})
    assert not needs_run(it, ok | {"status": "failed"}, retry_failed=False)
    assert needs_run(it, ok | {"status": "skipped"})


# ----------------------------------------------------------------------------- journal


def test_journal_round_trip_keeps_the_last_record_per_id(tmp_path: Path) -> None:
    with Journal(tmp_path / "out") as journal:
        journal.append({"id": "a", "status": "failed", "attempts": 1})
        journal.append({"id": "b", "status": "ok", "output_text": "你好"})
        journal.append({"id": "a", "status": "ok", "attempts": 2})
    loaded = Journal(tmp_path / "out").load()
    assert loaded == {
        "a": {"id": "a", "status": "ok", "attempts": 2},
        "b": {"id": "b", "status": "ok", "output_text": "你好"},
    }
    with pytest.raises(TypeError):
        Journal(tmp_path / "out").append({"status": "ok"})


def test_journal_index_reads_the_last_record_back_from_disk(tmp_path: Path) -> None:
    with Journal(tmp_path) as journal:
        journal.append({"id": "a", "status": "failed", "content_hash": "h1", "est_cost": 0.5})
        journal.append({"id": "b", "status": "ok", "content_hash": "h2", "output_text": "你好 " * 500})
        index = journal.index()
        offset = journal.append({"id": "a", "status": "ok", "content_hash": "h3", "est_cost": 0.25})
        index.note({"id": "a", "status": "ok", "content_hash": "h3", "est_cost": 0.25}, offset)
    assert dict(index) == Journal(tmp_path).load()  # the same records as loading the whole journal
    assert dict(Journal(tmp_path).index()) == dict(index)
    entry = index.entries["a"]
    assert (entry.status, entry.content_hash, entry.est_cost) == ("ok", "h3", 0.25)
    assert index.get("missing") is None and len(index) == 2
    # an entry holds no transcript: the record's text stays on disk until asked for
    assert "output_text" not in {field.name for field in dataclasses.fields(entry)}
    assert index["b"]["output_text"] == "你好 " * 500


def test_journal_tolerates_a_torn_last_line_and_seals_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append({"id": "a", "status": "ok"})
    journal.append({"id": "b", "status": "ok"})
    journal.close()
    data = journal.path.read_bytes()
    journal.path.write_bytes(data[:-9])  # a kill in the middle of writing b's line
    reader = Journal(tmp_path)
    assert reader.load() == {"a": {"id": "a", "status": "ok"}}
    assert reader.skipped_lines == 1
    # the next run's first append must not be glued onto the torn fragment
    with Journal(tmp_path) as again:
        again.append({"id": "b", "status": "ok", "attempts": 2})
    assert Journal(tmp_path).load()["b"] == {"id": "b", "status": "ok", "attempts": 2}


def test_journal_survives_a_killed_writer(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from batchqwen.results import Journal
        j = Journal(Path({str(tmp_path)!r}))
        for n in range(50):
            j.append({{"id": f"i{{n}}", "status": "ok", "output_text": "x" * 1000}})
        print("appended", flush=True)
        os._exit(9)  # no close, no flush of anything but what append already made durable
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "appended"
    loaded = Journal(tmp_path).load()
    assert sorted(loaded) == sorted(f"i{n}" for n in range(50))


def test_journal_missing_file_loads_empty(tmp_path: Path) -> None:
    assert Journal(tmp_path / "nothing").load() == {}


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_leaves_old_or_new_never_half(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "deep" / "file.bin"
    atomic_write_bytes(target, b"old content")
    assert target.read_bytes() == b"old content"

    def boom(src: object, dst: object) -> None:
        raise OSError("disk vanished at the last moment")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk vanished"):
        atomic_write_bytes(target, b"new content that never lands")
    monkeypatch.undo()
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]  # no temp file left over
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"


def test_write_wav_atomic_refuses_raw_pcm(tmp_path: Path) -> None:
    path = wav_path(tmp_path, "a/b")
    with pytest.raises(ValueError, match="not a RIFF/WAVE"):
        write_wav_atomic(path, b"\x00\x01" * 100)
    assert not path.exists()
    wav = b"RIFF" + (36).to_bytes(4, "little") + b"WAVEfmt " + b"\x00" * 24
    write_wav_atomic(path, wav)
    assert path.read_bytes() == wav and path.parent.name == "audio"


# ----------------------------------------------------------------------------- results.parquet


def test_results_in_manifest_order_with_pending_and_passthrough(tmp_path: Path) -> None:
    items = [
        item(1, passthrough={"lang": "en", "status": "gold"}),
        item(2, passthrough={"lang": None, "status": 3}),
        item(3, passthrough={"lang": "zh"}),
        item(4),
    ]
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ok = ResultRow.from_item(
        items[2], "ok", output_text="hello", usage_total_tokens=42, cost=0.5, currency="CNY",
        response_ids=["resp_1", "resp_2"], started_at=started, output_wav="audio/id-3.wav",
    ).to_record()  # fmt: skip
    journal = {
        "id-3": ok,
        "id-1": failed_row(items[0], TimedOut("first event", 30)).to_record(),
        "id-4": {"id": "id-4", "status": "ok", "content_hash": "stale"},  # written for other content
        "not-in-manifest": {"id": "not-in-manifest", "status": "ok"},
    }
    path = write_results(tmp_path, items, journal, ["lang", "status"])
    table = pq.read_table(path)
    assert table.schema.names == [*RESULT_COLUMNS, "lang", "manifest_status"]
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["id-1", "id-2", "id-3", "id-4"]
    assert [r["row"] for r in rows] == [1, 2, 3, 4]
    assert [r["status"] for r in rows] == ["failed", "pending", "ok", "pending"]
    assert rows[0]["error_type"] == "timeout"
    assert rows[2]["output_text"] == "hello" and rows[2]["usage_total_tokens"] == 42
    assert rows[2]["response_ids"] == ["resp_1", "resp_2"] and rows[2]["started_at"] == started
    assert [r["lang"] for r in rows] == ["en", None, "zh", None]
    assert [r["manifest_status"] for r in rows] == ["gold", "3", None, None]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_results_stream_in_batches(tmp_path: Path) -> None:
    n = 25_000  # three row batches
    items = (Item(id=f"i{k}", row=k + 1, prompt="p", content_hash="h") for k in range(n))
    journal = {f"i{k}": {"id": f"i{k}", "status": "ok", "content_hash": "h"} for k in range(0, n, 2)}
    path = write_results(tmp_path, items, journal, [])
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == n and meta.num_row_groups >= 3
    status = pq.read_table(path, columns=["status"]).column("status").to_pylist()
    assert status[:4] == ["ok", "pending", "ok", "pending"] and status.count("ok") == n // 2


def test_empty_results_still_make_a_valid_file(tmp_path: Path) -> None:
    path = write_results(tmp_path, [], {}, ["x"])
    assert pq.read_table(path).num_rows == 0


# ----------------------------------------------------------------------------- summary


def test_summarize_and_write_summary(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {"status": "ok", "est_input_audio_tokens": 100, "usage_input_audio_tokens": 110, "est_cost": 0.1,
         "cost": 0.11, "cost_basis": "usage", "currency": "CNY", "input_audio_seconds": 8.0},
        {"status": "ok", "est_input_audio_tokens": 50, "usage_input_audio_tokens": None, "est_cost": 0.05,
         "cost": 0.05, "cost_basis": "estimate", "currency": "CNY"},
        {"status": "failed", "error_type": "timeout", "failed_attempt_tokens": 7},
        {"status": "failed", "error_type": "timeout"},
        {"status": "pending"},
    ]  # fmt: skip
    summary = summarize(rows)
    assert summary["items"] == 5
    assert summary["by_status"] == {"ok": 2, "failed": 2, "skipped": 0, "pending": 1}
    assert summary["failures_by_type"] == {"timeout": 2}
    assert summary["tokens"]["est_input_audio_tokens"] == 150
    assert summary["tokens"]["usage_input_audio_tokens"] == 110
    assert summary["tokens"]["failed_attempt_tokens"] == 7
    assert summary["estimated_cost"] == {"CNY": 0.15} and summary["cost"] == {"CNY": 0.16}
    assert summary["cost_rows_by_basis"] == {"usage": 1, "estimate": 1}
    path = write_summary(tmp_path, summary | {"exit_reason": "done"})
    assert json.loads(path.read_text()) == summary | {"exit_reason": "done"}


def test_results_accept_journal_values_of_a_loose_type(tmp_path: Path) -> None:
    it = item(1)
    record = {"id": "id-1", "status": "ok", "content_hash": "h1", "attempts": "2", "cost": 1, "session_id": 5}
    rows = pq.read_table(write_results(tmp_path, [it], {"id-1": record}, [])).to_pylist()
    assert rows[0]["attempts"] == 2 and rows[0]["cost"] == 1.0 and rows[0]["session_id"] == "5"


def test_results_read_hand_edited_list_columns_and_old_journals_without_them(tmp_path: Path) -> None:
    utterances = [{"start_seconds": "1.5", "end_seconds": 2, "source_text": "hi", "text": "hello"}, None, "junk"]
    edited = {"id": "id-1", "status": "ok", "content_hash": "h1", "utterances": utterances, "notes": "one note"}
    as_json = {"id": "id-2", "status": "ok", "content_hash": "h2", "utterances": json.dumps(utterances[:1])}
    old = {"id": "id-3", "status": "ok", "content_hash": "h3", "attempts": "x"}  # no new columns; a bad number
    items = [item(1), item(2), item(3)]
    path = write_results(tmp_path, items, {"id-1": edited, "id-2": as_json, "id-3": old}, [])
    rows = {r["id"]: r for r in pq.read_table(path).to_pylist()}
    first = {"start_seconds": 1.5, "end_seconds": 2.0, "source_text": "hi", "text": "hello"}
    assert rows["id-1"]["utterances"] == [first]  # the null and the non-object elements are dropped
    assert rows["id-1"]["notes"] == ["one note"]  # a lone string is one note, not a list of characters
    assert rows["id-2"]["utterances"] == [first]
    assert rows["id-3"]["utterances"] == [] and rows["id-3"]["notes"] == [] and rows["id-3"]["response_ids"] == []
    assert rows["id-3"]["attempts"] is None  # unreadable: null, not a crash after the whole run
