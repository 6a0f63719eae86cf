"""The token rules and the billing rule, with worked examples computed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from dashscope.tokenizers import get_tokenizer

from batchqwen.cost import (
    OutputAssumption,
    TokenEstimate,
    cost_of_estimate,
    cost_of_tokens,
    cost_of_usage,
    estimate_tokens,
    load_prices,
    usage_tokens,
)
from batchqwen.errors import UsageError
from batchqwen.models import audio_tokens, get_model, image_tokens
from batchqwen.realtime.events import Usage
from batchqwen.tokens import count_text_tokens

FLASH = get_model("qwen3-omni-flash-realtime")
TURBO = get_model("qwen-omni-turbo-realtime")
PROMPT = "Describe what you hear in one short sentence, please. 请用一句话描述你听到的内容。"


# ----------------------------------------------------------------------------- token rules


@pytest.mark.parametrize(
    ("model", "seconds", "tokens"),
    [
        (FLASH, 0.4, 13),  # shorter than 1 s bills as 1 s: 12.5 tokens, rounded up
        (FLASH, 10.0, 125),
        (FLASH, 1.01, 13),  # 12.625 rounds up
        (TURBO, 0.4, 25),
        (TURBO, 10.0, 250),
        (FLASH, 0.0, 0),  # no audio, no tokens (padding is the caller's business)
    ],
)
def test_audio_tokens_worked_examples(model: object, seconds: float, tokens: int) -> None:
    assert audio_tokens(model, seconds) == tokens  # type: ignore[arg-type]


def test_image_tokens_worked_examples() -> None:
    # 1920x1080 on flash: 60 x 34 = 2040 blocks of 32 px, clamped at 1280
    assert image_tokens(FLASH, 1920, 1080) == 1280
    # 224x224 on turbo: 8 x 8 blocks of 28 px
    assert image_tokens(TURBO, 224, 224) == 64
    # partial blocks count, tiny images are clamped up to 4
    assert image_tokens(FLASH, 640, 360) == 20 * 12
    assert image_tokens(TURBO, 10, 10) == 4


def test_text_tokens_match_dashscope_tokenizer() -> None:
    expected = len(get_tokenizer("qwen-turbo").encode(PROMPT))
    assert expected > 10
    assert count_text_tokens(PROMPT) == expected


# ----------------------------------------------------------------------------- estimate_tokens


def test_estimate_tokens_text_and_audio() -> None:
    est = estimate_tokens(
        FLASH,
        audio_seconds=10.0,
        image_sizes=[(1920, 1080), (640, 360)],
        texts=[PROMPT, None, "Be brief."],
        modalities=("text", "audio"),
        output=OutputAssumption(output_seconds_per_item=8.0, text_tokens_per_second_of_speech=3.0),
    )
    assert est.input_audio == 125
    assert est.input_image == 1280 + 240
    assert est.input_text == count_text_tokens(PROMPT) + count_text_tokens("Be brief.")
    assert est.output_audio == 100  # 8 s x 12.5
    assert est.output_text == 24  # 8 s x 3
    assert est.total == est.input_total + est.output_total == 125 + 1520 + est.input_text + 124


def test_estimate_tokens_text_only_and_ratio() -> None:
    est = estimate_tokens(
        TURBO,
        audio_seconds=4.0,
        image_sizes=[],
        texts=[],
        modalities=("text",),
        output=OutputAssumption(output_ratio=0.5, text_tokens_per_second_of_speech=3.0),
    )
    assert (est.input_audio, est.output_audio, est.output_text) == (100, 0, 6)  # 2 s of answer, as text
    assert "0.5 x the input audio seconds" in OutputAssumption(output_ratio=0.5).describe()
    with pytest.raises(UsageError):
        OutputAssumption(output_seconds_per_item=-1)


# ----------------------------------------------------------------------------- billing rule


def test_billing_text_audio_output_bills_audio_tokens_only() -> None:
    price = load_prices().lookup("qwen3-omni-flash-realtime", "cn-beijing")
    assert price is not None
    # 125 audio in, 40 text in, 100 audio out + 24 transcript tokens (not billed)
    cost = cost_of_tokens(
        price,
        input_text=40,
        input_audio=125,
        input_image=0,
        output_text=24,
        output_audio=100,
        text_only_input=False,
        audio_output=True,
    )
    by_hand = (40 * 2.2 + 125 * 18.9 + 100 * 75.1) / 1_000_000  # 88 + 2362.5 + 7510 = 9960.5 per 1M
    assert cost == pytest.approx(by_hand, rel=1e-12)
    assert cost == pytest.approx(0.0099605, rel=1e-12)


def test_billing_text_only_output_depends_on_input() -> None:
    price = load_prices().lookup("qwen-omni-turbo-realtime", "ap-southeast-1")
    assert price is not None
    common = {
        "input_text": 1000,
        "input_image": 0,
        "output_text": 500,
        "output_audio": 0,
        "audio_output": False,
    }
    text_only = cost_of_tokens(price, input_audio=0, text_only_input=True, **common)  # type: ignore[arg-type]
    multimodal = cost_of_tokens(price, input_audio=250, text_only_input=False, **common)  # type: ignore[arg-type]
    assert text_only == pytest.approx((1000 * 1.982 + 500 * 7.853) / 1e6)
    assert multimodal == pytest.approx((1000 * 1.982 + 250 * 32.586 + 500 * 18.495) / 1e6)


def test_cost_of_estimate_and_usage_agree_when_usage_equals_estimate() -> None:
    price = load_prices().lookup("qwen3-omni-flash-realtime", "cn-beijing")
    assert price is not None
    est = TokenEstimate(input_text=228, input_audio=108, output_text=9, output_audio=32)
    # the usage example of the reference: 336 in (228 text + 108 audio), 41 out (9 text + 32 audio)
    usage = Usage(
        total_tokens=377,
        input_tokens=336,
        output_tokens=41,
        input_text_tokens=228,
        input_audio_tokens=108,
        output_text_tokens=9,
        output_audio_tokens=32,
    )
    by_hand = (228 * 2.2 + 108 * 18.9 + 32 * 75.1) / 1e6
    cost, basis = cost_of_usage(price, usage, estimate=None, modalities=("text", "audio"))
    assert basis == "usage"
    assert cost == pytest.approx(by_hand)
    assert cost_of_estimate(price, est, modalities=("text", "audio")) == pytest.approx(by_hand)


def test_usage_without_breakdown_uses_estimate_split_scaled_to_totals() -> None:
    est = TokenEstimate(input_text=100, input_audio=300, input_image=0, output_text=25, output_audio=75)
    usage = Usage(total_tokens=600, input_tokens=400 * 1, output_tokens=200)
    tokens, basis = usage_tokens(usage, estimate=est, modalities=("text", "audio"))
    assert basis == "estimate"
    assert (tokens.input_text, tokens.input_audio, tokens.input_image) == (100, 300, 0)
    assert (tokens.output_text, tokens.output_audio) == (50, 150)
    assert tokens.input_total == 400 and tokens.output_total == 200  # the service's totals are kept
    odd = usage_tokens(Usage(input_tokens=7, output_tokens=3), estimate=est, modalities=("text", "audio"))[0]
    assert odd.input_total == 7 and odd.output_total == 3  # largest remainder keeps sums exact
    bare, basis = usage_tokens(Usage(input_tokens=50, output_tokens=20), estimate=None, modalities=("text",))
    assert basis == "totals"
    assert (bare.input_audio, bare.output_text) == (50, 20)


def test_usage_breakdown_missing_image_field_counts_rest_as_images() -> None:
    est = TokenEstimate(input_text=10, input_audio=125, input_image=64, output_text=3)
    usage = Usage(input_tokens=200, output_tokens=5, input_text_tokens=11, input_audio_tokens=125)
    tokens, basis = usage_tokens(usage, estimate=est, modalities=("text",))
    assert basis == "usage"
    assert (tokens.input_text, tokens.input_audio, tokens.input_image, tokens.output_text) == (11, 125, 64, 5)


# ----------------------------------------------------------------------------- price book


def test_shipped_prices_and_snapshot_lookup() -> None:
    book = load_prices()
    assert (book.currency, book.as_of) == ("CNY", "2026-11")
    assert "pricing" in book.source
    flash = book.lookup("qwen3-omni-flash-realtime-2025-12-01", "cn-beijing")
    assert flash is not None and flash.output_text_audio == 75.1 and flash.currency == "CNY"
    turbo = book.lookup("qwen-omni-turbo-realtime-latest", "singapore")
    assert turbo is not None and turbo.input_audio == 32.586
    alias = book.lookup("qwen-omni-realtime", "cn-beijing")
    assert alias is not None and alias.model == "qwen3-omni-flash-realtime"


def test_unknown_price_is_none_not_zero() -> None:
    book = load_prices()
    assert book.lookup("qwen3.5-omni-flash-realtime", "cn-beijing") is None
    assert book.lookup("qwen3.5-omni-plus-realtime", "ap-southeast-1") is None
    assert book.lookup("qwen3-omni-flash-realtime", "us-east-1") is None
    assert book.lookup("qwen3-omni-flash-realtime-extra", "cn-beijing") is None  # not a snapshot suffix


USER_PRICES = """
source = "our contract, 2026-12"
as_of = "2026-12"

[models."qwen3.5-omni-flash-realtime".cn-beijing]
input_text = 1
input_audio = 2
input_image = 3
output_text_textonly = 4
output_text_multimodal = 5
output_text_audio = 6

[models."qwen3-omni-flash-realtime".cn-beijing]
input_text = 2
input_audio = 18
input_image = 3
output_text_textonly = 8
output_text_multimodal = 15
output_text_audio = 70
"""


def test_user_price_file_extends_or_replaces(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(USER_PRICES, encoding="utf-8")
    book = load_prices(path)
    new = book.lookup("qwen3.5-omni-flash-realtime", "cn-beijing")
    assert new is not None and new.output_text_audio == 6.0 and new.currency == "CNY"
    changed = book.lookup("qwen3-omni-flash-realtime", "cn-beijing")
    assert changed is not None and changed.output_text_audio == 70.0
    kept = book.lookup("qwen-omni-turbo-realtime", "cn-beijing")
    assert kept is not None and kept.input_audio == 25.0
    assert book.as_of == "2026-12" and "our contract" in book.source

    with pytest.raises(UsageError, match="currency"):
        load_prices(path, extend=False)  # a replacing file must name its currency
    path.write_text('currency = "USD"\n' + USER_PRICES, encoding="utf-8")
    replaced = load_prices(path, extend=False)
    assert replaced.currency == "USD"
    assert replaced.lookup("qwen-omni-turbo-realtime", "cn-beijing") is None
    with pytest.raises(UsageError, match="differs"):
        load_prices(path)  # USD cannot extend CNY prices


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("models = 3", "'models'"),
        ("colour = 'red'", "'colour'"),
        ('[models."m".cn-beijing]\ninput_text = 1', "missing key 'input_audio'"),
        ('[models."m".cn-beijing]\ninput_txt = 1', "unknown key 'input_txt'"),
        (
            '[models."m".cn-beijing]\ninput_text = "cheap"\ninput_audio = 1\ninput_image = 1\n'
            "output_text_textonly = 1\noutput_text_multimodal = 1\noutput_text_audio = 1",
            "input_text must be a number",
        ),
        (
            '[models."m".cn-beijing]\ninput_text = -1\ninput_audio = 1\ninput_image = 1\n'
            "output_text_textonly = 1\noutput_text_multimodal = 1\noutput_text_audio = 1",
            "must not be negative",
        ),
        ("this is = = not toml", "not valid TOML"),
    ],
)
def test_bad_price_file_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=names):
        load_prices(path)


def test_missing_price_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        load_prices(tmp_path / "nope.toml")
