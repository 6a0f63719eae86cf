"""Token estimates and money: prices as data, the billing rule, cost from estimates or reported usage.

Pure: no I/O except reading price files. The same :func:`estimate_tokens` serves the offline dry run and
the real run's estimate columns, so the two can never disagree about the rules. The token rules
themselves live in :mod:`batchqwen.models` (audio, images) and :mod:`batchqwen.tokens` (text).

The billing rule (Model Studio): input is billed per modality. Output depends on what was asked for:

* text+audio output: only the output *audio* tokens are billed, at ``output_text_audio``; the
  transcript's text tokens are not billed separately;
* text-only output: the output text tokens are billed at ``output_text_textonly`` when the input was text
  only, otherwise at ``output_text_multimodal``.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchqwen.errors import UsageError
from batchqwen.models import ALIASES, ModelInfo, audio_tokens, image_tokens
from batchqwen.realtime.events import Usage
from batchqwen.realtime.gateways import normalize_region
from batchqwen.tokens import count_text_tokens

PER_TOKENS = 1_000_000  # prices are per 1M tokens
PRICE_KEYS: tuple[str, ...] = (
    "input_text",
    "input_audio",
    "input_image",
    "output_text_textonly",
    "output_text_multimodal",
    "output_text_audio",
)
REGIONS: tuple[str, ...] = ("cn-beijing", "ap-southeast-1")
MODALITIES: tuple[str, ...] = ("input_text", "input_audio", "input_image", "output_text", "output_audio")

_SNAPSHOT_SUFFIX = re.compile(r"^-(\d{4}-\d{2}-\d{2}|latest)$")


# ----------------------------------------------------------------------------- prices


@dataclass(frozen=True)
class ModelPrice:
    """Prices of one model in one region, per 1M tokens, in ``currency``."""

    model: str
    region: str
    currency: str
    input_text: float
    input_audio: float
    input_image: float
    output_text_textonly: float
    output_text_multimodal: float
    output_text_audio: float


@dataclass(frozen=True)
class PriceBook:
    """All known prices, with where they came from. A model absent here has no known price."""

    source: str
    as_of: str
    currency: str
    prices: Mapping[tuple[str, str], ModelPrice] = field(default_factory=dict)
    source_url: str = ""  # the public page the prices were read from

    def describe(self) -> str:
        """Where the prices come from, for people: the page's title, its address and the date read."""
        where = f"{self.source} <{self.source_url}>" if self.source_url else self.source
        return f"{where}, as of {self.as_of}"

    def lookup(self, model_name: str, region: str) -> ModelPrice | None:
        """The price of ``model_name`` in ``region``, or None when unknown (never a zero price).

        An exact entry wins (so a user can price one snapshot apart); otherwise a dated snapshot
        (``...-2025-09-15``, ``...-latest``) or a registry alias resolves to its base model's price.
        """
        region = normalize_region(region)
        for name in _price_candidates(model_name.strip(), {m for m, _ in self.prices}):
            price = self.prices.get((name, region))
            if price is not None:
                return price
        return None

    def models(self) -> list[str]:
        """The priced model names, sorted."""
        return sorted({m for m, _ in self.prices})


def _price_candidates(name: str, priced: set[str]) -> list[str]:
    """Names to try, most specific first: the name, its base model (longest prefix), its alias target."""
    out = [name]
    bases = [base for base in priced if name.startswith(base) and _SNAPSHOT_SUFFIX.match(name[len(base) :])]
    out.extend(sorted(bases, key=len, reverse=True))
    if name in ALIASES:
        out.append(ALIASES[name])
    return out


SHIPPED_PRICES = Path(__file__).with_name("prices.toml")  # package data, see pyproject


def _shipped_price_text() -> str:
    return SHIPPED_PRICES.read_text(encoding="utf-8")


def _parse_price_file(
    text: str, where: str, *, default_currency: str = ""
) -> tuple[dict[str, str], dict[tuple[str, str], ModelPrice]]:
    """Validate one price file; every problem is a UsageError naming the file and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"price file {where}: not valid TOML: {exc}") from None
    allowed_top = {"source", "source_url", "as_of", "currency", "models"}
    for key in data:
        if key not in allowed_top:
            raise UsageError(f"price file {where}: unknown top-level key {key!r} (expected {sorted(allowed_top)})")
    meta: dict[str, str] = {}
    for key in ("source", "source_url", "as_of", "currency"):
        if key in data:
            value = data[key]
            if not isinstance(value, str) or not value.strip():
                raise UsageError(f"price file {where}: {key!r} must be a non-empty string")
            meta[key] = value.strip()
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise UsageError(f"price file {where}: 'models' must be a table of [models.\"NAME\".REGION] tables")
    currency = meta.get("currency", default_currency)
    prices: dict[tuple[str, str], ModelPrice] = {}
    for model, regions in models.items():
        if not isinstance(regions, dict):
            raise UsageError(f"price file {where}: models.{model!r} must be a table of regions")
        for region, entry in regions.items():
            at = f"models.{model!r}.{region}"
            if not isinstance(entry, dict):
                raise UsageError(f"price file {where}: {at} must be a table of prices")
            for key in entry:
                if key not in PRICE_KEYS:
                    raise UsageError(f"price file {where}: {at}: unknown key {key!r} (expected {list(PRICE_KEYS)})")
            values: dict[str, float] = {}
            for key in PRICE_KEYS:
                if key not in entry:
                    raise UsageError(f"price file {where}: {at}: missing key {key!r}")
                number: Any = entry[key]
                if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
                    raise UsageError(f"price file {where}: {at}.{key} must be a number, not {number!r}")
                if number < 0:
                    raise UsageError(f"price file {where}: {at}.{key} must not be negative ({number})")
                values[key] = float(number)
            norm_region = normalize_region(region)
            prices[(model, norm_region)] = ModelPrice(model=model, region=norm_region, currency=currency, **values)
    return meta, prices


def load_prices(path: Path | None = None, *, extend: bool = True) -> PriceBook:
    """The price book: the shipped prices, extended (or, with ``extend=False``, replaced) by ``path``.

    When extending, each ``models."NAME".REGION`` entry of the user file replaces the shipped entry of
    the same model and region, and the user file's ``source``/``as_of`` (if given) describe the result.
    A user file must use the shipped currency when it extends; a replacing file must name its currency.
    """
    shipped_meta, shipped = _parse_price_file(_shipped_price_text(), "(shipped prices.toml)")
    if path is None:
        return PriceBook(
            shipped_meta["source"],
            shipped_meta["as_of"],
            shipped_meta["currency"],
            shipped,
            source_url=shipped_meta.get("source_url", ""),
        )
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"price file {path}: cannot read it: {exc.strerror or exc}") from None
    user_meta, user = _parse_price_file(text, str(path), default_currency=shipped_meta["currency"])
    if extend:
        currency = user_meta.get("currency", shipped_meta["currency"])
        if currency != shipped_meta["currency"]:
            raise UsageError(
                f"price file {path}: currency {currency!r} differs from the shipped "
                f"{shipped_meta['currency']!r}; "
                "a file in another currency must replace the shipped prices, not extend them"
            )
        merged = {**shipped, **user}
        source = user_meta.get("source", "")
        source = f"{shipped_meta['source']} + {source or path}"
        as_of = user_meta.get("as_of", shipped_meta["as_of"])
        url = user_meta.get("source_url", shipped_meta.get("source_url", ""))
        return PriceBook(source, as_of, currency, merged, source_url=url)
    for key in ("source", "as_of", "currency"):
        if key not in user_meta:
            raise UsageError(
                f"price file {path}: missing top-level key {key!r} (required when it replaces the shipped prices)"
            )
    return PriceBook(
        user_meta["source"], user_meta["as_of"], user_meta["currency"], user, source_url=user_meta.get("source_url", "")
    )


# ----------------------------------------------------------------------------- token estimates


@dataclass(frozen=True)
class LengthLine:
    """``max(floor, scale * (intercept + slope * x))``: a robust line through earlier runs, with a floor."""

    intercept: float
    slope: float
    floor: float
    scale: float = 1.0  # the mean of the residual factors: the line is a median fit, a total needs the mean

    def __call__(self, x: float) -> float:
        return max(self.floor, self.scale * (self.intercept + self.slope * x))


@dataclass(frozen=True)
class OutputFit:
    """The answer length learned from earlier runs for one model and modality setting
    (:mod:`batchqwen.calibrate` makes them): spoken seconds against input seconds (text+audio), text
    tokens per second of that speech, or text tokens against input seconds (text only)."""

    seconds: LengthLine | None  # output audio seconds vs input audio seconds; None in text-only mode
    text_tokens_per_second: float = 0.0
    text_tokens: LengthLine | None = None  # text-only mode: output text tokens vs input audio seconds
    rows: int = 0  # ok rows it was learned from


def modality_key(modalities: Sequence[str]) -> str:
    """``text,audio`` or ``text``: how a modality setting is named in results and calibrations."""
    return "text,audio" if "audio" in modalities else "text"


@dataclass(frozen=True)
class OutputAssumption:
    """How long the model's answer is assumed to be, since nothing about it is known before the run.

    The answer is taken to be ``output_seconds_per_item`` seconds of speech, or, when ``output_ratio``
    is set, that multiple of the item's input audio seconds (never less than 1 s). Its text (the
    transcript in text+audio mode, the answer in text-only mode) is ``text_tokens_per_second_of_speech``
    tokens per second of that speech (about 3: ~150 spoken words a minute, a little over one token each).
    """

    output_seconds_per_item: float = 8.0
    output_ratio: float | None = None
    text_tokens_per_second_of_speech: float = 3.0
    #: calibrated answer lengths by (model, modality key); a model and setting without one uses the above
    fits: Mapping[tuple[str, str], OutputFit] = field(default_factory=dict)
    calibrated_from: tuple[str, ...] = ()  # the runs the fits were learned from

    def __post_init__(self) -> None:
        if self.output_seconds_per_item < 0 or not math.isfinite(self.output_seconds_per_item):
            raise UsageError("output seconds per item must be a finite number >= 0")
        if self.output_ratio is not None and (self.output_ratio < 0 or not math.isfinite(self.output_ratio)):
            raise UsageError("output ratio must be a finite number >= 0")
        if self.text_tokens_per_second_of_speech < 0 or not math.isfinite(self.text_tokens_per_second_of_speech):
            raise UsageError("text tokens per second of speech must be a finite number >= 0")

    def output_seconds(self, input_audio_seconds: float) -> float:
        """Seconds of answer assumed for an item with this much input audio."""
        if self.output_ratio is not None:
            return max(1.0, self.output_ratio * input_audio_seconds)
        return self.output_seconds_per_item

    def describe(self) -> str:
        """One line for reports: the assumption the output figures rest on."""
        if self.output_ratio is not None:
            length = f"{self.output_ratio:g} x the input audio seconds (at least 1 s)"
        else:
            length = f"{self.output_seconds_per_item:g} s of speech per item"
        rate = self.text_tokens_per_second_of_speech
        fixed = f"output assumed: {length}; {rate:g} text tokens per second of speech"
        if not self.fits:
            return fixed
        groups = ", ".join(f"{model} ({key})" for model, key in sorted(self.fits))
        runs = ", ".join(self.calibrated_from)
        return f"output calibrated from {runs} for {groups}; otherwise {fixed}"

    def fit_for(self, model_name: str, modalities: Sequence[str]) -> OutputFit | None:
        """The calibrated answer length of this model and modality setting, if one was learned."""
        return self.fits.get((model_name, modality_key(modalities))) if self.fits else None


@dataclass(frozen=True)
class TokenEstimate:
    """Tokens of one item by modality (input exact by the rules, output from an assumption)."""

    input_text: int = 0
    input_audio: int = 0
    input_image: int = 0
    output_text: int = 0
    output_audio: int = 0

    @property
    def input_total(self) -> int:
        return self.input_text + self.input_audio + self.input_image

    @property
    def output_total(self) -> int:
        return self.output_text + self.output_audio

    @property
    def total(self) -> int:
        return self.input_total + self.output_total

    @property
    def text_only_input(self) -> bool:
        return self.input_audio == 0 and self.input_image == 0

    def as_dict(self) -> dict[str, int]:
        """Tokens keyed by modality name (``input_text`` ... ``output_audio``)."""
        return {name: int(getattr(self, name)) for name in MODALITIES}


def estimate_tokens(
    model: ModelInfo,
    *,
    audio_seconds: float,
    image_sizes: Sequence[tuple[int, int]],
    texts: Sequence[str | None],
    modalities: tuple[str, ...],
    output: OutputAssumption,
) -> TokenEstimate:
    """Tokens of one item. The one function both the dry run and the real run's estimate columns use.

    ``audio_seconds`` is the audio actually sent (silence padding included), ``image_sizes`` the sizes
    actually sent (after resizing), ``texts`` the instructions and prompt. Output comes from ``output``;
    in text-only mode there are no output audio tokens.
    """
    input_audio = audio_tokens(model, audio_seconds)
    input_image = sum(image_tokens(model, w, h) for w, h in image_sizes)
    input_text = sum(count_text_tokens(t) for t in texts)
    seconds = output.output_seconds(audio_seconds)
    output_text = math.ceil(round(seconds * output.text_tokens_per_second_of_speech, 6))
    fit = output.fit_for(model.name, modalities)
    if fit is not None and fit.seconds is not None:  # calibrated, text+audio
        seconds = fit.seconds(audio_seconds)
        output_text = math.ceil(round(seconds * fit.text_tokens_per_second, 6))
    elif fit is not None and fit.text_tokens is not None:  # calibrated, text only: no speech
        seconds, output_text = 0.0, math.ceil(round(fit.text_tokens(audio_seconds), 6))
    output_audio = audio_tokens(model, seconds) if "audio" in modalities else 0
    return TokenEstimate(input_text, input_audio, input_image, output_text, output_audio)


@dataclass(frozen=True)
class TurnInput:
    """What one turn of a session sends, for the estimate: ``texts`` stay in the conversation (input text
    items, billed again by every later response), ``response_texts`` go with this turn's responses only
    (a prompt folded into that response's instructions on a model without text input)."""

    audio_seconds: float = 0.0
    image_sizes: Sequence[tuple[int, int]] = ()
    texts: Sequence[str | None] = ()
    response_texts: Sequence[str | None] = ()


#: output text tokens assumed for one function call (its arguments), and input text tokens for the output
#: a tool returns, when nothing better is known (``--tool-output`` gives the latter exactly)
ASSUMED_CALL_TOKENS = 40
ASSUMED_TOOL_OUTPUT_TOKENS = 20


@dataclass(frozen=True)
class ToolAssumption:
    """Tool rounds for the estimate: ``rounds_per_turn`` rounds (a call, its output, one more response)
    per turn (``--assume-tool-rounds``); every response also bills the declarations of the tools offered."""

    rounds_per_turn: int = 1
    declaration_tokens: int = 0
    call_tokens: int = ASSUMED_CALL_TOKENS
    output_tokens: int = ASSUMED_TOOL_OUTPUT_TOKENS

    def __post_init__(self) -> None:
        if self.rounds_per_turn < 0:
            raise UsageError("--assume-tool-rounds must be 0 or more")


def estimate_session_tokens(
    model: ModelInfo,
    *,
    turns: Sequence[TurnInput],
    session_texts: Sequence[str | None],
    modalities: tuple[str, ...],
    output: OutputAssumption,
    tools: ToolAssumption | None = None,
) -> TokenEstimate:
    """Tokens of one session of one or more turns, each answered by one response (plus the assumed tool
    rounds), every response re-billing the conversation so far: the session's instructions and the tools'
    declarations, every earlier turn's input and tool outputs, the text of every earlier answer and call
    (the realtime protocol's conversation context: earlier output becomes later input), and its own turn.
    A single turn without tools is :func:`estimate_tokens` exactly.
    """
    rounds = tools.rounds_per_turn if tools is not None else 0
    declarations = tools.declaration_tokens if tools is not None else 0
    call_tokens = tools.call_tokens if tools is not None else 0
    output_tokens = tools.output_tokens if tools is not None else 0
    base_text = sum(count_text_tokens(t) for t in session_texts) + declarations
    history_text = history_audio = history_image = 0  # earlier turns' input, outputs and answers
    total = TokenEstimate()
    for turn in turns:
        own_text = sum(count_text_tokens(t) for t in turn.texts)
        own_audio = audio_tokens(model, turn.audio_seconds)
        own_image = sum(image_tokens(model, w, h) for w, h in turn.image_sizes)
        answer = estimate_tokens(
            model, audio_seconds=turn.audio_seconds, image_sizes=(), texts=(), modalities=modalities, output=output
        )
        context_text = base_text + history_text + own_text + sum(count_text_tokens(t) for t in turn.response_texts)
        said = 0  # this turn's calls and tool outputs so far, billed again by its next response
        for round_number in range(rounds + 1):
            last = round_number == rounds
            total = TokenEstimate(
                total.input_text + context_text + said,
                total.input_audio + history_audio + own_audio,
                total.input_image + history_image + own_image,
                total.output_text + (answer.output_text if last else call_tokens),
                total.output_audio + (answer.output_audio if last else 0),
            )
            said += 0 if last else call_tokens + output_tokens
        history_text += own_text + said + answer.output_text
        history_audio += own_audio
        history_image += own_image
    return total


# ----------------------------------------------------------------------------- money


def cost_breakdown(
    price: ModelPrice,
    *,
    input_text: int,
    input_audio: int,
    input_image: int,
    output_text: int,
    output_audio: int,
    text_only_input: bool,
    audio_output: bool,
) -> dict[str, float]:
    """Money by modality under the billing rule (output text is free when the output has audio)."""
    if audio_output:
        out_text, out_audio = 0.0, output_audio * price.output_text_audio
    else:
        rate = price.output_text_textonly if text_only_input else price.output_text_multimodal
        out_text, out_audio = output_text * rate, 0.0
    return {
        "input_text": input_text * price.input_text / PER_TOKENS,
        "input_audio": input_audio * price.input_audio / PER_TOKENS,
        "input_image": input_image * price.input_image / PER_TOKENS,
        "output_text": out_text / PER_TOKENS,
        "output_audio": out_audio / PER_TOKENS,
    }


def cost_of_tokens(
    price: ModelPrice,
    *,
    input_text: int,
    input_audio: int,
    input_image: int,
    output_text: int,
    output_audio: int,
    text_only_input: bool,
    audio_output: bool,
) -> float:
    """Money for these tokens in ``price.currency`` under the billing rule (see the module docstring)."""
    return sum(
        cost_breakdown(
            price,
            input_text=input_text,
            input_audio=input_audio,
            input_image=input_image,
            output_text=output_text,
            output_audio=output_audio,
            text_only_input=text_only_input,
            audio_output=audio_output,
        ).values()
    )


def cost_of_estimate(price: ModelPrice, estimate: TokenEstimate, *, modalities: tuple[str, ...]) -> float:
    """Money for an estimate; the output is billed as audio when ``modalities`` include audio."""
    return cost_of_tokens(
        price,
        **estimate.as_dict(),
        text_only_input=estimate.text_only_input,
        audio_output="audio" in modalities,
    )


def _scaled(parts: Sequence[int], total: int) -> list[int]:
    """Split ``total`` in the proportions of ``parts`` (largest remainder, so the sum is exact)."""
    weight = sum(parts)
    if weight <= 0:
        return [0 for _ in parts]
    raw = [total * p / weight for p in parts]
    out = [math.floor(r) for r in raw]
    order = sorted(range(len(parts)), key=lambda i: raw[i] - out[i], reverse=True)
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def usage_tokens(
    usage: Usage, *, estimate: TokenEstimate | None, modalities: tuple[str, ...]
) -> tuple[TokenEstimate, str]:
    """Reported usage split by modality, and the basis of the split.

    * ``"usage"``: the service gave a breakdown. Image tokens have no documented field: input tokens
      beyond text + audio are taken as image tokens when the item sent images (per the estimate), else
      as text; output tokens beyond the reported text + audio likewise go to the output's main modality.
    * ``"estimate"``: no breakdown; the reported input and output totals are split in the proportions of
      the estimate (the totals are the service's, only the split is estimated).
    * ``"totals"``: no breakdown and no estimate (or an estimate with nothing on that side): input is taken
      as audio (a voice batch's main, and dearest, input), output as audio or text by the modalities.
    """
    audio_output = "audio" in modalities
    if usage.has_breakdown:
        in_text = usage.input_text_tokens or 0
        in_audio = usage.input_audio_tokens or 0
        in_image = usage.input_image_tokens or 0
        rest = max(0, usage.input_tokens - in_text - in_audio - in_image)
        if usage.input_image_tokens is None and estimate is not None and estimate.input_image > 0:
            in_image += rest
        else:
            in_text += rest
        out_text = usage.output_text_tokens or 0
        out_audio = usage.output_audio_tokens or 0
        out_rest = max(0, usage.output_tokens - out_text - out_audio)
        if audio_output:
            out_audio += out_rest
        else:
            out_text += out_rest
        return TokenEstimate(in_text, in_audio, in_image, out_text, out_audio), "usage"
    basis = "estimate"
    if estimate is not None and estimate.input_total > 0:
        in_text, in_audio, in_image = _scaled(
            [estimate.input_text, estimate.input_audio, estimate.input_image], usage.input_tokens
        )
    else:
        in_text, in_audio, in_image, basis = 0, usage.input_tokens, 0, "totals"
    if estimate is not None and estimate.output_total > 0:
        # in text+audio mode the reported output includes the transcript's text tokens
        parts = [estimate.output_text, estimate.output_audio if audio_output else 0]
        out_text, out_audio = _scaled(parts, usage.output_tokens)
    else:
        out_text, out_audio = (0, usage.output_tokens) if audio_output else (usage.output_tokens, 0)
        basis = "totals"
    return TokenEstimate(in_text, in_audio, in_image, out_text, out_audio), basis


def cost_of_usage(
    price: ModelPrice,
    usage: Usage,
    *,
    estimate: TokenEstimate | None,
    modalities: tuple[str, ...],
) -> tuple[float, str]:
    """Money for reported usage and its basis (``"usage"``, ``"estimate"`` or ``"totals"``).

    See :func:`usage_tokens` for how a missing breakdown is filled in. In text+audio mode the output's
    text tokens (the transcript) are all in the reported text count and are not billed.
    """
    tokens, basis = usage_tokens(usage, estimate=estimate, modalities=modalities)
    cost = cost_of_tokens(
        price,
        **tokens.as_dict(),
        text_only_input=tokens.text_only_input,
        audio_output="audio" in modalities,
    )
    return cost, basis
