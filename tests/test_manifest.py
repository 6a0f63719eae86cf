"""Manifests: CSV/TSV/JSONL/Parquet equivalence, streaming, ids, errors that name rows."""

from __future__ import annotations

import csv
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchqwen.errors import InputFileError, ItemError, ManifestError
from batchqwen.items import Item
from batchqwen.manifest import check_manifest, iter_items, missing_files, validate_item

ROWS: list[dict[str, Any]] = [
    {"id": "a", "audio": "clips/a.wav", "image": "img/1.jpg;img/2.jpg", "prompt": "Describe", "lang": "en"},
    {"id": "b", "audio": "clips/b.wav", "voice": "Ethan", "modalities": "text", "lang": "zh"},
    {"prompt": "Just text, no id", "instructions": "Be brief", "lang": None},
]


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None, delimiter: str = ",") -> Path:
    columns = columns or sorted({k for r in rows for k in r})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else r[c] for c in columns])
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = sorted({k for r in rows for k in r})
    table = pa.table({c: pa.array([r.get(c) for r in rows], type=pa.string()) for c in columns})
    pq.write_table(table, path)
    return path


def make_files(folder: Path) -> None:
    for name in ("clips/a.wav", "clips/b.wav", "img/1.jpg", "img/2.jpg"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x" * 10)


def test_csv_jsonl_parquet_tsv_give_the_same_items(tmp_path: Path) -> None:
    make_files(tmp_path)
    paths = [
        write_csv(tmp_path / "m.csv", ROWS),
        write_csv(tmp_path / "m.tsv", ROWS, delimiter="\t"),
        write_jsonl(tmp_path / "m.jsonl", ROWS),
        write_parquet(tmp_path / "m.parquet", ROWS),
    ]
    results = [list(iter_items(p)) for p in paths]
    assert len(results[0]) == 3
    for other in results[1:]:
        assert other == results[0]
    a, b, c = results[0]
    assert a.id == "a" and a.row == 1
    assert a.audio == tmp_path / "clips" / "a.wav"
    assert a.images == (tmp_path / "img" / "1.jpg", tmp_path / "img" / "2.jpg")
    assert a.prompt == "Describe" and a.passthrough == {"lang": "en"}
    assert b.voice == "Ethan" and b.modalities == ("text",)
    assert c.id.startswith("row-") and len(c.id) == 16
    assert c.instructions == "Be brief" and c.passthrough == {"lang": None}
    assert len({i.content_hash for i in results[0]}) == 3


def test_header_names_are_case_insensitive_and_trimmed_and_cells_empty_to_none(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(" ID ,AUDIO, Prompt ,Extra Col\nx, ,hello,\n", encoding="utf-8")
    (item,) = iter_items(path)
    assert item.id == "x" and item.audio is None and item.prompt == "hello"
    assert item.passthrough == {"Extra Col": None}


def test_jsonl_native_passthrough_values_and_list_images(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {
                "id": 7,
                "image": ["a.jpg", "b.jpg"],
                "score": 0.5,
                "ok": True,
                "n": 3,
                "modalities": ["text", "audio"],
            }
        ],
    )
    (item,) = iter_items(path)
    assert item.id == "7"
    assert item.images == (tmp_path / "a.jpg", tmp_path / "b.jpg")
    assert item.modalities == ("text", "audio")
    assert item.passthrough == {"score": 0.5, "ok": True, "n": 3}


def test_derived_ids_are_stable_across_reordering_and_content_based(tmp_path: Path) -> None:
    rows = [{"prompt": f"question {i}", "tag": str(i)} for i in range(5)]
    forward = {i.prompt: i.id for i in iter_items(write_csv(tmp_path / "f.csv", rows))}
    backward = {i.prompt: i.id for i in iter_items(write_csv(tmp_path / "b.csv", rows[::-1]))}
    assert forward == backward
    assert len(set(forward.values())) == 5
    # JSONL with a number where CSV has its text: the same row, the same id
    numeric = [{"prompt": "question 1", "tag": 1}]
    assert next(iter_items(write_jsonl(tmp_path / "n.jsonl", numeric))).id == forward["question 1"]
    changed = [{"prompt": "question 1", "tag": "other"}]
    assert next(iter_items(write_csv(tmp_path / "c.csv", changed))).id != forward["question 1"]


def test_content_hash_notices_a_changed_file_under_the_same_id(tmp_path: Path) -> None:
    make_files(tmp_path)
    path = write_csv(tmp_path / "m.csv", ROWS)
    before = {i.id: i.content_hash for i in iter_items(path)}
    assert before == {i.id: i.content_hash for i in iter_items(path)}
    (tmp_path / "clips" / "a.wav").write_bytes(b"longer content")
    after = {i.id: i.content_hash for i in iter_items(path)}
    assert after["a"] != before["a"]
    assert after["b"] == before["b"]


def test_relative_home_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    job = tmp_path / "job"
    job.mkdir()
    rows = [
        {"id": "rel", "audio": "sub/a.wav"},
        {"id": "home", "audio": "~/b.wav"},
        {"id": "abs", "audio": str(tmp_path / "c.wav")},
    ]
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    items = {i.id: i for i in iter_items(write_csv(job / "m.csv", rows))}
    assert items["rel"].audio == job / "sub" / "a.wav"
    assert items["home"].audio == home / "b.wav"
    assert items["abs"].audio == tmp_path / "c.wav"


def test_unicode_paths_and_ids(tmp_path: Path) -> None:
    folder = tmp_path / "数据 ünï"
    folder.mkdir()
    (folder / "声音.wav").write_bytes(b"x")
    path = write_csv(folder / "清单.csv", [{"id": "条目-1", "audio": "声音.wav", "prompt": "你好"}])
    (item,) = iter_items(path)
    assert item.id == "条目-1" and item.audio == folder / "声音.wav" and item.audio.exists()
    assert missing_files(item) == []
    summary = check_manifest(path)
    assert summary.rows == 1 and summary.rows_with_missing_files == 0


def test_passthrough_columns_kept_in_summary(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", ROWS, columns=["id", "prompt", "audio", "lang", "image"])
    summary = check_manifest(path)
    assert summary.passthrough_columns == ["lang"]
    assert summary.columns == ["id", "audio", "image", "prompt", "lang"]
    assert summary.rows == 3
    jsonl = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "a"}, {"prompt": "b", "z": 1}, {"prompt": "c", "y": 2}])
    assert check_manifest(jsonl).passthrough_columns == ["z", "y"]


def test_duplicate_ids_name_both_rows(tmp_path: Path) -> None:
    rows = [{"id": f"i{n}", "prompt": "p"} for n in range(1, 10)]
    rows[8]["id"] = "i3"  # rows 3 and 9
    path = write_csv(tmp_path / "m.csv", rows)
    with pytest.raises(ManifestError, match=r"id 'i3' appears on rows 3 and 9"):
        check_manifest(path)


def test_identical_rows_without_id_collide_with_a_hint(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "same"}, {"prompt": "other"}, {"prompt": "same"}])
    with pytest.raises(ManifestError, match=r"appears on rows 1 and 3.*add an id column"):
        check_manifest(path)


def test_no_input_column_at_all(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [{"id": "a", "voice": "Cherry", "note": "x"}])
    with pytest.raises(ManifestError, match="no input column"):
        check_manifest(path)


def test_whole_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        check_manifest(tmp_path / "nope.csv")
    (tmp_path / "m.xlsx").write_bytes(b"")
    with pytest.raises(ManifestError, match="unknown manifest type"):
        check_manifest(tmp_path / "m.xlsx")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match="empty"):
        check_manifest(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("id,prompt\n")
    with pytest.raises(ManifestError, match="no rows"):
        check_manifest(tmp_path / "header.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError, match="Parquet"):
        check_manifest(tmp_path / "broken.parquet")
    (tmp_path / "dup.csv").write_text("id,ID,prompt\na,b,c\n")
    with pytest.raises(ManifestError, match="column 'id' appears twice"):
        check_manifest(tmp_path / "dup.csv")


def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    lines = [json.dumps({"id": str(n), "prompt": "p"}) for n in range(1, 7)] + ['{"id": "7", "prompt": ']
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl: line 7 is not valid JSON"):
        list(iter_items(path))
    with pytest.raises(ManifestError, match="line 7"):
        check_manifest(path)
    path.write_text('{"id": "1", "prompt": "p"}\n\n["a", "list"]\n')
    with pytest.raises(ManifestError, match="line 3 is a JSON list, not an object"):
        list(iter_items(path))
    path.write_text('{"id": "1", "audio": 5}\n')
    with pytest.raises(ManifestError, match="line 1: column 'audio' must be text"):
        list(iter_items(path))


def test_jsonl_row_numbers_are_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "prompt": "p"}\n\n{"id": "b", "prompt": "q"}\n')
    assert [(i.id, i.row) for i in iter_items(path)] == [("a", 1), ("b", 3)]


def test_csv_too_many_cells_and_unnamed_column(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,prompt\na,p\nb,q,extra\n")
    with pytest.raises(ManifestError, match="row 2 has 3 cells but the header has 2 columns"):
        check_manifest(path)
    path.write_text("id,prompt,\na,p,\nb,q,oops\n")
    with pytest.raises(ManifestError, match="row 2 has a value in column 3"):
        list(iter_items(path))
    path.write_text("id,prompt,\na,p,\n")  # a trailing comma everywhere is harmless
    assert [i.id for i in iter_items(path)] == ["a"]


def test_bad_utf8_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"id,prompt\na,ok\nb,\xff\xfe bad\n")
    with pytest.raises(ManifestError, match="not valid UTF-8"):
        check_manifest(path)


def test_blank_rows_skipped_rows_without_input_listed(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("id,prompt,audio\na,hi,\n,,\nb,,\nc,,missing.wav\n")
    items = list(iter_items(path))
    assert [(i.id, i.row) for i in items] == [("a", 1), ("b", 3), ("c", 4)]
    summary = check_manifest(path)
    assert summary.rows == 3
    assert summary.rows_without_input == [3] and summary.rows_without_input_count == 1
    assert summary.rows_with_missing_files == 1
    assert summary.missing_file_examples == [(4, tmp_path / "missing.wav")]
    validate_item(items[0])
    with pytest.raises(ItemError, match=r"row 3 \(id 'b'\) has no input"):
        validate_item(items[1])
    with pytest.raises(InputFileError, match=r"row 4 .*missing\.wav"):
        validate_item(items[2])


def test_missing_files_helper(tmp_path: Path) -> None:
    (tmp_path / "here.jpg").write_bytes(b"x")
    item = Item(id="x", row=1, images=(tmp_path / "here.jpg", tmp_path / "gone.jpg"), audio=tmp_path)
    assert missing_files(item) == [tmp_path, tmp_path / "gone.jpg"]  # a folder is not a file


def test_limit(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [{"id": str(n), "prompt": "p"} for n in range(10)])
    assert [i.id for i in iter_items(path, limit=3)] == ["0", "1", "2"]
    assert list(iter_items(path, limit=0)) == []


def test_parquet_native_types_and_multiple_batches(tmp_path: Path) -> None:
    n = 10_000  # more than one iter_batches batch
    table = pa.table(
        {
            "ID": pa.array(range(n), type=pa.int64()),
            "prompt": pa.array([f"p{i}" for i in range(n)]),
            "score": pa.array([i / 2 for i in range(n)]),
            "image": pa.array([["a.jpg", "b.jpg"] if i == 5 else None for i in range(n)], type=pa.list_(pa.string())),
        }
    )
    path = tmp_path / "m.parquet"
    pq.write_table(table, path, row_group_size=3_000)
    items = list(iter_items(path))
    assert len(items) == n and items[-1].id == str(n - 1) and items[-1].row == n
    assert items[5].images == (tmp_path / "a.jpg", tmp_path / "b.jpg")
    assert items[3].passthrough == {"score": 1.5}
    assert check_manifest(path).rows == n


def write_big_csv(path: Path, rows: int) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "note"])
        for n in range(rows):
            writer.writerow([f"item-{n}", f"Please describe sample number {n} in detail", "x" * 40])
    return path


def test_streaming_a_large_csv_keeps_memory_small(tmp_path: Path) -> None:
    rows = 100_000
    path = write_big_csv(tmp_path / "big.csv", rows)
    assert path.stat().st_size > 8_000_000

    items = iter_items(path)
    # tracemalloc slows Python down ~20x: trace the first 5,000 items (about 400 kB of the file), which
    # is enough to see that nothing grows with the rows read; then count the rest untraced.
    tracemalloc.start()
    try:
        kept = [next(items) for _ in range(3)]
        for _ in range(5_000 - 3):
            next(items)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    count = 5_000 + sum(1 for _ in items)
    assert [i.row for i in kept] == [1, 2, 3] and kept[0].id == "item-0" and count == rows
    assert peak < 300_000, f"iter_items peaked at {peak} bytes over 5,000 rows"


def test_check_manifest_memory_is_a_few_bytes_a_row(tmp_path: Path) -> None:
    rows = 10_000
    path = write_big_csv(tmp_path / "big.csv", rows)
    check_manifest(write_big_csv(tmp_path / "warm-up.csv", 10))  # first-call imports are not per row
    tracemalloc.start()
    try:
        summary = check_manifest(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.rows == rows
    # 16 bytes a row for duplicate detection (the id strings themselves are not kept); holding the
    # Items or the ids would take well over 100 bytes a row
    assert peak < 16 * rows * 2 + 300_000, f"check_manifest peaked at {peak} bytes"


def test_unreadable_manifest(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", ROWS)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(ManifestError, match="not readable"):
            check_manifest(path)
    finally:
        path.chmod(0o644)
