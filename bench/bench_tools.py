"""Tools and conversations: what a tool call costs the client, and what a conversation costs in tokens.

    .venv/bin/python bench/bench_tools.py [--calls 2000] [--items 16]

1. ``Toolbox.answer`` per call (arguments parsed and validated with jsonschema, the tool run off the event
   loop, the output encoded): a declared tool (canned output), a sync Python tool (its own daemon thread),
   an async one (the background loop), one call at a time and 16 at once.
2. A run of ``--items`` one-turn items against the in-process simulator (qwen3.5-omni-flash), without
   tools and with one sync tool round each: wall time and the client's CPU per item (simulator included:
   same process), and tokens billed.
3. The same three inputs (two audio turns and a typed one) as one three-turn conversation and as three
   separate items: tokens billed (the conversation re-bills its context).
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, media_factory

from batchqwen import runner
from batchqwen.config import RunConfig
from batchqwen.realtime.protocol import FunctionCall
from batchqwen.sim.server import Simulator, SimulatorConfig
from batchqwen.tools import load_tools

MODEL = "qwen3.5-omni-flash-realtime"
TOOLS = '''
import asyncio


def lookup(city: str, days: int = 3) -> dict:
    """Look up the weather."""
    return {"city": city, "days": days, "forecast": "sunny"}


async def lookup_async(city: str, days: int = 3) -> dict:
    """Look up the weather, asynchronously."""
    await asyncio.sleep(0)
    return {"city": city, "days": days}
'''
DECLARED = [
    {
        "type": "function",
        "function": {
            "name": "fill",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]


def per_call(folder: Path, calls: int) -> list[tuple[str, str, str]]:
    (folder / "tools.py").write_text(TOOLS)
    (folder / "tools.json").write_text(json.dumps(DECLARED))
    python, declared = load_tools(folder / "tools.py"), load_tools(folder / "tools.json")
    cases = [("declared (canned output)", declared, "fill"), ("sync tool", python, "lookup")]
    cases.append(("async tool", python, "lookup_async"))
    rows = []
    for label, box, name in cases:
        call = FunctionCall("c", name, '{"city": "Hangzhou", "days": 2}')

        async def one_by_one(box: object = box, call: FunctionCall = call) -> list[float]:
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                await box.answer(call, [call.name])  # type: ignore[attr-defined]
                times.append(time.perf_counter() - started)
            return times

        async def sixteen(box: object = box, call: FunctionCall = call) -> float:
            started = time.perf_counter()
            for _ in range(calls // 16):
                await asyncio.gather(*(box.answer(call, [call.name]) for _ in range(16)))  # type: ignore[attr-defined]
            return (time.perf_counter() - started) / (calls // 16 * 16)

        times = asyncio.run(one_by_one())
        batch = asyncio.run(sixteen())
        rows.append((label, f"{statistics.median(times) * 1e6:.0f} µs", f"{batch * 1e6:.0f} µs"))
    python.close()
    return rows


def run_items(folder: Path, items: int, *, with_tools: bool) -> tuple[float, float, int]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tools.py").write_text(TOOLS)
    media_factory.write_audio(folder / "a.wav", seconds=1.0, rate=16_000, channels=1)
    manifest = folder / f"m{int(with_tools)}.csv"
    manifest.write_text("id,audio,instructions\n" + "".join(f"i{n},a.wav,Use lookup now.\n" for n in range(items)))
    out = folder / f"out{int(with_tools)}"

    async def main() -> runner.RunOutcome:
        async with Simulator(SimulatorConfig()) as sim:
            config = RunConfig(
                manifest, out, model=MODEL, base_url=sim.url, api_key="sk-bench", concurrency=8, rpm=10**6,
                tpm=10**9, tools=folder / "tools.py" if with_tools else None, quiet=True, progress=False,
            )  # fmt: skip
            return await runner.run(config)

    wall, cpu = time.perf_counter(), time.process_time()
    outcome = asyncio.run(main())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert outcome.exit_code == 0, outcome.reason
    return wall, cpu / items, int(outcome.summary["tokens"]["usage_total_tokens"])


def conversation_vs_items(folder: Path) -> tuple[int, int]:
    media_factory.write_audio(folder / "t1.wav", seconds=2.0, rate=16_000, channels=1, seed=1)
    media_factory.write_audio(folder / "t2.wav", seconds=3.0, rate=16_000, channels=1, seed=2)
    turns = [{"audio": "t1.wav"}, {"audio": "t2.wav"}, {"prompt": "Sum it up."}]
    (folder / "talk.jsonl").write_text(json.dumps({"id": "talk", "turns": turns}) + "\n")
    (folder / "single.jsonl").write_text(
        "".join(json.dumps({"id": f"s{n}", **turn}) + "\n" for n, turn in enumerate(turns))
    )
    totals = []
    for name in ("talk", "single"):

        async def main(name: str = name) -> runner.RunOutcome:
            async with Simulator(SimulatorConfig()) as sim:
                config = RunConfig(
                    folder / f"{name}.jsonl", folder / f"out-{name}", model=MODEL, base_url=sim.url,
                    api_key="sk-bench", rpm=10**6, tpm=10**9, quiet=True, progress=False,
                )  # fmt: skip
                return await runner.run(config)

        outcome = asyncio.run(main())
        totals.append(int(outcome.summary["tokens"]["usage_total_tokens"]))
    return totals[0], totals[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--items", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"Machine: {', '.join(f'{k} {v}' for k, v in machine().items())}\n")
        print("| tool kind | per call, one at a time (median) | per call, 16 at once |")
        print("|---|---|---|")
        for row in per_call(folder, args.calls):
            print("| " + " | ".join(row) + " |")
        print()
        print(f"| {args.items} one-turn items, concurrency 8 | wall s | CPU ms per item (client + simulator)"
              " | tokens billed |")  # fmt: skip
        print("|---|---|---|---|")
        run_items(folder / "warm-up", 4, with_tools=True)  # imports and caches, not measured
        for with_tools in (False, True):
            wall, cpu, tokens = run_items(folder, args.items, with_tools=with_tools)
            label = "one sync tool round each" if with_tools else "no tools"
            print(f"| {label} | {wall:.2f} | {cpu * 1000:.1f} | {tokens} |")
        print()
        talk, single = conversation_vs_items(folder)
        print("| the same three inputs (2 s audio, 3 s audio, a typed prompt) | tokens billed |")
        print(f"|---|---|\n| one three-turn conversation | {talk} |\n| three separate items | {single} |")


if __name__ == "__main__":
    main()
