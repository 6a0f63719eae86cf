"""Tools for the tools demo job: what a call-centre extraction job would declare.

`batchqwen run jobs/tools/manifest.csv --simulate --model qwen3.5-omni-flash-realtime --tools jobs/tools/tools.py`
offers these to the model; every public function here is a tool (its JSON Schema comes from the type hints,
its description from the docstring).
"""

from __future__ import annotations

import zlib
from typing import Literal


def record_order(customer: str, quantity: int, express: bool = False) -> dict[str, object]:
    """Record the order a caller places.

    Args:
        customer: the caller's name as they said it
        quantity: how many items they ordered
        express: whether they asked for express delivery
    """
    order = zlib.crc32(f"{customer}|{quantity}|{express}".encode()) % 100_000
    return {"order_id": f"ord-{order:05d}", "accepted": quantity > 0}


def rate_call(score: int, mood: Literal["calm", "upset", "neutral"] = "neutral") -> dict[str, object]:
    """Rate how the call went.

    Args:
        score: from 1 (bad) to 5 (good)
        mood: the caller's mood
    """
    return {"stored": True, "score": score, "mood": mood}
