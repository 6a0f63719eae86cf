"""What becomes of one image file before it is sent, decided from its header alone, the same for the run
and the dry run: how many frames or pages it has, whether an extreme aspect ratio is cut into tiles, how
many of those extra images the family takes for the item's audio, and what to say about it.

Choices (where the service says only "about one image per second of audio"):

- An image whose fitted short side (see :func:`batchqwen.media.fit_image_size`) would fall below
  :data:`TILE_MIN_SHORT_SIDE` (or its own short side, if smaller) is cut along its long side into the
  fewest equal tiles that keep it: a 20000×100 panorama is 11 tiles of about 1818×100 instead of one
  1920×10 strip. A short side under :data:`MIN_SHORT_SIDE` px cannot be read at all and is refused.
- Animated GIF/WebP/PNG and multi-page TIFF: the first frame by default (the row's note says "first of
  N frames sent"); ``image_frames="all"`` sends every frame as an image.
- Extra images (tiles after the first, frames after the first) go only while the item's images stay
  within the family's allowance: ``floor(rate × audio seconds) + 1`` images (the simulator's fence-post
  rule), where the rate is the model's ``max_images_per_second`` (LiveTranslate: 2) or
  :data:`DEFAULT_IMAGES_PER_SECOND` (Omni: "about one per second"). The first image of every listed
  file is always sent, as before; what does not fit is dropped with a note, never sent to be refused.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from batchqwen.storage.locations import Remote

ImageFrames = Literal["first", "all"]
IMAGE_FRAMES: tuple[ImageFrames, ...] = ("first", "all")
DEFAULT_IMAGES_PER_SECOND = 1.0  # Omni: "about 1 per second of audio" (realtime-protocol.md)
TILE_MIN_SHORT_SIDE = 128  # px: below this a fitted strip (15:1 and thinner) loses its detail: tiled instead
MIN_SHORT_SIDE = 10  # px: the service's smallest image side (Qwen-VL: width and height over 10 px)
LONG_SIDE = 1920
MULTI_FRAME_FORMATS = {"GIF", "WEBP", "PNG", "TIFF"}  # frames/pages that are pictures of their own
_FORMAT_NAMES = {"GIF": "animated GIF", "WEBP": "animated WebP", "PNG": "animated PNG", "TIFF": "multi-page TIFF"}

_plugins_registered = False
_collecting = threading.local()  # .notes: the list Pillow's warnings go to in this thread, or None
_hook_installed = False
log = logging.getLogger("batchqwen.images")


def register_plugins() -> bool:
    """Teach Pillow HEIC/HEIF (pillow-heif, iPhone photos); AVIF is Pillow's own from 11.2. True when it
    registered them now, False when they already were (called on the first file Pillow cannot identify,
    so a run without HEIC photos never pays the plugin's import)."""
    global _plugins_registered
    if _plugins_registered:
        return False
    from pillow_heif import register_heif_opener

    register_heif_opener()
    _plugins_registered = True
    return True


@contextmanager
def pillow_warnings() -> Iterator[list[str]]:
    """Pillow's warnings raised in this thread while inside, as short strings for the row's notes (with
    :func:`install_warning_hook` they are never printed)."""
    previous = getattr(_collecting, "notes", None)
    notes: list[str] = []
    _collecting.notes = notes
    try:
        yield notes
    finally:
        _collecting.notes = previous


def install_warning_hook() -> None:
    """Route Pillow's warnings (corrupt EXIF, skipped TIFF tags, ...) to the row being prepared instead of
    the terminal: every one of them is shown to :func:`warnings.showwarning`, which hands those raised
    in Pillow's modules to :func:`pillow_warnings` (or the debug log, outside one). Other warnings are
    shown as before. Idempotent; where warnings are errors (pytest), they stay errors."""
    global _hook_installed
    if _hook_installed:
        return
    original = warnings.showwarning

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if "PIL" not in Path(filename).parts:
            original(message, category, filename, lineno, file, line)
            return
        notes = getattr(_collecting, "notes", None)
        text = f"Pillow: {message}"
        if notes is None:
            log.debug("%s", text)
        elif text not in notes:
            notes.append(text)

    warnings.showwarning = show
    warnings.filterwarnings("always", module=r"PIL(\.|$)")  # every row hears of its own file's problem
    _hook_installed = True


def tile_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The (left, top, right, bottom) boxes an upright ``width``×``height`` image is sent as: the whole
    image, or equal tiles along its long side when fitting it whole would shrink its short side below
    ``min(short side, TILE_MIN_SHORT_SIDE)``. Raises ValueError for a short side under MIN_SHORT_SIDE."""
    long_side, short_side = max(width, height), min(width, height)
    if short_side < MIN_SHORT_SIDE:
        raise ValueError(
            f"image {width}x{height} is too thin to read: its short side is {short_side} px"
            f" (at least {MIN_SHORT_SIDE} px needed)"
        )
    scale = min(1.0, LONG_SIDE / long_side, 1080 / short_side)
    wanted = min(short_side, TILE_MIN_SHORT_SIDE)
    if short_side * scale + 1e-9 >= wanted:
        return [(0, 0, width, height)]
    pieces = math.ceil(long_side * (wanted / short_side) / LONG_SIDE)
    cuts = [round(k * long_side / pieces) for k in range(pieces + 1)]
    if width >= height:
        return [(cuts[k], 0, cuts[k + 1], height) for k in range(pieces)]
    return [(0, cuts[k], width, cuts[k + 1]) for k in range(pieces)]


def images_allowed(images_per_second: float, audio_seconds: float) -> int:
    """How many images an item with ``audio_seconds`` of audio may send (the fence post counted)."""
    return math.floor(images_per_second * max(0.0, audio_seconds) + 1e-9) + 1


@dataclass(frozen=True)
class ImageParts:
    """What one image file could send: ``frames`` frames (1 unless animated/multi-page and sent in full)
    of ``tiles`` tiles each; ``total_frames`` is how many the file has."""

    format: str
    frames: int
    tiles: int
    total_frames: int = 1

    @property
    def count(self) -> int:
        return self.frames * self.tiles


def plan_parts(
    image_format: str, oriented: tuple[int, int], total_frames: int, image_frames: ImageFrames
) -> ImageParts:
    """The parts of one file: its frames (per ``image_frames``) times its tiles."""
    frames = total_frames if (image_frames == "all" and image_format in MULTI_FRAME_FORMATS) else 1
    return ImageParts(image_format, max(1, frames), len(tile_boxes(*oriented)), max(1, total_frames))


def keep_counts(parts: Sequence[ImageParts], other_images: int, allowed: int) -> list[int]:
    """How many parts of each file are sent: the first of every file always; then the extras, in order,
    while the item's images (``other_images``, e.g. video frames, included) stay within ``allowed``."""
    kept = [1 for _ in parts]
    room = allowed - other_images - len(parts)
    for n, part in enumerate(parts):
        extra = min(max(0, room), part.count - 1)
        kept[n] += extra
        room -= extra
    return kept


def parts_notes(path: Path | Remote, part: ImageParts, kept: int, images_per_second: float) -> list[str]:
    """The row's notes for one file: frames not sent, tiles, what the allowance dropped."""
    notes: list[str] = []
    name = path.name
    if part.total_frames > 1 and part.format in MULTI_FRAME_FORMATS and part.frames == 1:
        what = _FORMAT_NAMES.get(part.format, part.format)
        notes.append(f"{name}: {what}, first of {part.total_frames} frames sent (--image-frames all sends them all)")
    if part.tiles > 1:
        notes.append(f"{name}: extreme aspect ratio, cut into {part.tiles} tiles")
    if kept < part.count:
        unit = "tiles" if part.frames == 1 else "frames" if part.tiles == 1 else "images"
        notes.append(
            f"{name}: {kept} of {part.count} {unit} sent, {part.count - kept} dropped"
            f" (at most {images_per_second:g} image a second of audio on this model)"
        )
    elif part.frames > 1:
        notes.append(f"{name}: all {part.frames} frames sent")
    return notes


def describe_unreadable(path: Path, head: bytes) -> tuple[str, str]:
    """(format name, what to do) for a file Pillow could not identify, from its first bytes."""
    brand = head[8:12] if head[4:8] == b"ftyp" else b""
    if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
        return "HEIC/HEIF", "the HEIF plugin (pillow-heif) could not decode it: re-export it as JPEG"
    if brand in (b"avif", b"avis"):
        return "AVIF", "this Pillow build cannot decode it (Pillow 11.2 or newer reads AVIF): re-export it as JPEG"
    if brand:
        return f"ISO media ({brand.decode(errors='replace').strip()})", "a video or audio file? give it as `video`"
    checks = (
        (head[:2] == b"\xff\x0a" or head[4:8] == b"JXL ", "JPEG XL"),
        (head[:4] == b"8BPS", "Photoshop PSD"),
        (head[:4] == b"%PDF", "PDF"),
        (b"<svg" in head or head.lstrip()[:5] == b"<?xml", "SVG/XML"),
        (head[:4] in (b"II*\x00", b"MM\x00*"), "TIFF-based (camera raw?)"),
    )
    for matched, name in checks:
        if matched:
            return name, "convert it to JPEG or PNG first"
    suffix = path.suffix.lower().lstrip(".") or "unknown"
    return f"'{suffix}' (unrecognised)", "convert it to JPEG or PNG first"


__all__ = [
    "DEFAULT_IMAGES_PER_SECOND",
    "IMAGE_FRAMES",
    "MIN_SHORT_SIDE",
    "TILE_MIN_SHORT_SIDE",
    "ImageFrames",
    "ImageParts",
    "describe_unreadable",
    "images_allowed",
    "keep_counts",
    "parts_notes",
    "plan_parts",
    "register_plugins",
    "tile_boxes",
]
