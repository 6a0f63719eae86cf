"""How long the simulator's answers are: a seeded length model, an assumption of this simulator.

Nothing here is a fact about the service. A real model's spoken answer is longer for longer questions and
for wordier prompts, and varies from one answer to the next; the simulator imitates that so a cost
estimate has something real to learn from earlier runs (``batchqwen estimate --calibrate-from``):

    words = (BASE_WORDS + WORDS_PER_INPUT_SECOND * input seconds + WORDS_PER_PROMPT_WORD * prompt words)
            * exp(SPREAD * z),   z ~ N(0, 1) drawn from the answered input's fingerprint,
    at most MAX_WORDS (600, under every model's max output tokens)

The answer keeps its description of the input ("I heard ... and saw ..."), which is also its floor, and
is filled up to that many words with plainly filler words. Each word becomes one tone of
``SimulatorConfig.word_ms`` (60 ms by default), so the spoken length follows the word count. The draw is
seeded by the fingerprint of what the response answered: the same input always gets the same answer.
A translation is ``TRANSLATION_WORDS_PER_SECOND`` words per second of the utterance, with the same spread.
"""

from __future__ import annotations

import math
import random

BASE_WORDS = 20.0
WORDS_PER_INPUT_SECOND = 8.0
WORDS_PER_PROMPT_WORD = 0.5
TRANSLATION_WORDS_PER_SECOND = 10.0
SPREAD = 0.3  # sigma of the log-normal factor: most answers within about -25% .. +35% of the trend
# A ceiling, as a real model's answer has one (its max output tokens: 2,048 on the smallest model here).
# 600 words are 36 s of simulated speech: about 450 audio + 800 text tokens. Without it a 35-minute input
# was answered with ~27,000 output tokens, past every model's limit, and built whole in memory.
MAX_WORDS = 600
FILLER = ("and", "so", "the", "simulated", "answer", "goes", "on", "a", "little", "longer")


def target_words(input_seconds: float, prompt_words: int, fingerprint: str, *, translation: bool = False) -> int:
    """Words of the answer to this input (before the description's floor), drawn from ``fingerprint``."""
    if translation:
        trend = TRANSLATION_WORDS_PER_SECOND * max(0.0, input_seconds)
    else:
        trend = BASE_WORDS + WORDS_PER_INPUT_SECOND * max(0.0, input_seconds) + WORDS_PER_PROMPT_WORD * prompt_words
    draw = random.Random(int(fingerprint[:16] or "0", 16)).gauss(0.0, 1.0)
    return min(MAX_WORDS, round(trend * math.exp(SPREAD * draw)))


def lengthen(text: str, *, input_seconds: float, prompt: str, fingerprint: str, translation: bool = False) -> str:
    """``text`` filled up with filler words to the modelled length (never shortened)."""
    words = len(text.split())
    wanted = target_words(input_seconds, len(prompt.split()), fingerprint, translation=translation)
    if wanted <= words:
        return text
    filler = [FILLER[i % len(FILLER)] for i in range(wanted - words)]
    return f"{text} {' '.join(filler).capitalize()}."
