"""Profile one client run (``drive.py`` under pyinstrument) against the simulator in another process.

    .venv/bin/python bench/profile_client.py [--items 400] [--concurrency 128] [--latency 1.0] [--mode runner|sdk]

Writes the pyinstrument text report to stdout (wall-clock samples of the main thread; add --all-threads
via pyinstrument's own options if needed).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from common import PYTHON, ROOT, SimulatorProcess, make_media, write_manifest

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--mode", default="runner")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_profile_") as tmp:
        folder = Path(tmp)
        manifest = write_manifest(folder / "m.csv", args.items, make_media(folder, seconds=args.seconds, distinct=8))
        with SimulatorProcess(latency_seconds=args.latency) as sim:
            command = [PYTHON, "-m", "pyinstrument", "--show-all", "-r", "text", str(HERE / "drive.py"), args.mode]
            subprocess.run([*command, str(manifest), sim.url, str(args.concurrency), str(folder / "out")], cwd=ROOT)


if __name__ == "__main__":
    main()
