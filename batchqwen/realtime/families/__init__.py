"""The table of protocol families: one row each, the session shape in one small module each.

Adding a family is one row here and one module beside this file (and its twin in
:mod:`batchqwen.sim.families`); nothing else branches on the family's name.
"""

from __future__ import annotations

from batchqwen.errors import UsageError
from batchqwen.realtime.families import livetranslate, livetranslate_v38, omni, omni_v38, qwen_audio
from batchqwen.realtime.family import Family

_SDK = "dashscope 2.0.2 v2/resources/audio/realtime.py"

# turn: who ends a turn; end: how a session ends; in/out: the wire names of PCM16 16 / 24 kHz;
# asr: the input transcription model ("" names none); asr_off: transcription can be turned off;
# translates: takes a target language; response_obj: response.create carries a ``response`` object
_ROWS = (
    # name                 turn      end              in       out      asr                         asr_off translates response_obj modalities key
    ("omni",              "manual", "finish_ack",    "pcm16", "pcm16", "gummy-realtime-v1",        True,   False,     True,        "modalities"),
    ("omni_v38",          "manual", "finish_no_ack", "pcm",   "pcm",   "qwen3-asr-flash-realtime", True,   False,     False,       "modalities"),
    ("qwen_audio",        "manual", "close",         "pcm",   "pcm",   "",                         True,   False,     True,        "modalities"),
    ("livetranslate",     "server", "finish_ack",    "pcm16", "pcm24", "qwen3-asr-flash-realtime", True,   True,      True,        "modalities"),
    ("livetranslate_v38", "server", "finish_ack",    "pcm",   "pcm",   "",                         False,  True,      True,        "output_modalities"),
)  # fmt: skip
_SESSION = {
    "omni": omni.session,
    "omni_v38": omni_v38.session,
    "qwen_audio": qwen_audio.session,
    "livetranslate": livetranslate.session,
    "livetranslate_v38": livetranslate_v38.session,
}
_SOURCE = {
    "omni": "Model Studio Qwen-Omni-Realtime client/server events; " + _SDK,
    "omni_v38": _SDK + "; examples realtime_omni.py",
    "qwen_audio": _SDK + "; examples realtime_qwen_audio.py",
    "livetranslate": "Model Studio LiveTranslate client/server events; " + _SDK,
    "livetranslate_v38": _SDK + "; examples realtime_translation.py",
}

FAMILIES: dict[str, Family] = {
    row[0]: Family(*row, session=_SESSION[row[0]], source=_SOURCE[row[0]])  # type: ignore[arg-type]
    for row in _ROWS
}


def get_family(name: str) -> Family:
    """The family row for a registry ``protocol`` name."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UsageError(f"unknown protocol family {name!r}; known: {', '.join(FAMILIES)}") from None
