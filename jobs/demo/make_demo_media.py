"""Regenerate the demo job's media.

    .venv/bin/python jobs/demo/make_demo_media.py            # images and video (deterministic)
    .venv/bin/python jobs/demo/make_demo_media.py --speech   # also re-record the speech (needs espeak-ng)

The speech files in ``audio/`` were recorded once with espeak-ng 1.51 (voice en-us, 165 words per
minute; ``apt-get install espeak-ng``) from the sentences in :data:`SENTENCES`, then converted in-process
with PyAV to the formats named there. They are committed, so running the demo needs neither espeak-ng
nor FFmpeg. Images are drawn with Pillow; the video is encoded with PyAV (H.264 + AAC) and its sound is
``audio/narration.ogg``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
AUDIO, IMAGES, VIDEO = HERE / "audio", HERE / "images", HERE / "video"

# file name -> sentence; the suffix picks the format (all mono 16 kHz)
SENTENCES: dict[str, str] = {
    "hello.wav": "Hello! This is a short test of the batch runner.",
    "circle_colour.wav": "What colour is the circle in this picture?",
    "compare.mp3": "Please compare these two pictures. How are they different?",
    "weather.flac": "The weather today is sunny, with a light breeze from the west.",
    "count_shapes.ogg": "Count the shapes you can see, and name their colours.",
    "narration.ogg": "A red ball rolls from left to right.",
}
# suffix -> (container format, codec, sample format, extra codec options)
FORMATS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    ".wav": ("wav", "pcm_s16le", "s16", {}),
    ".mp3": ("mp3", "libmp3lame", "s16p", {"b": "32k"}),
    ".flac": ("flac", "flac", "s16", {}),
    ".ogg": ("ogg", "libopus", "s16", {"b": "24k"}),
}
RATE = 16_000


def record_speech() -> None:
    """Speak every sentence with espeak-ng and store it in its format (mono 16 kHz)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        sys.exit("espeak-ng is not installed (apt-get install espeak-ng); the committed files are fine")
    AUDIO.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        for name, sentence in SENTENCES.items():
            raw = Path(folder) / "raw.wav"
            subprocess.run([espeak, "-v", "en-us", "-s", "165", "-w", str(raw), sentence], check=True)
            encode_audio(raw, AUDIO / name)
            print(f"audio/{name}: {(AUDIO / name).stat().st_size:,} bytes")


def encode_audio(source: Path, target: Path) -> None:
    """Re-encode any audio file to ``target`` (format by suffix), mono 16 kHz."""
    container_format, codec, sample_format, options = FORMATS[target.suffix]
    with av.open(str(source)) as reader, av.open(str(target), "w", format=container_format) as writer:
        stream = cast(av.AudioStream, writer.add_stream(codec, rate=RATE, layout="mono", options=options))
        resampler = av.AudioResampler(
            format=sample_format, layout="mono", rate=RATE, frame_size=stream.codec_context.frame_size or 1024
        )
        frames = [out for frame in reader.decode(audio=0) for out in resampler.resample(frame)]
        for frame in [*frames, *resampler.resample(None), None]:
            for packet in stream.encode(frame):
                writer.mux(packet)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def make_images() -> None:
    """Three small drawings: a PNG with alpha, a PNG of shapes, a photo-like JPEG."""
    IMAGES.mkdir(exist_ok=True)

    # a blue circle on a transparent background (the runner flattens it onto white)
    circle = Image.new("RGBA", (480, 360), (0, 0, 0, 0))
    draw = ImageDraw.Draw(circle)
    draw.ellipse((140, 60, 340, 260), fill=(30, 90, 220, 255), outline=(10, 30, 90, 255), width=6)
    draw.text((240, 310), "circle", fill=(20, 20, 20, 255), font=font(32), anchor="mm")
    circle.save(IMAGES / "circle.png", optimize=True)

    # three shapes in three colours on white
    shapes = Image.new("RGB", (640, 400), "white")
    draw = ImageDraw.Draw(shapes)
    draw.rectangle((40, 120, 200, 280), fill=(220, 40, 40))
    draw.polygon([(320, 110), (400, 290), (240, 290)], fill=(40, 170, 60))
    draw.ellipse((450, 120, 610, 280), fill=(240, 200, 30))
    draw.text((320, 50), "three shapes", fill="black", font=font(36), anchor="mm")
    shapes.save(IMAGES / "shapes.png", optimize=True)

    # a sunset: sky gradient, sun, sea, gentle noise so it compresses like a photo
    width, height = 800, 500
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    top, horizon = np.array([40, 60, 140]), np.array([250, 150, 70])
    sky = top + (horizon - top) * y
    pixels = np.broadcast_to(sky, (height, width, 3)).copy()
    pixels[int(height * 0.65) :] = [20, 50, 90]
    pixels += np.random.default_rng(7).normal(0, 4, pixels.shape)
    sunset = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
    ImageDraw.Draw(sunset).ellipse((340, 230, 460, 350), fill=(255, 210, 90))
    sunset.paste((20, 50, 90), (0, int(height * 0.65), width, height))
    sunset.save(IMAGES / "sunset.jpg", quality=80)
    for path in sorted(IMAGES.iterdir()):
        print(f"images/{path.name}: {path.stat().st_size:,} bytes")


def make_video(seconds: float = 3.0, fps: int = 12, size: tuple[int, int] = (320, 240)) -> None:
    """A red ball rolling left to right over a floor, with the narration as its sound track."""
    VIDEO.mkdir(exist_ok=True)
    target = VIDEO / "ball.mp4"
    width, height = size
    with av.open(str(AUDIO / "narration.ogg")) as reader:
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=RATE, frame_size=1024)
        sound_frames = [out for frame in reader.decode(audio=0) for out in resampler.resample(frame)]
        sound_frames += resampler.resample(None)
    with av.open(str(target), "w", format="mp4") as writer:
        video = writer.add_stream("libx264", rate=fps, options={"crf": "28", "preset": "medium", "threads": "1"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = Fraction(1, fps)
        audio = writer.add_stream("aac", rate=RATE, layout="mono")
        frame_count = round(seconds * fps)
        for k in range(frame_count):
            picture = Image.new("RGB", size, (200, 225, 245))
            draw = ImageDraw.Draw(picture)
            draw.rectangle((0, height * 2 // 3, width, height), fill=(120, 180, 90))
            x = 30 + (width - 60) * k / (frame_count - 1)
            floor = height * 2 // 3
            draw.ellipse((x - 25, floor - 50, x + 25, floor), fill=(220, 30, 30))
            draw.text((10, 10), f"t = {k / fps:.1f} s", fill="black", font=font(18))
            frame = av.VideoFrame.from_image(picture)  # type: ignore[no-untyped-call]
            frame.pts, frame.time_base = k, Fraction(1, fps)
            for packet in video.encode(frame):
                writer.mux(packet)
        for packet in video.encode(None):
            writer.mux(packet)
        for sound in [*sound_frames, None]:
            for packet in audio.encode(sound):
                writer.mux(packet)
    print(f"video/{target.name}: {target.stat().st_size:,} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech", action="store_true", help="re-record the speech with espeak-ng first")
    args = parser.parse_args()
    if args.speech:
        record_speech()
    make_images()
    make_video()


if __name__ == "__main__":
    main()
