"""Run every benchmark against the simulator (in its own process, on loopback) and rewrite bench/RESULTS.md.

    .venv/bin/python bench/run_all.py            # the full set (about 20 minutes on 2 cores)
    .venv/bin/python bench/run_all.py --quick    # a smoke pass with small sizes (about 2 minutes)

Benchmarks are not tests: they live in bench/, never in tests/. Each prints a Markdown table; this
script collects them with the machine's description and the command into RESULTS.md.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cost
import bench_families
import bench_memory
import bench_prepare
import bench_scaling
import bench_sdk
import bench_video
from common import PYTHON, ROOT, machine

HERE = Path(__file__).resolve().parent
NOTES = HERE / "NOTES.md"  # hand-written analysis, appended to RESULTS.md as is


def dry_run_speed(rows: int) -> str:
    """bench_dry_run.py (another engineer's) in a subprocess; its own summary lines, as printed."""
    proc = subprocess.run(
        [PYTHON, str(HERE / "bench_dry_run.py"), "--rows", str(rows)], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        return f"bench_dry_run.py failed ({proc.returncode}):\n```\n{proc.stderr[-2000:]}\n```"
    keep = [
        line for line in proc.stdout.splitlines() if re.match(r"(rows|elapsed|tracemalloc|ru_maxrss|generated)", line)
    ]
    return "```\n" + "\n".join(keep) + "\n```"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke pass, figures not comparable")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    q = args.quick
    started = time.perf_counter()
    sections: list[tuple[str, str]] = []

    def section(title: str, body: str) -> None:
        print(f"\n## {title}\n\n{body}", flush=True)
        sections.append((title, body))

    print("1. concurrency scaling (MP3 items) ...", file=sys.stderr, flush=True)
    levels = [1, 8, 32] if q else [1, 8, 32, 128, 256]
    rows = bench_scaling.measure(40 if q else 400, 4 if q else 20, levels, fmt="mp3")
    section(
        "1. Concurrency scaling: 5 s MP3 speech (44.1 kHz stereo, decoded per item), simulator latency 1 s",
        bench_scaling.render(rows),
    )
    print("1a. concurrency scaling (MP3 items, 2 decode processes) ...", file=sys.stderr, flush=True)
    rows = bench_scaling.measure(40 if q else 400, 4 if q else 10, [1, 32] if q else [1, 32, 128], decode_processes=2)
    section(
        "1a. The same MP3 items decoded in 2 worker processes (`run --decode-processes 2`)",
        bench_scaling.render(rows),
    )
    print("1b. concurrency scaling (16 kHz WAV items, no decoding) ...", file=sys.stderr, flush=True)
    rows = bench_scaling.measure(40 if q else 400, 4 if q else 10, [1, 32] if q else [1, 32, 128], fmt="wav")
    section(
        "1b. Concurrency scaling: 5 s 16 kHz mono WAV speech (no decoder), simulator latency 1 s",
        bench_scaling.render(rows),
    )

    print("1c. concurrency scaling (WAV items, 1 s audio per append) ...", file=sys.stderr, flush=True)
    rows = bench_scaling.measure(40 if q else 400, 4 if q else 10, [1, 32] if q else [1, 128], fmt="wav", chunk_ms=1000)
    section(
        "1c. The same WAV items sent as 1 s appends (`run --chunk-ms 1000`): the cost of 100 ms frames",
        bench_scaling.render(rows),
    )

    print("1d. rate limiter against a quota ...", file=sys.stderr, flush=True)
    limit_args = [str(HERE / "bench_rate_limit.py")] + (["--quick"] if q else [])
    limits = subprocess.run([sys.executable, *limit_args], capture_output=True, text=True, check=True, cwd=HERE.parent)
    section(
        "1d. Rate limiter against a simulator quota (bench/bench_rate_limit.py)", f"```\n{limits.stdout.strip()}\n```"
    )

    print("1e. every protocol family ...", file=sys.stderr, flush=True)
    section(
        "1e. Every protocol family at concurrency 32: 5 s WAV speech, simulator latency 1 s (bench/bench_families.py)",
        bench_families.render(bench_families.measure(64 if q else 192, 32)),
    )

    print("2. client CPU per item ...", file=sys.stderr, flush=True)
    section(
        "2. Client CPU per item: 10 s MP3 + one 1280x720 JPEG, one at a time",
        bench_cost.render(bench_cost.measure(8 if q else 40)),
    )

    print("3. batchqwen vs the dashscope SDK ...", file=sys.stderr, flush=True)
    section(
        "3. batchqwen vs the official dashscope SDK (5 s MP3 + one JPEG, both unpaced)",
        bench_sdk.render(bench_sdk.measure(32 if q else 160, 32)),
    )

    print("4. dry-run speed ...", file=sys.stderr, flush=True)
    section(
        "4. Dry-run speed (bench/bench_dry_run.py, mixed WAV/MP3/FLAC/JPEG/PNG manifest)",
        dry_run_speed(1_000 if q else 10_000),
    )

    print("5. memory ...", file=sys.stderr, flush=True)
    mem = bench_memory.dry_run([10_000] if q else [10_000, 100_000, 1_000_000])
    mem += bench_memory.simulated([200] if q else [500, 5_000, 10_000])
    section("5. Peak RSS of the batchqwen process (CLI subprocess)", bench_memory.render(mem))

    print("6. video preparation ...", file=sys.stderr, flush=True)
    section(
        "6. Video preparation CPU: before issue 16, the new default and the exact mode (bench/bench_video.py)",
        bench_video.measure(seconds=30.0, repeat=1 if q else 2, quick=q),
    )

    print("7. preparation ahead of the sessions ...", file=sys.stderr, flush=True)
    section(
        "7. 32 sessions of MP3 + JPEG, before the speed issue and now, every option at its default"
        " (bench/bench_prepare.py)",
        bench_prepare.render(bench_prepare.measure(64 if q else 320, 32)),
    )
    print("8. estimate at scale ...", file=sys.stderr, flush=True)
    estimate_args = [str(HERE / "bench_estimate.py"), "--rows", "1000" if q else "10000"] + ([] if q else ["--million"])
    estimated = subprocess.run([sys.executable, *estimate_args], capture_output=True, text=True, check=True, cwd=ROOT)
    section("8. batchqwen estimate on distinct files, before and now (bench/bench_estimate.py)", estimated.stdout)
    print("9. the HTML report ...", file=sys.stderr, flush=True)
    report_args = [str(HERE / "bench_report.py"), "--items", "10000" if q else "100000"]
    reported = subprocess.run([sys.executable, *report_args], capture_output=True, text=True, check=True, cwd=ROOT)
    section("9. The HTML report at scale (bench/bench_report.py)", reported.stdout)
    print("10. tools and conversations ...", file=sys.stderr, flush=True)
    tool_args = [str(HERE / "bench_tools.py")] + (["--calls", "320", "--items", "8"] if q else [])
    tooled = subprocess.run([sys.executable, *tool_args], capture_output=True, text=True, check=True, cwd=ROOT)
    section(
        "10. Tools and conversations (bench/bench_tools.py; the simulator in the same process here)",
        tooled.stdout.split("\n", 2)[2].strip(),  # without its machine line: the page has one
    )
    print("12. media and outputs in a bucket ...", file=sys.stderr, flush=True)
    storage_args = [str(HERE / "bench_storage.py")] + (["--quick"] if q else [])
    stored = subprocess.run([sys.executable, *storage_args], capture_output=True, text=True, check=True, cwd=ROOT)
    section(
        "12. Media and outputs in a bucket (moto's S3 server) vs on local disk (bench/bench_storage.py)", stored.stdout
    )
    print("13. a 70-minute recording ...", file=sys.stderr, flush=True)
    long_args = [str(HERE / "bench_long.py"), "--formats", "wav" if q else "wav,flac", *([] if q else ["--before"])]
    longer = subprocess.run([sys.executable, *long_args], capture_output=True, text=True, check=True, cwd=ROOT)
    section("13. A 70-minute recording, split at pauses and run (bench/bench_long.py)", f"```\n{longer.stdout}```")

    info = machine()
    command = ".venv/bin/python bench/run_all.py" + (" --quick" if q else "")
    lines = [
        "# batchqwen benchmarks",
        "",
        f"Written by `{command}` (`make bench` runs the full set) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC,"
        f" in {time.perf_counter() - started:.0f} s.",
        "",
        f"Machine: `nproc` {info['nproc']}, Python {info['python']}, CPU {info['cpu']}, Linux {info['kernel']}."
        " The machine is shared (other engineers' test runs load it): compare ratios within one run.",
        "",
        "The simulator always runs in its own process (`batchqwen.sim.server.serve` on 127.0.0.1, port 0); every"
        " client under measurement runs in another (`bench/drive.py`), so CPU and RSS figures are the client's own."
        " rpm/tpm are set to 10^9 so the limiter never paces.",
    ]
    if q:
        lines += ["", "**Quick pass: small sizes, a smoke test only; the figures are not the benchmark.**"]
    for title, body in sections:
        lines += ["", f"## {title}", "", body]
    if NOTES.exists():
        lines += ["", NOTES.read_text(encoding="utf-8").strip()]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
