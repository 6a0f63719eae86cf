"""The command line with every model family: the demo and a translation job against the simulator,
options a model cannot serve refused before any session, regions, workspaces and what `models` shows."""

from __future__ import annotations

import socket
import wave
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from media_factory import write_audio

from batchqwen.cli import main
from batchqwen.models import get_model

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "jobs" / "demo" / "manifest.csv"
TRANSLATE = ROOT / "jobs" / "translate" / "manifest.csv"


def _rows(out: Path) -> dict[str, dict[str, object]]:
    return {row["id"]: row for row in pq.read_table(out / "results.parquet").to_pylist()}


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env={"DASHSCOPE_API_KEY": ""})
    assert "Traceback" not in result.output
    return result.exit_code, result.output


# ----------------------------------------------------------------------------- refused before any session


def test_a_target_language_the_model_cannot_serve_is_a_usage_error(tmp_path: Path) -> None:
    code, output = _run(
        "run", str(TRANSLATE), "--simulate", "--out", str(tmp_path / "o"),
        "--model", "qwen3-livetranslate-flash-realtime", "--translate-to", "xx",
    )  # fmt: skip
    assert code == 2
    assert "cannot translate into 'xx'" in output and "supported targets: en, zh, ja" in output
    assert not (tmp_path / "o" / "results.parquet").exists()  # nothing ran


def test_translate_to_on_a_model_that_does_not_translate_is_a_usage_error(tmp_path: Path) -> None:
    code, output = _run("run", str(DEMO), "--simulate", "--out", str(tmp_path / "o"), "--translate-to", "en")
    assert code == 2
    assert "does not translate" in output and "qwen3-livetranslate-flash-realtime" in output


def test_the_dry_run_refuses_the_same_target(tmp_path: Path) -> None:
    code, output = _run(
        "estimate", str(TRANSLATE), "--out", str(tmp_path / "o"),
        "--model", "qwen3.8-livetranslate-flash-realtime", "--translate-to", "tlh",
    )  # fmt: skip
    assert code == 2 and "cannot translate into 'tlh'" in output


def test_unknown_region_and_bad_workspace_are_usage_errors(tmp_path: Path) -> None:
    code, output = _run("run", str(DEMO), "--simulate", "--out", str(tmp_path / "o"), "--region", "mars-1")
    assert code == 2 and "mars-1" in output and "eu-central-1" in output
    result = CliRunner().invoke(
        main,
        ["run", str(DEMO), "--out", str(tmp_path / "o2"), "--workspace", "evil.example.com/x"],
        env={"DASHSCOPE_API_KEY": "sk-test-0123456789"},
    )
    assert result.exit_code == 2 and "workspace id" in result.output
    assert "sk-test-0123456789" not in result.output


def test_region_comes_from_the_environment_like_the_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["estimate", str(DEMO), "--out", str(tmp_path / "o")], env={"DASHSCOPE_REGION": "ap-southeast-1"}
    )
    assert result.exit_code == 0, result.output
    assert "ap-southeast-1" in result.output


def test_a_connection_failure_names_the_host_it_tried(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job = tmp_path / "job"
    job.mkdir()
    write_audio(job / "a.wav", seconds=1.0, rate=16_000, channels=1)
    (job / "m.csv").write_text("id,audio\na,a.wav\n", encoding="utf-8")
    result = CliRunner().invoke(
        main,
        ["run", str(job / "m.csv"), "--out", str(tmp_path / "o"), "--base-url", f"ws://127.0.0.1:{port}/x",
         "--max-outage", "1", "--quiet"],
        env={"DASHSCOPE_API_KEY": "sk-test-0123456789"},
    )  # fmt: skip
    assert result.exit_code == 4, result.output  # an outage: the environment, not the item
    assert f"host 127.0.0.1:{port}" in result.output
    assert _rows(tmp_path / "o")["a"]["status"] == "pending"  # never reached: the next run picks it up


def test_models_shows_each_family_voices_and_translation_languages() -> None:
    code, output = _run("models")
    assert code == 0
    for family in ("family omni,", "family omni_v38", "family qwen_audio", "family livetranslate,"):
        assert family in output
    assert "family livetranslate_v38" in output
    assert "longanlingxin (default longanlingxin; list not published" in output
    assert "translates into: en, zh, ja" in output
    assert "no known price" in output


# ----------------------------------------------------------------------------- every family runs the demo


@pytest.mark.parametrize(
    ("model", "expected_failures"),
    [
        ("qwen3-omni-flash-realtime", {}),
        ("qwen3.5-omni-plus-realtime", {}),
        ("qwen3.8-omni-flash-realtime", {}),
        (
            "qwen-audio-3.0-realtime-plus",
            {
                "circle-colour": "takes no images",
                "compare-two": "takes no images",
                "count-shapes": "takes no images",
                "ball-video": "no video frames",
                "prompt-only": "answers speech: this row has no audio or video",
                "prompt-image": "answers speech: this row has no audio or video",
            },
        ),
        *(
            (
                model,
                {
                    "prompt-only": "answers speech: this row has no audio or video",
                    "prompt-image": "answers speech: this row has no audio or video",
                },
            )
            for model in ("qwen3-livetranslate-flash-realtime", "qwen3.8-livetranslate-flash-realtime")
        ),
    ],
)
def test_the_demo_on_each_family(tmp_path: Path, model: str, expected_failures: dict[str, str]) -> None:
    out = tmp_path / "out"
    code, output = _run("run", str(DEMO), "--simulate", "--model", model, "--out", str(out), "--quiet")
    rows = _rows(out)
    assert code == (1 if expected_failures else 0), output
    for item_id, row in rows.items():
        if item_id in expected_failures:
            assert row["status"] == "failed" and expected_failures[item_id] in str(row["error_message"])
            assert row["attempts"] == 0  # refused before any session
            continue
        assert row["status"] == "ok", (item_id, row["error_message"])
        assert row["model"] == model
        if "livetranslate" in model and item_id in ("greeting", "weather", "ball-video"):  # rows with instructions
            assert any("takes no instructions" in note for note in row["notes"])  # type: ignore[attr-defined]
        assert row["output_transcript"]
        with wave.open(str(out / str(row["output_wav"]))) as wav:
            assert wav.getframerate() == get_model(model).output_sample_rate  # the model's output rate
            assert wav.getnframes() > 0


@pytest.mark.parametrize(
    "model",
    [
        "qwen3-livetranslate-flash-realtime",
        "qwen3.5-livetranslate-flash-realtime",
        "qwen3.8-livetranslate-flash-realtime",
    ],
)
def test_a_translation_job_gives_several_utterances_per_recording(tmp_path: Path, model: str) -> None:
    out = tmp_path / "out"
    code, output = _run(
        "run", str(TRANSLATE), "--simulate", "--model", model, "--translate-to", "en", "--out", str(out), "--quiet"
    )
    assert code == 0, output
    rows = _rows(out)
    expected_utterances = {"standup": 3, "review": 2, "briefing": 3}
    for item_id, count in expected_utterances.items():
        row = rows[item_id]
        assert row["status"] == "ok", row["error_message"]
        utterances = row["utterances"]
        assert isinstance(utterances, list) and len(utterances) == count, utterances
        starts = [u["start_seconds"] for u in utterances]
        assert starts == sorted(starts) and all(u["end_seconds"] > u["start_seconds"] for u in utterances)
        assert all(u["source_text"] and u["text"] for u in utterances)
        assert row["target_language"] == ("ja" if item_id == "review" else "en")
        assert row["input_transcript"] and row["output_transcript"]
        with wave.open(str(out / str(row["output_wav"]))) as wav:
            assert wav.getframerate() == get_model(model).output_sample_rate and wav.getnframes() > 0
