"""The simulator's side of the protocol families: one row of facts each, the session shape in one module each.

A family module spells its ``session.update`` / ``session.created`` shape and nothing else:
``read_update(update)`` maps the wire shape to the one canonical (flat, Omni-like) form that
:mod:`batchqwen.sim.settings` validates, refusing fields of other families' shapes; ``echo(session)``
spells the effective canonical session back; ``defaults(row)`` overrides the canonical defaults;
``PARAMS`` renames a canonical error ``param`` to the family's wire path. The facts shared with the
client (turn mode, end of session, format names, transcription model) come from its row in
:data:`batchqwen.realtime.families.FAMILIES`; the simulator-only facts are the columns below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from batchqwen.realtime.families import get_family
from batchqwen.realtime.family import Family
from batchqwen.sim.families import livetranslate, livetranslate_v38, omni, omni_v38, qwen_audio

# history: audio turns billed again by every response (Omni flash keeps the last 8; a translator answers
# each utterance alone); image_bytes: the raw JPEG limit where the family's pages give one (None: the
# config's base64 limit). Whether answers are translations is the shared row's ``translation``.
_ROWS = (
    # name                 module             history image_bytes
    ("omni",              omni,              8,      None),
    ("omni_v38",          omni_v38,          8,      None),
    ("qwen_audio",        qwen_audio,        8,      None),
    ("livetranslate",     livetranslate,     1,      500 * 1024),
    ("livetranslate_v38", livetranslate_v38, 1,      500 * 1024),
)  # fmt: skip


@dataclass(frozen=True)
class SimFamily:
    """One family as the simulator speaks it."""

    name: str
    row: Family  # the facts shared with the client side
    history_turns: int
    max_image_bytes: int | None
    read_update: Callable[[dict[str, Any]], dict[str, Any]]
    echo: Callable[[dict[str, Any]], dict[str, Any]]
    defaults: Mapping[str, Any]
    params: Mapping[str, str]


def _family(name: str, module: ModuleType, history: int, image_bytes: int | None) -> SimFamily:
    row = get_family(name)
    return SimFamily(
        name=name,
        row=row,
        history_turns=history,
        max_image_bytes=image_bytes,
        read_update=module.read_update,
        echo=module.echo,
        defaults=module.defaults(row),
        params=module.PARAMS,
    )


SIM_FAMILIES: dict[str, SimFamily] = {row[0]: _family(*row) for row in _ROWS}


def sim_family(name: str) -> SimFamily:
    """The simulator's family for a registry ``protocol`` name (KeyError for an unknown one)."""
    return SIM_FAMILIES[name]
