"""Manifests as people write them (delimiters, BOM, CRLF, spreadsheets' trailing cells, pandas), and the
locations and trust rules a manifest's media cells are read with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from media_factory import write_audio

from batchqwen.cli import main
from batchqwen.errors import ManifestError, MediaRefused, UsageError
from batchqwen.manifest import ManifestOptions, check_manifest, detect_delimiter, iter_items, validate_item
from batchqwen.storage.fetch import parse_size
from batchqwen.storage.locations import (
    Base,
    Remote,
    address_refusal,
    display_url,
    parse_location,
    resolve_media,
)


def _results(out: Path) -> list[dict[str, Any]]:
    return pq.read_table(out / "results.parquet").to_pylist()


def test_semicolon_csv_with_bom_crlf_and_spaced_header_runs_as_the_comma_version(tmp_path: Path) -> None:
    write_audio(tmp_path / "a.wav", seconds=1.0, rate=16_000, channels=1)
    write_audio(tmp_path / "b.wav", seconds=1.5, rate=16_000, channels=1, seed=1)
    comma = tmp_path / "comma.csv"
    comma.write_text('id,audio,prompt\nx,a.wav,Describe it\ny,b.wav,"Hello; world"\n', encoding="utf-8")
    semicolon = tmp_path / "semicolon.csv"
    semicolon.write_bytes('\ufeffID; Audio ;Prompt\r\nx;a.wav;Describe it\r\ny;b.wav;"Hello; world"\r\n'.encode())
    outs = []
    for manifest in (comma, semicolon):
        out = tmp_path / f"out-{manifest.stem}"
        result = CliRunner().invoke(main, ["run", str(manifest), "--simulate", "--out", str(out)])
        assert result.exit_code == 0, result.output
        outs.append(_results(out))
    stable = ("id", "row", "status", "input_transcript", "output_text", "output_transcript", "usage_total_tokens")
    assert [[r[c] for c in stable] for r in outs[0]] == [[r[c] for c in stable] for r in outs[1]]
    assert [r["status"] for r in outs[1]] == ["ok", "ok"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [("id,audio", ","), ("id;audio;prompt", ";"), ("id\taudio", "\t"), ('"a;b",c', ","), ("prompt", ",")],
)
def test_delimiter_is_detected_from_the_header(header: str, expected: str) -> None:
    assert detect_delimiter(header) == expected


def test_delimiter_can_be_forced(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id|prompt\na|hello, there\n")
    items = list(iter_items(manifest, options=ManifestOptions(delimiter="|")))
    assert [(i.id, i.prompt) for i in items] == [("a", "hello, there")]


def test_trailing_empty_cells_are_accepted_and_a_row_that_does_not_fit_is_named(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,prompt\na,hello,\nb,there,,\n")
    assert [i.prompt for i in iter_items(manifest)] == ["hello", "there"]
    manifest.write_text("id,prompt\na,hello\nb,one,two\n")
    with pytest.raises(ManifestError) as error:
        list(iter_items(manifest))
    assert str(error.value) == (
        "m.csv: row 2 has 3 cells but the header has 2 columns (id, prompt; delimiter comma): found 'b', 'one', 'two'"
    )


def test_an_encoding_error_names_its_row(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"id,prompt\na,caf\xe9\n")
    with pytest.raises(ManifestError, match=r"m\.csv: row 1 \(line 2\) is not valid UTF-8"):
        list(iter_items(manifest))
    manifest.write_bytes(b"id,pr\xe9mpt\na,x\n")
    with pytest.raises(ManifestError, match=r"the header \(line 1\) is not valid UTF-8"):
        list(iter_items(manifest))


def test_a_column_that_matches_none_is_named(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,Audio File,Promt\na,x.wav,hi\n")
    with pytest.raises(ManifestError) as error:
        check_manifest(manifest)
    message = str(error.value)
    assert "no column matches one (found: 'id', 'Audio File', 'Promt')" in message
    assert "'Audio File' (did you mean 'audio'?)" in message and "'Promt' (did you mean 'prompt'?)" in message


def test_pandas_index_is_not_carried_into_the_results(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": ["a", "b"], "prompt": ["one", "two"], "team": ["x", "y"]}, index=[10, 20])
    manifest = tmp_path / "m.parquet"
    frame.to_parquet(manifest)
    assert "__index_level_0__" in pq.read_schema(manifest).names
    summary = check_manifest(manifest)
    assert summary.passthrough_columns == ["team"]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(manifest), "--simulate", "--out", str(out), "--model",
                                       "qwen3-omni-flash-realtime"])  # fmt: skip
    assert result.exit_code == 0, result.output
    names = pq.read_schema(out / "results.parquet").names
    assert "team" in names and not [n for n in names if "index_level" in n]


# ----------------------------------------------------------------------------- locations and trust


def test_locations_parse() -> None:
    assert parse_location("s3://bucket/dir/a.wav") == Remote("s3://bucket/dir/a.wav")
    assert parse_location("file:///tmp/x%20y.csv") == Path("/tmp/x y.csv")
    assert parse_location("~/m.csv") == Path("~/m.csv").expanduser()
    assert parse_location("C:/data/m.csv") == Path("C:/data/m.csv")  # a drive letter is not a scheme
    with pytest.raises(UsageError, match="unsupported scheme 'ftp'"):
        parse_location("ftp://host/m.csv")
    with pytest.raises(UsageError, match="no bucket"):
        parse_location("s3:///key")


def test_display_url_hides_credentials_and_signatures() -> None:
    url = "https://user:pa55@host.example:8443/a/b.wav?X-Amz-Signature=abc&X-Amz-Credential=AKIA#frag"
    assert display_url(url) == "https://host.example:8443/a/b.wav?…"
    assert str(Remote(url)) == "https://host.example:8443/a/b.wav?…"
    assert Remote(url).suffix == ".wav"
    raw = Remote("s3://bucket/dir/a b%20c?.wav")  # bucket keys are taken as written, not URL-decoded
    assert (raw.host, raw.key, raw.fs_path, str(raw)) == (
        "bucket",
        "dir/a b%20c?.wav",
        "bucket/dir/a b%20c?.wav",
        "s3://bucket/dir/a b%20c?.wav",
    )


def test_media_of_a_local_manifest_resolve_as_before(tmp_path: Path) -> None:
    base = Base(folder=tmp_path)
    assert resolve_media("a.wav", base) == tmp_path / "a.wav"
    assert resolve_media("/abs/a.wav", base) == Path("/abs/a.wav")
    assert resolve_media("file:///abs/a.wav", base) == Path("/abs/a.wav")
    assert resolve_media("s3://b/k.wav", base) == Remote("s3://b/k.wav")


def test_media_of_a_remote_manifest_stay_remote() -> None:
    base = Base(folder=Path("/tmp"), remote=Remote("s3://bucket/jobs/m.csv"))
    assert resolve_media("a.wav", base) == Remote("s3://bucket/jobs/a.wav")
    assert resolve_media("sub/../b.wav", base) == Remote("s3://bucket/jobs/b.wav")
    assert resolve_media("../../../c.wav", base) == Remote("s3://bucket/c.wav")  # no way out of the bucket
    web = Base(remote=Remote("https://host/share/m.csv?sig=1"))
    assert resolve_media("x y.wav", web) == Remote("https://host/share/x%20y.wav")
    for local in ("/etc/passwd", "~/.aws/credentials", "file:///etc/hostname"):
        with pytest.raises(MediaRefused, match=r"refused: the manifest comes from s3://bucket/jobs/m\.csv"):
            resolve_media(local, base)
    allowed = Base(folder=Path("/tmp"), remote=Remote("s3://bucket/m.csv"), allow_local_media=True)
    assert resolve_media("/etc/passwd", allowed) == Path("/etc/passwd")


def test_a_refused_file_is_the_rows_error_not_the_manifests(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,audio,image\na,/etc/passwd,ok.png;/etc/shadow\n")
    item = next(iter(iter_items(manifest, options=ManifestOptions(origin="https://share.example/m.csv"))))
    assert item.audio is None and item.images == (Remote("https://share.example/ok.png"),)
    with pytest.raises(MediaRefused, match=r"row 1 \(id 'a'\): local file /etc/passwd refused.*; local file /etc"):
        validate_item(item)


@pytest.mark.parametrize(
    ("address", "refused"),
    [("169.254.169.254", "link-local"), ("127.0.0.1", "loopback"), ("10.1.2.3", "private"),
     ("192.168.0.1", "private"), ("172.16.5.4", "private"), ("100.64.0.1", "non-public"), ("::1", "loopback"),
     ("::ffff:169.254.169.254", "link-local"), ("fd00::1", "private"), ("0.0.0.0", "private"),
     ("224.0.0.1", "non-public"), ("8.8.8.8", None), ("2606:4700::1111", None)],
)  # fmt: skip
def test_address_rules(address: str, refused: str | None) -> None:
    reason = address_refusal(address)
    assert (reason is None) if refused is None else (reason is not None and refused in reason)


def test_cache_size_parses() -> None:
    assert parse_size("2G") == 2 << 30 and parse_size("500M") == 500 << 20 and parse_size("1024") == 1024
    assert parse_size("1.5GiB") == int(1.5 * (1 << 30))
    with pytest.raises(UsageError):
        parse_size("lots")


def test_gcs_filesystem_is_made_with_its_options() -> None:
    """gs:// is reached through pyarrow's GcsFileSystem (no GCS server here to test against: made, not used)."""
    import pyarrow.fs as pafs

    from batchqwen.storage.fetch import Storage, StorageOptions

    made = Storage(StorageOptions(timeout=2.0, attempts=3)).filesystem(Remote("gs://bucket/a.wav"))
    assert isinstance(made, pafs.GcsFileSystem)


def test_conversation_turns_follow_the_trust_rules(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"id": "c", "turns": [{"audio": "/etc/passwd"}, {"audio": "s3://b/k.wav"}, {"prompt": "hi"}]}\n'
    )
    item = next(iter(iter_items(manifest, options=ManifestOptions(origin="s3://b/jobs/m.jsonl"))))
    with pytest.raises(MediaRefused) as refused:
        validate_item(item)
    assert "local file /etc/passwd refused" in str(refused.value)
    assert "s3://b/k.wav: media in a bucket or behind a URL are not supported in conversation turns yet" in str(
        refused.value
    )
    local = next(iter(iter_items(manifest)))  # the user's own manifest: the local file is a turn's audio
    assert local.turns[0].audio == Path("/etc/passwd")
