"""Exact text token counts with the Qwen BPE vocabulary, offline.

The vocabulary is the ``qwen.tiktoken`` file that the official ``dashscope`` package ships; it is read
from disk (dashscope itself is not imported) and loaded with ``tiktoken``, as dashscope's own
``tokenizers/qwen_tokenizer.py`` does. When either is missing, counts fall back to an estimate of one
token per 3 UTF-8 bytes (rounded up), and :func:`text_tokens_exact` says so.
"""

from __future__ import annotations

import base64
import importlib.util
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

# the pre-tokenizer pattern of Qwen's tokenizer (dashscope/tokenizers/qwen_tokenizer.py)
_PAT_STR = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_FALLBACK_BYTES_PER_TOKEN = 3
_CHUNK_CHARS = 100_000  # tiktoken's recursive merge can overflow on huge inputs


def vocabulary_path() -> Path | None:
    spec = importlib.util.find_spec("dashscope")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    return path if path.is_file() else None


@lru_cache(maxsize=1)
def _encoding() -> Any | None:
    path = vocabulary_path()
    if path is None:
        return None
    try:
        import tiktoken
    except ImportError:
        return None
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in path.read_bytes().splitlines() if line)
    }
    return tiktoken.Encoding("qwen", pat_str=_PAT_STR, mergeable_ranks=ranks, special_tokens={})


def text_tokens_exact() -> bool:
    """True when counts come from the real vocabulary, False when they are the fallback estimate."""
    return _encoding() is not None


def count_text_tokens(text: str | None) -> int:
    """Qwen BPE token count of ``text`` (0 for None or empty)."""
    if not text:
        return 0
    encoding = _encoding()
    if encoding is None:
        return math.ceil(len(text.encode("utf-8")) / _FALLBACK_BYTES_PER_TOKEN)
    return sum(
        len(encoding.encode_ordinary(text[start : start + _CHUNK_CHARS])) for start in range(0, len(text), _CHUNK_CHARS)
    )
