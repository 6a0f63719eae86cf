"""Shared pieces of the benchmarks: real media, manifests, a simulator in its own process, a client driver.

Benchmarks are not tests: they live here, never under ``tests/``. Every client under measurement runs in
its own subprocess (``bench/drive.py``), the simulator in another, so the CPU and memory figures of a
client are its own and never the server's.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
sys.path.insert(0, str(ROOT / "tests"))  # media_factory: the project's real-media generator

import media_factory  # noqa: E402

MODEL = "qwen3-omni-flash-realtime"
API_KEY = "sk-bench"


def make_media(
    folder: Path, *, seconds: float, distinct: int = 4, image: bool = False, fmt: str = "mp3"
) -> list[tuple[str, str]]:
    """``distinct`` speech-like clips and optionally 1280x720 JPEGs.

    ``fmt`` "mp3": 44.1 kHz stereo MP3, as phones record (decoded and resampled per item); "wav": 16 kHz
    mono PCM WAV, what the service takes (read without a decoder).

    Returns (audio, image) names relative to ``folder``; image is "" when not asked for.
    """
    media = folder / "media"
    media.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(distinct):
        audio = media / f"speech_{seconds:g}s_{i}.{fmt}"
        if not audio.exists():
            rate, channels = (44_100, 2) if fmt == "mp3" else (16_000, 1)
            media_factory.write_audio(audio, seconds=seconds, rate=rate, channels=channels, seed=i)
        picture = ""
        if image:
            path = media / f"photo_{i}.jpg"
            if not path.exists():
                media_factory.write_image(path, 1280, 720, seed=i)
            picture = f"media/{path.name}"
        pairs.append((f"media/{audio.name}", picture))
    return pairs


def write_manifest(path: Path, rows: int, media: list[tuple[str, str]], *, prefix: str = "item") -> Path:
    """A CSV manifest of ``rows`` items cycling over ``media`` (each row still decodes its own files)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "audio", "image"])
        for n in range(rows):
            audio, image = media[n % len(media)]
            writer.writerow([f"{prefix}-{n}", audio, image])
    return path


class SimulatorProcess:
    """``batchqwen.sim.server.serve`` in a child process on a free loopback port; ``url`` once listening."""

    def __init__(self, **config: Any):
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> SimulatorProcess:
        code = (
            "import sys\n"
            "from batchqwen.sim.server import serve, SimulatorConfig\n"
            f"serve(SimulatorConfig(**{self.config!r}), '127.0.0.1', 0, ready=lambda url: print(url, flush=True))\n"
        )
        self.proc = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("ws://"):
            self.proc.kill()
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.url = line
        return self

    def cpu_seconds(self) -> float:
        """CPU time of the simulator process so far (user + system), from /proc."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class ChildResult:
    data: dict[str, Any]
    wall_seconds: float
    cpu_seconds: float  # user + system of the child, from wait4
    max_rss_mb: float


def run_child(args: list[str], *, timeout: float = 900.0, env: dict[str, str] | None = None) -> ChildResult:
    """Run ``python ARGS`` and return its last JSON stdout line, with its own rusage from wait4."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [PYTHON, *args], stdout=out, stderr=err, text=True, cwd=ROOT, env={**os.environ, **(env or {})}
        )
        # wait4 (not Popen.wait) so that the child's own CPU and peak RSS come back with its status
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                os.kill(proc.pid, signal.SIGKILL)
            time.sleep(0.02)
        wall = time.perf_counter() - started
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise RuntimeError(f"{' '.join(args)} exited {code}:\n{stderr[-3000:]}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    data = json.loads(lines[-1]) if lines else {"stdout": stdout}
    return ChildResult(data, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def machine() -> dict[str, str]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "nproc": str(os.cpu_count()),
        "python": platform.python_version(),
        "cpu": model,
        "kernel": platform.release(),
    }


def peak_rss_self_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (it also reads well on a terminal)."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows]
    return "\n".join(lines)
