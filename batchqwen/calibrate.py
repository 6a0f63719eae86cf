"""Calibrated estimates: the answer length learned from the ok rows of earlier runs.

Before a run nothing is known of the model's answers, so the dry run assumes a fixed length (``--output
-seconds``, 8 s of speech an item). With ``batchqwen estimate MANIFEST --calibrate-from OUT`` the length is
learned instead, per model and modality setting, from ``OUT/results.parquet``:

* text+audio: output audio seconds against input audio seconds, a Theil–Sen line (the median of the
  pairwise slopes: a few odd answers do not tilt it) with a floor (the 5th percentile of the answers), and
  the text tokens per second of that speech (their median ratio);
* text only: output text tokens against input audio seconds, the same way.

The line is a median fit; a total needs the mean, so each line carries the mean ratio of the answers to it
(``LengthLine.scale``, a smearing estimate). The p10–p90 range of the total comes from a bootstrap: the
history is resampled, refitted, and each refit predicts the new manifest, with the answers' own spread
around the line added (by the central limit theorem over the items: the items' deviations are
independent, the fit's is shared by all). Models and settings without history keep the fixed assumption.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from batchqwen.cost import PER_TOKENS, LengthLine, OutputAssumption, OutputFit, PriceBook, modality_key
from batchqwen.errors import UsageError
from batchqwen.models import get_model
from batchqwen.results import RESULTS_NAME, STATUS_OK

MIN_ROWS = 3  # fewer ok rows than this for a model and setting: nothing is learned for it
MAX_FIT_ROWS = 300  # Theil–Sen looks at every pair of rows: a seeded sample of this many is plenty
REPLICATES = 200  # bootstrap refits for the range
FLOOR_QUANTILE = 0.05
SEED = 0

_COLUMNS = [
    "status",
    "model",
    "modalities",
    "input_audio_seconds",
    "output_audio_seconds",
    "usage_output_text_tokens",
    "est_output_text_tokens",
]

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


@dataclass(frozen=True)
class History:
    """The ok rows of one model and modality setting: input seconds and the answers' length."""

    model: str
    key: str  # "text,audio" or "text"
    x: FloatArray  # input audio seconds
    y: FloatArray  # output audio seconds (text+audio) or output text tokens (text only)
    text_tokens: FloatArray  # output text tokens


@dataclass(frozen=True)
class Calibration:
    """What was learned: the fits (for :class:`~batchqwen.cost.OutputAssumption`) and their history."""

    sources: tuple[str, ...]
    fits: dict[tuple[str, str], OutputFit] = field(default_factory=dict)
    history: dict[tuple[str, str], History] = field(default_factory=dict)
    skipped: dict[tuple[str, str], int] = field(default_factory=dict)  # groups with too few ok rows

    def output(self, base: OutputAssumption) -> OutputAssumption:
        """``base`` with the calibrated fits: models and settings without one keep ``base``'s assumption."""
        return OutputAssumption(
            output_seconds_per_item=base.output_seconds_per_item,
            output_ratio=base.output_ratio,
            text_tokens_per_second_of_speech=base.text_tokens_per_second_of_speech,
            fits=dict(self.fits),
            calibrated_from=self.sources,
        )

    def describe(self) -> list[str]:
        """One line per fit, for the estimate's printout."""
        lines = []
        for (model, key), fit in sorted(self.fits.items()):
            if fit.seconds is not None:
                line = fit.seconds
                what = (
                    f"answer {line.scale * line.intercept:.2f} s + {line.scale * line.slope:.3f} s per input second"
                    f" (at least {line.floor:.2f} s); {fit.text_tokens_per_second:.1f} text tokens per second"
                )
            else:
                assert fit.text_tokens is not None
                line = fit.text_tokens
                what = (
                    f"answer {line.scale * line.intercept:.1f} text tokens + {line.scale * line.slope:.2f} per"
                    f" input second (at least {line.floor:.0f})"
                )
            lines.append(f"  {model} ({key}): {what}; from {fit.rows:,} ok rows")
        for (model, key), rows in sorted(self.skipped.items()):
            lines.append(f"  {model} ({key}): only {rows} ok rows, fewer than {MIN_ROWS}: the fixed assumption")
        return lines


def read_history(out_dirs: Sequence[Path]) -> pd.DataFrame:
    """The ok rows of every ``OUT/results.parquet``, the columns a calibration needs."""
    frames = []
    for out in out_dirs:
        path = Path(out) / RESULTS_NAME
        if not path.is_file():
            raise UsageError(f"--calibrate-from {out}: no {RESULTS_NAME} there (has a run finished in it?)")
        frame = pd.read_parquet(path, columns=_COLUMNS)
        frames.append(frame[frame["status"] == STATUS_OK])
    rows = pd.concat(frames, ignore_index=True)
    if rows.empty:
        raise UsageError(f"--calibrate-from {', '.join(map(str, out_dirs))}: no ok rows to learn from")
    return rows


def fit_line(x: FloatArray, y: FloatArray, rng: np.random.Generator) -> LengthLine:
    """A Theil–Sen line of ``y`` against ``x`` with a floor and the smearing scale (see the module)."""
    from scipy.stats import theilslopes

    if len(x) > MAX_FIT_ROWS:
        keep = rng.choice(len(x), MAX_FIT_ROWS, replace=False)
        x, y = x[keep], y[keep]
    if len(x) < 2 or float(np.ptp(x)) == 0.0:
        slope, intercept = 0.0, float(np.median(y))
    else:
        result = theilslopes(y, x)
        slope, intercept = float(result.slope), float(result.intercept)
    floor = float(np.quantile(y, FLOOR_QUANTILE))
    predicted = np.maximum(floor, intercept + slope * x)
    usable = predicted > 0
    scale = float(np.mean(y[usable] / predicted[usable])) if usable.any() else 1.0
    return LengthLine(intercept, slope, floor, scale)


def _spread(x: FloatArray, y: FloatArray, line: LengthLine) -> float:
    """The standard deviation of the answers' ratio to the line: the spread of one item around it."""
    predicted = np.maximum(line.floor, line.scale * (line.intercept + line.slope * x))
    usable = predicted > 0
    return float(np.std(y[usable] / predicted[usable])) if usable.sum() > 1 else 0.0


def calibrate(out_dirs: Sequence[Path]) -> Calibration:
    """Learn the answer length per model and modality setting from the ok rows of ``out_dirs``."""
    rows = read_history(out_dirs)
    rng = np.random.default_rng(SEED)
    calibration = Calibration(sources=tuple(str(p) for p in out_dirs))
    keys = rows["modalities"].fillna("text,audio").map(lambda m: modality_key(str(m).split(",")))
    text_tokens = rows["usage_output_text_tokens"].fillna(rows["est_output_text_tokens"])
    for (model, key), group in rows.groupby([rows["model"].fillna(""), keys]):
        model, key = str(model), str(key)
        x = group["input_audio_seconds"].fillna(0.0).to_numpy(dtype=np.float64)
        tokens = text_tokens.loc[group.index].fillna(0.0).to_numpy(dtype=np.float64)
        seconds = group["output_audio_seconds"].fillna(0.0).to_numpy(dtype=np.float64)
        y = seconds if key == "text,audio" else tokens
        if not model or len(x) < MIN_ROWS:
            calibration.skipped[(model, key)] = len(x)
            continue
        line = fit_line(x, y, rng)
        if key == "text,audio":
            spoken = y > 0
            rate = float(np.median(tokens[spoken] / y[spoken])) if spoken.any() else 0.0
            fit = OutputFit(seconds=line, text_tokens_per_second=rate, rows=len(x))
        else:
            fit = OutputFit(seconds=None, text_tokens=line, rows=len(x))
        calibration.fits[(model, key)] = fit
        calibration.history[(model, key)] = History(model, key, x, y, tokens)
    return calibration


def cost_range(
    calibration: Calibration,
    estimate_rows: pd.DataFrame,
    prices: PriceBook,
    region: str,
    *,
    low: float = 0.1,
    high: float = 0.9,
    replicates: int = REPLICATES,
) -> tuple[float, float] | None:
    """The ``low``–``high`` quantiles of the manifest's total cost under the calibration's uncertainty.

    ``estimate_rows`` are the rows of ``estimate.parquet`` (its columns). None when some row's model has
    no known price (the total is unknown then). Rows of a model without a fit count at their estimate.
    """
    rows = estimate_rows[estimate_rows["problem"].isna()]
    if not bool(rows["price_known"].all()):
        return None
    keys = rows["modalities"].map(lambda m: modality_key(str(m).split(",")))
    fixed = 0.0  # what does not depend on the answer length
    totals = np.zeros(replicates)
    rng = np.random.default_rng(SEED)
    for (model_name, key), group in rows.groupby([rows["model"], keys]):
        history = calibration.history.get((str(model_name), str(key)))
        price = prices.lookup(str(model_name), region)
        if history is None or price is None:
            fixed += float(group["cost"].sum())
            continue
        model = get_model(str(model_name))
        fixed += float(
            (
                group["input_text_tokens"] * price.input_text
                + group["input_audio_tokens"] * price.input_audio
                + group["input_image_tokens"] * price.input_image
            ).sum()
            / PER_TOKENS
        )
        # items of the same input length and kind cost the same: bin them (a million rows, a few thousand bins)
        text_only = (group["input_audio_tokens"] == 0) & (group["input_image_tokens"] == 0)
        binned = pd.DataFrame({"x": group["audio_seconds"].round(2), "t": text_only}).value_counts()
        xs = np.array([x for x, _ in binned.index], dtype=np.float64)
        only_text = np.array([t for _, t in binned.index], dtype=bool)
        counts = binned.to_numpy(dtype=np.float64)
        if key == "text,audio":
            unit = np.full(len(xs), price.output_text_audio / PER_TOKENS)  # money per output audio token
        else:
            unit = np.where(only_text, price.output_text_textonly, price.output_text_multimodal) / PER_TOKENS
        n = len(history.x)
        for r in range(replicates):
            pick = rng.integers(0, n, n)
            x, y = history.x[pick], history.y[pick]
            line = fit_line(x, y, rng)
            mean = np.maximum(line.floor, line.scale * (line.intercept + line.slope * xs))
            spread = _spread(x, y, line)
            if key == "text,audio":
                billed = np.where(mean > 0, np.maximum(mean, model.min_audio_seconds), 0.0)
                tokens = billed * model.audio_tokens_per_second
                per_token_second = model.audio_tokens_per_second
            else:
                tokens, per_token_second = mean, 1.0
            expected = float(np.sum(counts * tokens * unit))
            # each item's own deviation from the line: independent, so their sum grows with sqrt(items)
            deviation = math.sqrt(float(np.sum(counts * (unit * per_token_second * mean * spread) ** 2)))
            totals[r] += expected + deviation * rng.standard_normal()
    spread_totals = fixed + totals
    return float(np.quantile(spread_totals, low)), float(np.quantile(spread_totals, high))
