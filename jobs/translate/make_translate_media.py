"""Make the translation job's recordings from the demo job's speech (no espeak-ng, no FFmpeg needed).

    .venv/bin/python jobs/translate/make_translate_media.py

Each recording strings several of the demo's spoken sentences together with pauses between them, so a
LiveTranslate model (or the simulator's speech detection) hears several utterances in one file. They are
stored as Opus in Ogg, mono 16 kHz, like ``jobs/demo/audio/count_shapes.ogg``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "demo"
sys.path.insert(0, str(DEMO))

from make_demo_media import encode_audio  # noqa: E402  (the demo's own encoder)

from batchqwen import media  # noqa: E402

PAUSE_SECONDS = 1.5  # well past any speech detector's end-of-utterance silence
RECORDINGS: dict[str, tuple[str, ...]] = {
    "standup.ogg": ("hello.wav", "weather.flac", "circle_colour.wav"),
    "review.ogg": ("compare.mp3", "count_shapes.ogg"),
    "briefing.ogg": ("narration.ogg", "hello.wav", "weather.flac"),
}


def main() -> None:
    (HERE / "audio").mkdir(exist_ok=True)
    pause = media.silence(PAUSE_SECONDS)
    with tempfile.TemporaryDirectory() as folder:
        for name, parts in RECORDINGS.items():
            pcm = pause.join(media.decode_audio(DEMO / "audio" / part) for part in parts)
            raw = Path(folder) / "raw.wav"
            raw.write_bytes(media.pcm_to_wav(pause + pcm + pause, 16_000))
            encode_audio(raw, HERE / "audio" / name)
            print(f"audio/{name}: {len(parts)} sentences, {(HERE / 'audio' / name).stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
