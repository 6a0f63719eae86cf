"""What each way of measuring a duration costs, and what the header path costs before and after issue 15.

1. Every audio file of the media corpus (tests/media_corpus.py) probed as the estimate probes it
   (batchqwen.media.measure_audio), beside a full decode of the same file: the method taken, the median
   probe time, the bytes a fallback read, the decode time (what measuring by decoding would cost).
2. ``--files DIR``: the CPU time (process time, so other load on the machine counts little) of probing
   every audio file and image in DIR (e.g. bench_estimate.py's ``--keep DIR``/media) the way the estimate
   does, by the version at ``--old`` (an export, as bench_estimate.py runs it) and by this one, each in
   its own process, alternately, ``--rounds`` times.

    .venv/bin/python bench/bench_probe.py [--repeat 20] [--files DIR/media --old COMMIT --rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import PYTHON, ROOT, table
from media_corpus import make_corpus

from batchqwen import media


def median_ms(action: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


# probe every file as the estimate of that version does; print the process CPU seconds it took
_PROBE_ALL = """
import json, os, sys, time
root = os.environ.get("BENCH_PACKAGE_ROOT")
if root:
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in type(f).__module__]
    sys.path.insert(0, root)
from pathlib import Path
from batchqwen import media
files = sorted(Path(sys.argv[1]).iterdir())
new = hasattr(media, "measure_audio")
audio = media.measure_audio if new else media.probe_audio_seconds
image = media.probe_image_parts if new else media.probe_image_size
started = time.process_time()
for path in files:
    (image if path.suffix in (".jpg", ".png") else audio)(path)
print(json.dumps({"cpu": time.process_time() - started, "files": len(files)}))
"""


def header_path_cpu(files: Path, old: str, rounds: int) -> list[list[str]]:
    """CPU seconds of probing ``files`` by the version at ``old`` and by this one, ``rounds`` times each."""
    from bench_estimate import export

    with tempfile.TemporaryDirectory(prefix="bench_probe_old_") as folder:
        old_root = str(export(old, Path(folder)))
        results: dict[str, list[float]] = {f"before ({old})": [], "now": []}
        count = 0
        for _ in range(rounds):
            for label, root in ((f"before ({old})", old_root), ("now", "")):
                env = {k: v for k, v in os.environ.items() if k != "BENCH_PACKAGE_ROOT"}
                if root:
                    env["BENCH_PACKAGE_ROOT"] = root
                done = subprocess.run(
                    [PYTHON, "-c", _PROBE_ALL, str(files)],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                figures = json.loads(done.stdout)
                results[label].append(figures["cpu"])
                count = figures["files"]
    base = statistics.median(results[f"before ({old})"])
    return [
        [label, f"{count:,}", " / ".join(f"{t:.2f}" for t in times), f"{statistics.median(times) / base:.2f}"]
        for label, times in results.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--files", type=Path, default=None, help="a folder of audio files and images")
    parser.add_argument("--old", default="2691c6e", help="the version to compare the header path with")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.files is not None:
        rows = header_path_cpu(args.files, args.old, args.rounds)
        print(table(["version", "files", "probe CPU s (each round)", "median vs before"], rows))
        return
    with tempfile.TemporaryDirectory(prefix="bench_probe_") as folder:
        files = [f for f in make_corpus(Path(folder)) if f.column == "audio"]
        rows = []
        for f in files:
            measured = media.measure_audio(f.path)
            probe_ms = median_ms(lambda f=f: media.measure_audio(f.path), args.repeat)
            decode_ms = median_ms(lambda f=f: media.decode_audio(f.path), max(3, args.repeat // 4))
            read = "" if measured.bytes_read is None else f"{measured.bytes_read:,}"
            rows.append(
                [f.name, measured.method, f"{probe_ms:.2f}", read, f"{decode_ms:.2f}", f"{f.path.stat().st_size:,}"]
            )
    print(table(["file", "method", "probe ms", "bytes read", "decode ms", "file bytes"], rows))


if __name__ == "__main__":
    main()
