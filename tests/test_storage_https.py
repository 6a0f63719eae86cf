"""HTTPS media from a local server whose certificate a test CA signed: retries, errors, address rules."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from media_factory import write_audio, write_image, write_video
from storage_servers import AUDIT, MediaServer
from test_storage_s3 import wav_bytes

from batchqwen.cli import main
from batchqwen.errors import MediaRefused
from batchqwen.storage import http as guard
from batchqwen.storage.fetch import Storage, StorageOptions
from batchqwen.storage.locations import Remote


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    files = {"a.wav": wav_bytes(1.0), "b.wav": wav_bytes(1.2, tone=550), "long.wav": wav_bytes(6.0, tone=330)}
    media = MediaServer(files, ca_folder=tmp_path_factory.mktemp("ca"), stall_seconds=2.0)
    try:
        yield media
    finally:
        media.close()


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in pq.read_table(out / "results.parquet").to_pylist()}


def test_slow_and_dropping_servers_are_retried_and_a_404_is_the_rows_error(server: MediaServer, tmp_path: Path) -> None:
    base = server.base
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "id,audio\n"
        f"slow,{base}/slow-once/a.wav\n"
        f"dropped,{base}/drop-once/b.wav?X-Amz-Signature=secret-signature\n"
        f"missing,{base}/nothing-here.wav?token=secret-token\n"
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["run", str(manifest), "--simulate", "--out", str(out), "--ca-bundle", str(server.ca_file),
         "--allow-private-urls", "--fetch-timeout", "0.5"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    rows = _rows(out)
    assert rows["slow"]["status"] == "ok" and rows["slow"]["input_audio_seconds"] == pytest.approx(1.0)
    assert rows["dropped"]["status"] == "ok" and rows["dropped"]["input_audio_seconds"] == pytest.approx(1.2)
    assert server.hits["/slow-once/a.wav"] >= 2 and server.hits["/drop-once/b.wav"] >= 2  # retried
    assert rows["missing"]["error_type"] == "input_file"
    assert rows["missing"]["error_message"] == f"row 3 (id 'missing'): not found (404): {base}/nothing-here.wav?…"
    everything = result.output.encode() + b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert b"secret-signature" not in everything and b"secret-token" not in everything


def test_the_ca_must_be_trusted(server: MediaServer, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,audio\na,{server.base}/a.wav\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["run", str(manifest), "--simulate", "--out", str(out), "--allow-private-urls", "--fetch-attempts", "1"]
    )
    assert result.exit_code == 1, result.output
    row = _rows(out)["a"]
    assert row["error_type"] == "fetch" and "CERTIFICATE_VERIFY_FAILED" in row["error_message"]


def test_loopback_urls_are_refused_without_the_flag_and_nothing_is_sent(server: MediaServer, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,audio\na,{server.base}/never.wav\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(manifest), "--simulate", "--out", str(out)])
    assert result.exit_code == 1
    row = _rows(out)["a"]
    assert row["error_type"] == "refused"
    assert (
        "127.0.0.1 is a loopback address, which URL media may not reach (pass --allow-private-urls)"
        in (row["error_message"])
    )
    assert server.hits["/never.wav"] == 0


def test_the_resolved_address_is_checked_not_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A public-looking name that resolves to the metadata address is refused before any socket opens."""
    real = socket.getaddrinfo
    connects: list[Any] = []

    def resolve(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "images.example.com":
            return real("169.254.169.254", *args, **kwargs)
        return real(host, *args, **kwargs)

    def audit(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect":
            connects.append(args[1])

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    AUDIT.append(audit)
    try:
        storage = Storage(StorageOptions(attempts=1))
        with pytest.raises(MediaRefused, match=r"images\.example\.com resolves to 169\.254\.169\.254, a link-local"):
            storage.download(Remote("https://images.example.com/a.wav"), Path("/nonexistent/never"))
    finally:
        AUDIT.remove(audit)
    assert not connects


def test_redirects_are_followed_only_within_the_rules(
    server: MediaServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The test server is on loopback, so loopback is let through here; every other non-public address
    keeps the real rule, checked again on the redirect's own connection."""
    rule = guard.address_refusal  # the connection guard's own lookup (batchqwen/storage/http.py)
    monkeypatch.setattr(guard, "address_refusal", lambda address: None if address == "127.0.0.1" else rule(address))
    storage = Storage(StorageOptions(ca_bundle=server.ca_file, attempts=1))
    target = tmp_path / "a.wav"
    storage.download(Remote(f"{server.base}/redirect?to={server.base}/a.wav"), target)
    assert target.read_bytes()[:4] == b"RIFF"
    with pytest.raises(MediaRefused, match=r"169\.254\.169\.254 is a link-local"):
        storage.download(Remote(f"{server.base}/redirect?to=http://169.254.169.254/latest/meta-data/"), target)
    storage.close()


def test_estimate_of_https_media_reads_ranges(server: MediaServer, tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,audio\nlong,{server.base}/ranged/long.wav\n")
    result = CliRunner().invoke(
        main,
        ["estimate", str(manifest), "--out", str(tmp_path / "e"), "--ca-bundle", str(server.ca_file),
         "--allow-private-urls"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    row = pq.read_table(tmp_path / "e" / "estimate.parquet").to_pylist()[0]
    assert row["audio_seconds"] == pytest.approx(6.0)
    assert server.hits["/ranged/long.wav"] == 1  # one ranged GET of 4 KiB said it all


def test_remote_estimate_equals_the_local_one(tmp_path: Path) -> None:
    """MP3, MP4 and JPEG probed through ranged reads say what the same files say on disk."""
    files = {
        "s.mp3": write_audio(tmp_path / "s.mp3", seconds=2.0).read_bytes(),
        "v.mp4": write_video(tmp_path / "v.mp4", seconds=2.0).read_bytes(),
        "p.jpg": write_image(tmp_path / "p.jpg", 800, 600, exif_orientation=6).read_bytes(),
    }
    media = MediaServer(files, ca_folder=tmp_path)
    try:
        rows = "id,audio,video,image\nm,{0}s.mp3,,\nv,,{0}v.mp4,\ni,,,{0}p.jpg\n"
        (tmp_path / "local.csv").write_text(rows.format(""))
        (tmp_path / "remote.csv").write_text(rows.format(f"{media.base}/"))
        estimates = []
        for name in ("local", "remote"):
            result = CliRunner().invoke(
                main,
                ["estimate", str(tmp_path / f"{name}.csv"), "--out", str(tmp_path / name), "--ca-bundle",
                 str(media.ca_file), "--allow-private-urls"],
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            estimates.append(pq.read_table(tmp_path / name / "estimate.parquet").drop_columns(["problem"]).to_pylist())
        assert estimates[0] == estimates[1]
        assert [r["image_count"] for r in estimates[1]] == [0, 2, 1]
    finally:
        media.close()


def test_a_manifest_behind_a_url(server: MediaServer, tmp_path: Path) -> None:
    """Its relative media come from its own folder on the site; a local path in it is refused."""
    server.files["m.csv"] = b"id,audio\nnear,a.wav\nlocal,/etc/passwd\n"
    out = str(tmp_path / "out")
    result = CliRunner().invoke(
        main,
        ["run", f"{server.base}/jobs/m.csv?sig=secret-sig", "--simulate", "--out", out, "--ca-bundle",
         str(server.ca_file), "--allow-private-urls"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    rows = _rows(Path(out))
    assert rows["near"]["status"] == "ok" and server.hits["/jobs/a.wav"] == 1
    assert rows["local"]["error_type"] == "refused"
    assert f"the manifest comes from {server.base}/jobs/m.csv?…" in rows["local"]["error_message"]
    assert "secret-sig" not in result.output


def test_ssl_cert_file_is_honoured(server: MediaServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
    storage = Storage(StorageOptions(allow_private_urls=True, attempts=1))
    with storage.open_ranged(Remote(f"{server.base}/a.wav")) as handle:
        assert handle.read(4) == b"RIFF" and handle.size() == len(wav_bytes(1.0))
    storage.close()
