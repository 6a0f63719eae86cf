"""The media corpus (tests/media_corpus.py) through `batchqwen estimate` and `batchqwen run --simulate`,
one run each: for every file the estimate's audio seconds are within 0.1 s of what the simulator
counted as received (its own record, stats.received), the image counts agree, rotated photos and the
rotated video arrive portrait; the fallbacks are taken where headers lie and only there.
"""

from __future__ import annotations

import io
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from media_corpus import CorpusFile, centre_voice, encode_audio, make_corpus, write_animated, write_manifest
from media_factory import write_huge_png_header, write_image

from batchqwen import images as image_plan
from batchqwen import media, probe
from batchqwen.cli import main
from batchqwen.errors import MediaError
from batchqwen.items import Item
from batchqwen.sim import server as sim_server


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[CorpusFile]]:
    folder = tmp_path_factory.mktemp("corpus")
    files = make_corpus(folder / "media")
    return write_manifest(folder / "corpus.csv", files), files


@pytest.fixture(scope="module")
def estimated(corpus: tuple[Path, list[CorpusFile]]) -> dict[str, dict[str, Any]]:
    manifest, files = corpus
    out = manifest.parent / "estimate"
    result = CliRunner().invoke(main, ["estimate", str(manifest), "--out", str(out)])
    assert result.exit_code == 0, result.output
    fallbacks = sum(f.fallback for f in files)
    assert f"Audio length of {fallbacks:,} rows measured past a missing or wrong header" in result.output
    return {row["id"]: row for row in pq.read_table(out / "estimate.parquet").to_pylist()}


def run_simulated(manifest: Path, out: Path, *options: str) -> tuple[int, dict[str, dict[str, Any]], dict[str, Any]]:
    """`batchqwen run --simulate`: its exit code, the result rows by id and the simulator's own record of
    what each session received (stats.received, by session id)."""
    started: list[sim_server.Simulator] = []

    class Recorded(sim_server.Simulator):
        async def start(self) -> None:
            started.append(self)
            await super().start()

    patch = pytest.MonkeyPatch()
    patch.setattr(sim_server, "Simulator", Recorded)  # the runner imports it when --simulate starts it
    try:
        result = CliRunner().invoke(main, ["run", str(manifest), "--simulate", "--out", str(out), "-q", *options])
    finally:
        patch.undo()
    assert result.exit_code in (0, 1), result.output
    assert len(started) == 1
    rows = {row["id"]: row for row in pq.read_table(out / "results.parquet").to_pylist()}
    return result.exit_code, rows, dict(started[0].stats.received)


@pytest.fixture(scope="module")
def simulated(corpus: tuple[Path, list[CorpusFile]]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """`run --simulate` on the corpus: the result rows by id and the simulator's record by session id."""
    manifest, _ = corpus
    code, rows, received = run_simulated(manifest, manifest.parent / "run")
    assert code == 0, [row["error_message"] for row in rows.values() if row["status"] != "ok"]
    return rows, received


def test_estimate_agrees_with_what_the_simulator_received(
    corpus: tuple[Path, list[CorpusFile]],
    estimated: dict[str, dict[str, Any]],
    simulated: tuple[dict[str, dict[str, Any]], dict[str, Any]],
) -> None:
    _, files = corpus
    rows, received = simulated
    assert len(files) >= 40
    for f in files:
        est, row = estimated[f.name], rows[f.name]
        assert est["problem"] is None, (f.name, est["problem"])
        assert row["status"] == "ok", (f.name, row["error_message"])
        got = received[row["session_id"]]
        assert abs(est["audio_seconds"] - got.audio_seconds) <= 0.1, (f.name, est["audio_seconds"], got.audio_seconds)
        if f.seconds is not None:  # and both are the file's real length
            assert abs(got.audio_seconds - f.seconds) <= 0.1, (f.name, got.audio_seconds, f.seconds)
        assert est["image_count"] == len(got.images) == row["image_count"] == f.images, (f.name, est, got.images)
        if f.portrait:
            assert got.images and all(h > w for w, h in got.images), (f.name, got.images)
        elif got.images and f.column == "video":
            assert all(w > h for w, h in got.images), (f.name, got.images)


def test_fallbacks_only_where_headers_lie(
    corpus: tuple[Path, list[CorpusFile]], estimated: dict[str, dict[str, Any]]
) -> None:
    _, files = corpus
    for f in files:
        method = estimated[f.name]["duration_method"]
        if f.column == "image" or (f.column == "video" and f.seconds is None):
            assert method == "silence", (f.name, method)
        elif f.fallback:
            assert method in ("file_size", "packet_scan"), (f.name, method)
            assert estimated[f.name]["probe_bytes_read"] > 0
            assert any("duration from" in note for note in estimated[f.name]["notes"]), f.name
        else:
            assert method == "header", (f.name, method)


def test_notes_say_what_was_decided(
    estimated: dict[str, dict[str, Any]], simulated: tuple[dict[str, dict[str, Any]], dict[str, Any]]
) -> None:
    rows, _ = simulated
    assert any("rotated 90° clockwise" in n for n in rows["mov_rotated_90"]["notes"])
    assert any("first of 6 frames sent" in n for n in rows["animated_gif"]["notes"])
    assert any("first of 6 frames sent" in n for n in estimated["animated_gif"]["notes"])
    assert any("first of 3 frames sent" in n for n in rows["tiff_pages"]["notes"])
    assert any("cut into 4 tiles" in n for n in rows["panorama"]["notes"])
    assert any("2 of 4 tiles sent, 2 dropped" in n for n in estimated["panorama"]["notes"])
    assert any("ITU-R BS.775" in n for n in rows["surround_5_1"]["notes"])
    assert any("0xFFFFFFFF" in n for n in estimated["pipe_44k"]["notes"])
    assert any("cut off" in n for n in estimated["cut_off"]["notes"])
    assert estimated["mp4_h264"]["notes"] == []
    padded = "1.000 s of silence sent as the audio: the item has none (--pad-silence)"
    assert padded in rows["png16"]["notes"] and padded in estimated["png16"]["notes"]


def test_max_cost_on_pipe_wavs_is_not_refused(tmp_path: Path) -> None:
    from media_corpus import as_pipe_wav, write_pcm_wav

    folder = tmp_path / "media"
    folder.mkdir()
    files = [
        CorpusFile(f"pipe{n}", "audio", as_pipe_wav(write_pcm_wav(folder / f"p{n}.wav", seconds=3.2)), 3.2)
        for n in range(2)
    ]
    manifest = write_manifest(tmp_path / "pipes.csv", files)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(manifest), "--simulate", "--max-cost", "1", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "estimate.parquet").to_pylist()
    assert [round(row["audio_seconds"], 3) for row in rows] == [3.2, 3.2]
    assert {row["duration_method"] for row in rows} == {"file_size"}


def test_centre_voice_keeps_its_level(tmp_path: Path) -> None:
    path = encode_audio(
        tmp_path / "c.flac", container_format="flac", codec="flac", seconds=1.0, rate=16_000, layout="5.1",
        signal=centre_voice(1.0, 16_000),
    )  # fmt: skip
    pcm, notes = media.decode_audio_noted(path)
    mixed = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768
    centre = centre_voice(1.0, 16_000)[2].astype(np.float64)
    level = 20 * math.log10(np.sqrt(np.mean(mixed**2)) / np.sqrt(np.mean(centre**2)))
    assert abs(level) < 0.5, level  # FFmpeg's default matrix put it 11 dB down
    assert notes and "BS.775" in notes[0]


def test_image_frames_all_stops_at_the_allowance(tmp_path: Path) -> None:
    gif = write_animated(tmp_path / "a.gif", 8)
    sound = encode_audio(tmp_path / "a.flac", container_format="flac", codec="flac", seconds=3.0, rate=16_000)
    item = Item(id="x", row=1, audio=sound, images=(gif,))
    prepared = media.prepare_item(item, image_frames="all")
    assert len(prepared.images) == 4  # 3 s of audio: floor(3) + 1 images on Omni
    assert any("4 of 8 frames sent, 4 dropped" in n for n in prepared.notes)
    assert len(media.prepare_item(item, image_frames="all", images_per_second=2.0).images) == 7
    assert len(media.prepare_item(item).images) == 1
    digests = {image.jpeg for image in prepared.images}
    assert len(digests) == 4  # four different frames, not the first one four times
    # the estimate counts the same, from the header alone
    from batchqwen.cost import OutputAssumption
    from batchqwen.estimate import estimate_item

    common: dict[str, Any] = {
        "default_model": "qwen3-omni-flash-realtime",
        "modalities": ("text", "audio"),
        "instructions": None,
        "output": OutputAssumption(output_seconds_per_item=8.0),
        "pad_silence_seconds": 1.0,
    }
    every = estimate_item(item, image_frames="all", **common)
    assert every.image_count == 4 and every.duration_method == "header"
    assert any("4 of 8 frames sent, 4 dropped" in n for n in every.notes)
    first = estimate_item(item, **common)
    assert first.image_count == 1 and any("first of 8 frames sent" in n for n in first.notes)


def test_heic_is_upright_and_unreadable_formats_are_named(tmp_path: Path) -> None:
    from media_corpus import write_heic

    heic = write_heic(tmp_path / "p.heic", 320, 240, exif_orientation=6)
    sent = media.prepare_image(heic)
    with Image.open(io.BytesIO(sent.jpeg)) as image:
        assert image.size == (240, 320)
        rgb = image.convert("RGB")
        # the stored top-left red mark is at the top right once turned 90° clockwise
        r, g, b = rgb.getpixel((235, 4))  # type: ignore[misc]
        assert r > 200 and g < 80 and b < 80
    # in a fresh process the HEIF plugin is loaded on the first file Pillow cannot identify
    code = "import sys, pathlib; from batchqwen import media; print(media.probe_image_size(pathlib.Path(sys.argv[1])))"
    done = subprocess.run([sys.executable, "-c", code, str(heic)], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "(240, 320)", done.stderr
    fake = tmp_path / "photo.jxl"
    fake.write_bytes(b"\xff\x0a" + b"\0" * 100)
    with pytest.raises(MediaError, match=r"JPEG XL.*convert it to JPEG or PNG"):
        media.prepare_image(fake)


def write_bad_exif_jpeg(path: Path) -> Path:
    """A JPEG whose EXIF names a tag with data past its end: Pillow warns "Tag data larger than file"."""
    ifd = (
        b"II*\x00" + struct.pack("<IH", 8, 2)
        + struct.pack("<HHII", 0x0112, 3, 1, 6) + struct.pack("<HHII", 0x010F, 2, 200, 5000) + b"\0\0\0\0"
    )  # fmt: skip
    Image.new("RGB", (64, 48), (1, 2, 3)).save(path, exif=b"Exif\x00\x00" + ifd)
    return path


def test_pillow_warnings_never_reach_the_terminal(tmp_path: Path) -> None:
    """Outside pytest (whose filters turn warnings into errors): a decompression-bomb size is the row's
    plain error, a corrupt EXIF block the row's note, and nothing of Pillow's reaches stderr."""
    big = write_huge_png_header(tmp_path / "big.png", 12_000, 9_000)  # 108 MP: Pillow warns, under 2x errors
    bad = write_bad_exif_jpeg(tmp_path / "bad.jpg")
    code = (
        "import sys; from pathlib import Path; from batchqwen import media; from batchqwen.items import Item\n"
        "try:\n    media.prepare_image(Path(sys.argv[1]))\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
        "item = Item(id='x', row=1, images=(Path(sys.argv[2]),))\n"
        "print(media.prepare_item(item, pad_silence_seconds=1.0).notes)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code, str(big), str(bad)], capture_output=True, text=True, timeout=60
    )
    lines = done.stdout.splitlines()
    assert lines[0].startswith("MediaError image too large"), done.stdout
    assert "Pillow: Tag data larger than file" in lines[1], done.stdout
    assert done.stderr == "", done.stderr


def test_thin_strip_refused_and_tiles_even() -> None:
    with pytest.raises(ValueError, match="too thin"):
        image_plan.tile_boxes(5000, 4)
    boxes = image_plan.tile_boxes(20_000, 100)
    assert len(boxes) == 11 and boxes[0][0] == 0 and boxes[-1][2] == 20_000
    assert image_plan.tile_boxes(4000, 3000) == [(0, 0, 4000, 3000)]
    assert len(image_plan.tile_boxes(100, 20_000)) == 11


def test_probe_works_on_file_objects_and_counts_bytes(corpus: tuple[Path, list[CorpusFile]]) -> None:
    _, files = corpus
    by_name = {f.name: f for f in files}
    with by_name["pipe_44k"].path.open("rb") as handle:
        measured = probe.probe_audio(handle)
    assert measured.method == "file_size" and abs(measured.seconds - 3.0) < 1e-3 and measured.bytes_read
    with by_name["adts_aac"].path.open("rb") as handle:
        scanned = probe.probe_audio(handle)
    assert scanned.method == "packet_scan" and abs(scanned.seconds - 4.0) < 0.1
    assert scanned.bytes_read >= by_name["adts_aac"].path.stat().st_size  # the packets are read through


def test_write_image_helper_still_portrait(tmp_path: Path) -> None:
    path = write_image(tmp_path / "r.jpg", 320, 240, exif_orientation=6)
    assert media.probe_image_size(path) == (240, 320)


def test_silent_video_on_livetranslate_gets_silence_under_its_frames(
    tmp_path: Path, corpus: tuple[Path, list[CorpusFile]]
) -> None:
    """LiveTranslate refuses more than 2 images a second of audio: a video with no sound gets silence as
    long as itself (not the 1 s default), in the estimate and the run alike, and no frame is refused."""
    _, files = corpus
    silent = next(f for f in files if f.name == "mp4_no_audio")
    manifest = write_manifest(tmp_path / "m.csv", [silent])
    model = ["--model", "qwen3-livetranslate-flash-realtime", "--max-cost", "5", "--video-fps", "2"]
    _, rows, received = run_simulated(manifest, tmp_path / "o", *model)
    est = pq.read_table(tmp_path / "o" / "estimate.parquet").to_pylist()[0]
    row = rows["mp4_no_audio"]
    # silence has nothing to translate (the row fails for that), but every frame was taken
    assert "no speech" in (row["error_message"] or ""), row["error_message"]
    assert len(received) == 1  # one session (a failed row keeps no session id)
    got = next(iter(received.values()))
    assert abs(got.audio_seconds - 3.0) < 0.05 and abs(est["padded_silence_seconds"] - 3.0) < 0.05
    assert any("silence sent under a video with no sound" in note for note in est["notes"])
    assert est["image_count"] == len(got.images) == 6  # 3 s at 2 frames a second: 1 s of silence takes 3


def test_probe_video_on_a_file_object(corpus: tuple[Path, list[CorpusFile]]) -> None:
    _, files = corpus
    recorder = next(f for f in files if f.name == "mediarecorder_video")
    with recorder.path.open("rb") as handle:
        probed = media.probe_video(handle)
    assert probed.duration_method == "packet_scan" and len(probed.frame_times) == 4
    assert probed.bytes_read == recorder.path.stat().st_size


def test_rotated_video_frames_are_turned_the_right_way(corpus: tuple[Path, list[CorpusFile]]) -> None:
    """The MOV's display matrix says "turn 90° clockwise" (a phone held upright): the red mark stored at
    the top left of each frame must arrive at the top right."""
    _, files = corpus
    rotated = next(f for f in files if f.name == "mov_rotated_90")
    read = media.read_video(rotated.path)
    assert read.frames and all(frame.height > frame.width for frame in read.frames)
    with Image.open(io.BytesIO(read.frames[0].jpeg)) as image:
        rgb = image.convert("RGB")
        r, g, b = rgb.getpixel((image.width - 3, 3))  # type: ignore[misc]
        r2, _, _ = rgb.getpixel((3, 3))  # type: ignore[misc]
    assert r > 200 and g < 80 and b < 80 and r2 < 100


def test_the_flac_is_24_bit_96_khz(corpus: tuple[Path, list[CorpusFile]]) -> None:
    _, files = corpus
    flac = next(f for f in files if f.name == "flac_24_96").path.read_bytes()
    info = int.from_bytes(flac[18:21], "big")  # STREAMINFO: 20 bits rate, 3 bits channels - 1, 5 bits depth - 1
    assert info >> 4 == 96_000 and ((info & 1) << 4 | flac[21] >> 4) + 1 == 24
