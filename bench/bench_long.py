"""A real 70-minute recording against the simulator: split at pauses and run, its peak RSS, its segments;
``--split never`` on it; ``batchqwen estimate`` on it.

The recording is generated in /tmp (or ``--keep DIR``): speech-like phrases of 4-14 s (voiced harmonics,
a syllable envelope; ``tests/media_factory.speech_like``) with pauses of 0.3-1.5 s between them, as a
16 kHz mono PCM WAV (read as it is: 134 MB for 70 minutes) and, with ``--formats wav,flac``, a 44.1 kHz
stereo FLAC (decoded by PyAV, resampled, downmixed and spooled). Each command is the CLI in its own
process (``batchqwen run --base-url`` to the simulator in another), its peak RSS and CPU from ``wait4``:
the figures are the client's own, never the simulator's; a last run (``--simulate``) has the simulator in
the same process, counted with it. With ``--before`` the same WAV also goes through the version before long
recordings (an export of its commit, as bench_estimate.py does), which streams the whole recording to one
session and is refused.

    .venv/bin/python bench/bench_long.py [--minutes 70] [--formats wav,flac] [--before] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import media_factory
from common import API_KEY, PYTHON, ROOT, SimulatorProcess, machine, table

BEFORE = "2691c6e"  # main before long recordings: one session for the whole item
MODEL = "qwen3-omni-flash-realtime"
RSS_TARGET_MB = 350.0
# The peak RSS is the process's own high-water mark (VmHWM, read as it exits). Not wait4's ru_maxrss: on
# Linux that starts from the parent's RSS at the fork (the kernel folds the old mm's peak into the new
# program's at exec), so it reports the bench's own size once the bench has generated a big recording.
_LAUNCH = (
    "import atexit, os, sys\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as status:\n"
    "        kb = next(line.split()[1] for line in status if line.startswith('VmHWM'))\n"
    "    sys.stderr.write(f'BENCH_VMHWM_KB {kb}\\n')\n"
    "atexit.register(_peak)\n"
    "root = os.environ.get('BENCH_PACKAGE_ROOT')\n"
    "if root:\n"
    "    sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in type(f).__module__]\n"
    "    sys.path.insert(0, root)\n"
    "from batchqwen.cli import main\n"
    "sys.argv = ['batchqwen', *sys.argv[1:]]\n"
    "main()\n"
)


# ----------------------------------------------------------------------------- the recording


def phrases(seconds: float, seed: int = 0) -> list[tuple[float, float]]:
    """(phrase seconds, pause seconds) pairs that add up to ``seconds``."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, float]] = []
    total = 0.0
    while total < seconds:
        phrase, pause = float(rng.uniform(4, 14)), float(rng.uniform(0.3, 1.5))
        phrase = min(phrase, seconds - total)
        pause = min(pause, max(0.0, seconds - total - phrase))
        out.append((phrase, pause))
        total += phrase + pause
    return out


def blocks(seconds: float, rate: int, channels: int) -> Iterator[np.ndarray]:
    """The recording as float32 (channels, samples) blocks, a phrase and its pause each: made as they
    are written, so the generator never holds the whole recording either."""
    rng = np.random.default_rng(1)
    for n, (phrase, pause) in enumerate(phrases(seconds)):
        voice = media_factory.speech_like(phrase, rate, channels, seed=n)
        quiet = (0.002 * rng.standard_normal((channels, round(pause * rate)))).astype(np.float32)
        yield np.concatenate([voice, quiet], axis=1)


def write_wav(path: Path, seconds: float) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        for block in blocks(seconds, 16_000, 1):
            out.writeframes((np.clip(block[0], -1, 1) * 32767).astype("<i2").tobytes())
    return path


def write_flac(path: Path, seconds: float) -> Path:
    rate = 44_100
    with av.open(str(path), mode="w", format="flac") as container:
        stream = cast(av.AudioStream, container.add_stream("flac", rate=rate, layout="stereo"))
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=rate, frame_size=4608)
        at = 0
        for block in blocks(seconds, rate, 2):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = rate, at, Fraction(1, rate)
            at += block.shape[1]
            for out in resampler.resample(frame):
                for packet in stream.encode(out):
                    container.mux(packet)
        for out in resampler.resample(None):
            for packet in stream.encode(out):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


# ----------------------------------------------------------------------------- running the CLI


@dataclass
class Run:
    code: int
    wall: float
    cpu: float
    rss_mb: float
    stdout: str
    stderr: str


def run_cli(args: list[str], *, package_root: str | None = None, timeout: float = 1800.0) -> Run:
    """``batchqwen ARGS`` in its own process; its exit code, wall, CPU (wait4) and peak RSS (VmHWM).
    A ``--out`` folder is emptied first: every run starts afresh, never resuming an earlier one."""
    if "--out" in args:
        shutil.rmtree(args[args.index("--out") + 1], ignore_errors=True)
    env = {**os.environ, "DASHSCOPE_API_KEY": API_KEY}
    env.pop("BENCH_PACKAGE_ROOT", None)
    if package_root:
        env["BENCH_PACKAGE_ROOT"] = package_root
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([PYTHON, "-c", _LAUNCH, *args], stdout=out, stderr=err, text=True, cwd=ROOT, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                os.kill(proc.pid, signal.SIGKILL)
            time.sleep(0.02)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    peak = re.search(r"BENCH_VMHWM_KB (\d+)", stderr)
    rss = int(peak.group(1)) / 1024 if peak else float("nan")
    return Run(proc.returncode, wall, usage.ru_utime + usage.ru_stime, rss, stdout, stderr)


def manifest(folder: Path, name: str, audio: Path) -> Path:
    path = folder / f"{name}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "audio"])
        writer.writerow([name, str(audio)])
    return path


def export(commit: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, "batchqwen"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def row_of(out: Path) -> dict[str, object]:
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    return row


def spans(row: dict[str, object]) -> list[tuple[float, float, str]]:
    """(start, end, how it was cut) of each segment, from the row's notes."""
    found = []
    for note in cast(list[str], row["notes"]):
        match = re.match(r"segment \d+ of \d+: ([\d.,]+)-([\d.,]+) s(?:, (.*))?", note)
        if match:
            start, end = (float(v.replace(",", "")) for v in match.groups()[:2])
            found.append((start, end, match.group(3) or "the end"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=70.05, help="length of the recording (70.05: 4,203 s)")
    parser.add_argument("--formats", default="wav", help="wav (16 kHz mono, read as is), flac (44.1 kHz stereo)")
    parser.add_argument("--before", action="store_true", help=f"also run the WAV through {BEFORE}")
    parser.add_argument("--keep", type=Path, default=None, help="make (or reuse) the recordings in this folder")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_long_"))
    folder.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    from batchqwen.models import audio_tokens, get_model

    model = get_model(MODEL)
    info = machine()
    print(f"machine: {info['nproc']} cores, {info['cpu']}, Python {info['python']}; recordings in {folder}")

    rows: list[list[str]] = []
    segment_rows: list[list[str]] = []
    common = ["--rpm", "1000000000", "--tpm", "1000000000", "-q"]
    with SimulatorProcess() as sim:
        for fmt in args.formats.split(","):
            path = folder / f"meeting_{args.minutes:g}min.{fmt}"
            if not path.exists():
                started = time.perf_counter()
                (write_wav if fmt == "wav" else write_flac)(path, seconds)
                took = time.perf_counter() - started
                print(f"generated {path.name}: {path.stat().st_size / 1e6:.0f} MB in {took:.0f} s")
            source = manifest(folder, f"long_{fmt}", path)
            out = folder / f"out_{fmt}"
            run = run_cli(["run", str(source), "--base-url", sim.url, "--out", str(out), *common])
            row = row_of(out)
            cuts = spans(row)
            rows.append(
                [
                    f"now, {fmt}, --split auto",
                    str(run.code),
                    str(row["status"]),
                    str(row["segments"]),
                    f"{row['usage_input_tokens']:,}" if row["usage_input_tokens"] else "-",
                    f"{run.wall:.1f}",
                    f"{run.cpu:.1f}",
                    f"{run.rss_mb:.0f}",
                ]
            )
            for n, (start, end, how) in enumerate(cuts, 1):
                tokens = audio_tokens(model, end - start)
                segment_rows.append(
                    [fmt, str(n), f"{start:,.2f}-{end:,.2f}", f"{(end - start) / 60:.1f}", f"{tokens:,}", how]
                )
            print(json.dumps({"format": fmt, "exit": run.code, "status": row["status"], "segments": row["segments"],
                              "peak_rss_mb": round(run.rss_mb), "wall_s": round(run.wall, 1)}))  # fmt: skip
            assert run.code == 0 and row["status"] == "ok", run.stderr[-2000:]
            assert run.rss_mb < RSS_TARGET_MB, f"peak RSS {run.rss_mb:.0f} MB >= {RSS_TARGET_MB:g} MB"

        wav = folder / f"meeting_{args.minutes:g}min.wav"
        if wav.exists():
            source = manifest(folder, "long_wav", wav)
            never = run_cli(["run", str(source), "--base-url", sim.url, "--out", str(folder / "out_never"),
                             "--split", "never", *common])  # fmt: skip
            refused = row_of(folder / "out_never")
            rows.append(
                ["now, wav, --split never", str(never.code), str(refused["status"]), "-", "-",
                 f"{never.wall:.1f}", f"{never.cpu:.1f}", f"{never.rss_mb:.0f}"]
            )  # fmt: skip
            took = (refused["finished_at"] - refused["started_at"]).total_seconds()  # type: ignore[operator]
            print(
                f"--split never: exit {never.code}; the item refused {took * 1000:.1f} ms after its preparation began;"
                f" {never.wall:.2f} s for the whole process (Python start-up and imports included):"
            )
            print(f"  {refused['error_type']}: {refused['error_message']}")
            estimate = run_cli(["estimate", str(source), "--out", str(folder / "estimate")])
            kept = [line for line in estimate.stdout.splitlines() if "Too long" in line or "row 1 (id" in line]
            print(f"estimate (exit {estimate.code}, {estimate.wall:.2f} s):")
            print("\n".join(f"  {line.strip()}" for line in kept))
            if args.before:
                old = str(export(BEFORE, folder / "before"))
                prior = run_cli(["run", str(source), "--base-url", sim.url, "--out", str(folder / "out_before"),
                                 *common], package_root=old)  # fmt: skip
                was = row_of(folder / "out_before")
                rows.append(
                    [f"before ({BEFORE}), wav", str(prior.code), str(was["status"]), "-", "-",
                     f"{prior.wall:.1f}", f"{prior.cpu:.1f}", f"{prior.rss_mb:.0f}"]
                )  # fmt: skip
                print(f"before: {was['status']}: {was['error_message']}")
            # run --simulate: the simulator in the same process, its memory counted with the client's
            for label, root in [("now", None), *([(f"before ({BEFORE})", str(folder / "before"))] * args.before)]:
                out = folder / ("out_simulate" if root is None else "out_simulate_before")
                both = run_cli(["run", str(source), "--simulate", "--out", str(out), *common], package_root=root)
                got = row_of(out)
                tokens = f"{got['usage_input_tokens']:,}" if got["usage_input_tokens"] else "-"
                parts = str(got.get("segments") or "-")  # the version before has no such column
                rows.append(
                    [f"{label}, wav, --simulate (one process)", str(both.code), str(got["status"]), parts, tokens,
                     f"{both.wall:.1f}", f"{both.cpu:.1f}", f"{both.rss_mb:.0f}"]
                )  # fmt: skip

    print()
    header = ["run", "exit", "status", "segments", "input tokens", "wall s", "CPU s", "peak RSS MB"]
    print(table(header, rows))
    print()
    print(table(["format", "segment", "seconds", "minutes", "input tokens", "its end"], segment_rows))
    limit = model.max_input_tokens
    print(f"\nlimit: {limit:,} input tokens; a segment at most 95 % of it; peak RSS target {RSS_TARGET_MB:g} MB")


if __name__ == "__main__":
    main()
