"""Media and outputs in a bucket vs on local disk: the dry run and a simulated run.

    .venv/bin/python bench/bench_storage.py            # 2,000 files for the estimate, 200 items for the run
    .venv/bin/python bench/bench_storage.py --quick    # 200 and 40

The S3 server is moto's (``tests/storage_servers.py``) in its own process on 127.0.0.1, with IAM enforced
(every request signed and checked), counting requests and response bytes; batchqwen runs as a CLI
subprocess. moto answers a request in about 3 ms of its own CPU, far slower than a real store's per-request
cost but with no network latency: the figures say what the client does (requests, bytes, its own overhead
riding on the preparation stage), not what a real bucket will take.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, ROOT, media_factory  # common puts tests/ on the path


def _wav(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    samples = (rng.standard_normal(int(seconds * 16_000)) * 3000).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(samples.tobytes())
    return buffer.getvalue()


class Server:
    """tests/storage_servers.py in a subprocess."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, str(ROOT / "tests" / "storage_servers.py")], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.endpoint = info.pop("endpoint")
        self.keys: dict[str, str] = info
        import boto3

        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.keys["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.keys["AWS_SECRET_ACCESS_KEY"],
        )

    def put_many(self, objects: dict[str, bytes]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: self.client.put_object(Bucket="media", Key=kv[0], Body=kv[1]), objects.items()))

    def counts(self) -> dict[str, int]:
        import requests

        answer: dict[str, int] = requests.get(f"{self.endpoint}/__counts", timeout=30).json()
        return answer

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _cli(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run([PYTHON, "-m", "batchqwen.cli", *args], env=env, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"batchqwen {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def measure(files: int, items: int) -> list[dict[str, Any]]:
    server = Server()
    env = {**os.environ, **server.keys, "AWS_EC2_METADATA_DISABLED": "true", "AWS_REGION": "us-east-1"}
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-storage-") as folder:
            root = Path(folder)
            local = root / "local"
            local.mkdir()
            picture = media_factory.write_image(root / "p.jpg", 1280, 720).read_bytes()
            objects = {f"est/{i:05d}.wav": _wav(2.5 + (i % 9) * 0.25, i) for i in range(files)}
            objects |= {f"est/p{i:04d}.jpg": picture + bytes([i % 256]) * 16 for i in range(files // 10)}
            for key, data in objects.items():
                (local / Path(key).name).write_bytes(data)
            server.put_many(objects)
            lines = [(f"r{i}", f"{i:05d}.wav", f"p{i // 10:04d}.jpg" if i % 10 == 0 else "") for i in range(files)]
            for where in (local, None):
                manifest = (local if where else root) / "estimate.csv"
                with manifest.open("w", newline="") as handle:
                    csv.writer(handle).writerows([("id", "audio", "image"), *lines])
                if where is None:
                    server.client.upload_file(str(manifest), "media", "est/estimate.csv")
                    target = "s3://media/est/estimate.csv"
                else:
                    target = str(manifest)
                server.counts()
                seconds = _cli(["estimate", target, "--out", str(root / "e"), "--s3-endpoint", server.endpoint], env)
                counted = server.counts()
                media_bytes = sum(len(d) for d in objects.values())
                rows.append(
                    {
                        "what": f"estimate, {files:,} WAVs + {files // 10:,} JPEGs",
                        "media": "bucket" if where is None else "local disk",
                        "seconds": seconds,
                        "per_s": files / seconds,
                        "requests_per_file": counted["requests"] / len(objects) if where is None else None,
                        "bytes_share": counted["bytes"] / media_bytes if where is None else None,
                    }
                )

            run_objects = {f"run/{i:04d}.wav": _wav(3.0, 10_000 + i) for i in range(items)}
            for key, data in run_objects.items():
                (local / Path(key).name).write_bytes(data)
            server.put_many(run_objects)
            run_lines = [("id", "audio"), *[(f"i{i}", f"{i:04d}.wav") for i in range(items)]]
            with (local / "run.csv").open("w", newline="") as handle:
                csv.writer(handle).writerows(run_lines)
            server.client.upload_file(str(local / "run.csv"), "media", "run/run.csv")
            cases = [
                ("local disk", "local disk", str(local / "run.csv"), str(root / "out-local")),
                ("bucket", "local disk", "s3://media/run/run.csv", str(root / "out-mixed")),
                ("bucket", "bucket", "s3://media/run/run.csv", "s3://media/out-bench"),
            ]
            for media_at, out_at, manifest_at, out in cases:
                server.counts()
                seconds = _cli(
                    ["run", manifest_at, "--simulate", "--out", out, "--s3-endpoint", server.endpoint,
                     "--state-dir", str(root / "state"), "--concurrency", "8", "--rpm", "1000000000",
                     "--tpm", "1000000000", "--cache-dir", str(root / "cache")],
                    env,
                )  # fmt: skip
                counted = server.counts()
                rows.append(
                    {
                        "what": f"run --simulate, {items} items of 3 s WAV, out: {out_at}",
                        "media": media_at,
                        "seconds": seconds,
                        "per_s": items / seconds,
                        "requests_per_file": counted["requests"] / items if media_at == "bucket" else None,
                        "bytes_share": None,
                    }
                )
    finally:
        server.close()
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| what | media | wall s (start-up included) | items/s | requests per file | share of media bytes read |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        per_file = "-" if r["requests_per_file"] is None else f"{r['requests_per_file']:.2f}"
        share = "-" if r["bytes_share"] is None else f"{r['bytes_share']:.1%}"
        lines.append(f"| {r['what']} | {r['media']} | {r['seconds']:.2f} | {r['per_s']:.0f} | {per_file} | {share} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(render(measure(200 if args.quick else 2_000, 40 if args.quick else 200)))


if __name__ == "__main__":
    main()
