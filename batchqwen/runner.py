"""The scheduler: every manifest item through prepare -> session -> result, a bounded number at once.

``process_item`` is the whole work of one item as a plain async function of (item, context, limiter),
with no global state, so the same function can later run inside other workers with a shared limiter.
``run`` drives it over a manifest: resume from the journal, rate limits, retries, the budget cap,
fatal-error stop, signals, progress, and the final Parquet and summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from batchqwen import conversation, cost, longaudio, manifest, media, quotas, results, split, tools
from batchqwen.breaker import Breaker, EventSink
from batchqwen.config import RunConfig
from batchqwen.errors import (
    MODEL_UNAVAILABLE_CODES,
    AdmissionClosed,
    BatchQwenError,
    BudgetExceeded,
    ExtractError,
    FatalRunError,
    ItemError,
    ModelUnavailable,
    OutputUnwritable,
    ServerError,
    ServiceUnreachable,
    ToolRoundsExceeded,
    UsageError,
)
from batchqwen.exitcodes import EXIT_ABORTED, EXIT_ENVIRONMENT, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_SOME_FAILED
from batchqwen.extract import Extraction
from batchqwen.items import (
    INPUT_BYTES_PER_SECOND,
    ConversationTurn,
    Item,
    PreparedInput,
    TurnOutput,
    TurnRequest,
    TurnResult,
)
from batchqwen.limiter import RUN_RAMP_SECONDS, Limiter
from batchqwen.lock import RunLock
from batchqwen.models import ModelInfo, get_model
from batchqwen.plan import ItemPlan, plan_item
from batchqwen.realtime.client import ClientSettings, run_turn, url_for
from batchqwen.realtime.events import Usage
from batchqwen.realtime.gateways import host_of
from batchqwen.realtime.protocol import FunctionCall, ToolOutput
from batchqwen.retry import backoff_delays, classify, is_connection_failure, is_throttling
from batchqwen.runevents import RUN_EVENTS_NAME, RunEvents
from batchqwen.storage import fetch
from batchqwen.storage.locations import Remote
from batchqwen.storage.outputs import RemoteOut

log = logging.getLogger("batchqwen")

SESSION_LIFETIME_MARGIN = 60.0  # a session ends this long before the model's own lifetime cut


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff settings. Failures (dropped, server_error, timeouts) are bounded by --max-attempts;
    throttling refusals are not billed and are bounded by ``max_throttled`` instead, with a longer,
    shared cool-down (the account's window has to roll on before anyone may start again)."""

    base_delay: float = 0.5
    max_delay: float = 30.0
    throttle_base_delay: float = 2.0
    throttle_max_delay: float = 60.0
    max_throttled: int = 30
    #: connection failures one item may see while the breaker stays closed (sporadic, not an outage)
    max_connect_failures: int = 20


@dataclass(frozen=True)
class ItemContext:
    """What ``process_item`` needs besides the item: settings only, no shared mutable state."""

    config: RunConfig
    client: ClientSettings
    prices: cost.PriceBook
    output: cost.OutputAssumption
    out_dir: Path
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy())
    toolbox: tools.Toolbox | None = None  # --tools: shared by every session (it holds no per-item state)
    extraction: Extraction | None = None  # --extract
    cache: fetch.DownloadCache | None = None  # where remote media are downloaded before decoding
    outputs: RemoteOut | None = None  # a remote OUT: each WAV is stored there before its item is done


@dataclass
class RunOutcome:
    exit_code: int
    reason: str
    summary: dict[str, Any] = field(default_factory=dict)
    results_path: Path | None = None


# ----------------------------------------------------------------------------- one item


def estimate_for(plan: ItemPlan, prepared: PreparedInput, ctx: ItemContext) -> tuple[cost.TokenEstimate, float | None]:
    estimate = cost.estimate_tokens(
        plan.model,
        audio_seconds=prepared.audio_seconds,
        image_sizes=[(image.width, image.height) for image in prepared.images],
        texts=[plan.instructions, plan.prompt],
        modalities=plan.modalities,
        output=ctx.output,
    )
    price = ctx.prices.lookup(plan.model.name, ctx.config.resolved_region)
    money = None if price is None else cost.cost_of_estimate(price, estimate, modalities=plan.modalities)
    return estimate, money


ITEM_TIMEOUT_MARGIN = 300.0  # beyond the streaming time: the service's answer and the end of the session


def item_timeout_for(config: RunConfig, model: ModelInfo, audio_seconds: float) -> float:
    """The whole-session cap of one item: ``--item-timeout`` when given, else what the item needs (its
    streaming time at ``--pace`` plus a margin); never past the model's session lifetime."""
    lifetime = model.session_lifetime_seconds - SESSION_LIFETIME_MARGIN
    needed = config.item_timeout
    if needed is None:
        streaming = audio_seconds / config.pace if config.pace > 0 else 0.0
        needed = streaming + ITEM_TIMEOUT_MARGIN
    return min(needed, lifetime)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ReadyItem:
    """An item planned and decoded, waiting for its session."""

    item: Item
    plan: ItemPlan
    media: PreparedInput
    turns: tuple[ConversationTurn, ...] = ()  # a conversation row: every turn, decoded (media is the first's)
    tools: tuple[str, ...] = ()  # the tools this item offers
    #: too long for one session: its segments, each run as a session of its own (``media`` then has its images)
    recording: longaudio.LongRecording | None = None


def estimate_ready(ready: ReadyItem, ctx: ItemContext) -> tuple[cost.TokenEstimate, float | None]:
    """:func:`estimate_for`, counting every turn (the re-billed context) and the assumed tool rounds."""
    plan = ready.plan
    if not ready.turns and not ready.tools:
        return estimate_for(plan, ready.media, ctx)
    if ready.turns:
        turns = conversation.turn_inputs(ready.turns)
    else:
        sizes = [(image.width, image.height) for image in ready.media.images]
        turns = [cost.TurnInput(ready.media.audio_seconds, sizes, [plan.prompt])]
    assumption = None
    if ready.tools and ctx.toolbox is not None:
        assumption = ctx.toolbox.assumption(ready.tools, ctx.config.assume_tool_rounds)
    estimate = cost.estimate_session_tokens(
        plan.model,
        turns=turns,
        session_texts=[plan.instructions],
        modalities=plan.modalities,
        output=ctx.output,
        tools=assumption,
    )
    price = ctx.prices.lookup(plan.model.name, ctx.config.resolved_region)
    money = None if price is None else cost.cost_of_estimate(price, estimate, modalities=plan.modalities)
    return estimate, money


async def process_item(
    item: Item,
    ctx: ItemContext,
    limiter: Limiter,
    *,
    event_log: Callable[[str, str, dict[str, Any]], None] | None = None,
    decoder: Executor | None = None,
    breaker: Breaker | None = None,
    run_events: EventSink | None = None,
) -> results.ResultRow:
    """Prepare, stream and collect one item; return its result row (:func:`prepare` then :func:`session`).

    Decoding runs in ``decoder`` (a process pool spreads it over the cores) or, by default, in a thread.
    ``breaker`` (shared by the run's workers) takes the connection-level failures, which are never
    charged to the item; ``run_events`` records throttling cool-downs.

    Item-level problems (bad media, a permanent server refusal, retries exhausted) become a failed row.
    Raises FatalRunError for account-level errors, BudgetExceeded when the cap stops new sessions,
    ServiceUnreachable when the breaker gives up, OutputUnwritable when the WAV cannot be stored.
    """
    ready = await prepare(item, ctx, decoder=decoder)
    if isinstance(ready, results.ResultRow):
        return ready
    return await session(ready, ctx, limiter, event_log=event_log, breaker=breaker, run_events=run_events)


async def prepare(item: Item, ctx: ItemContext, *, decoder: Executor | None = None) -> ReadyItem | results.ResultRow:
    """Plan and decode one item (no connection); a row the model cannot take or bad media is a failed row."""
    config = ctx.config
    secrets = [config.api_key] if config.api_key else []
    started = _now()
    talk: conversation.ConversationPlan | None = None
    try:
        manifest.validate_item(item)
        options: dict[str, Any] = dict(
            model=config.model,
            voice=config.voice,
            modalities=config.modalities,
            instructions=config.instructions,
            pad_silence_seconds=config.pad_silence_seconds,
            target_language=config.translate_to,
            source_language=config.source_language,
            video_fps=config.video_fps,
        )
        if item.turns:
            talk = conversation.plan_conversation(item, **options)
            plan = talk.session
        else:
            plan = plan_item(item, **options)
        offered = tools.offered_tools(plan.model, item.tools, ctx.toolbox, config.extract)
    except (ItemError, UsageError) as exc:
        return results.failed_row(item, exc, attempts=0, secrets=secrets, started_at=started, finished_at=_now())
    chosen = {
        "model": plan.model.name,
        "voice": plan.voice,
        "modalities": ",".join(plan.modalities),
        "target_language": plan.target_language,
        "notes": list(plan.notes),
    }
    local = item  # remote media downloaded into the run's cache, held until decoded
    try:
        if talk is not None:
            decode_turns = functools.partial(
                conversation.prepare_turns, talk, video_frames=config.video_frames, image_frames=config.image_frames
            )
            turns = await asyncio.get_running_loop().run_in_executor(decoder, decode_turns)
            return ReadyItem(item, plan, turns[0].media, turns=turns, tools=offered)
        if ctx.cache is not None and fetch.remote_refs(item):
            local = await asyncio.to_thread(fetch.localise, item, ctx.cache)
        # an item too long for one session is measured and cut here (or refused with --split never); a
        # fetched file is copied to the spool, since the cache may let it go before the segments are sent
        decode = functools.partial(
            longaudio.prepare,
            local,
            budget=session_budget(plan, config, ctx.output),
            split=config.split,
            spool_dir=ctx.out_dir / longaudio.SPOOL_DIR,
            spool_always=local is not item,
            video_fps=plan.video_fps,
            pad_silence_seconds=plan.pad_silence_seconds,
            video_frames=config.video_frames,
            image_frames=config.image_frames,
            images_per_second=plan.images_per_second,
            pad_under_frames=plan.model.max_images_per_second is not None,
        )
        prepared = await asyncio.get_running_loop().run_in_executor(decoder, decode)
    except ItemError as exc:
        return results.failed_row(
            item, exc, attempts=0, secrets=secrets, started_at=started, finished_at=_now(), **chosen
        )
    finally:
        if local is not item and ctx.cache is not None:
            fetch.release(item, ctx.cache)
    if isinstance(prepared, longaudio.LongRecording):
        media_of_all = PreparedInput(images=prepared.images, notes=prepared.notes)
        return ReadyItem(item, plan, media_of_all, tools=offered, recording=prepared)
    return ReadyItem(item, plan, prepared, tools=offered)


def session_budget(plan: ItemPlan, config: RunConfig, output: cost.OutputAssumption) -> split.SessionBudget:
    """What one session of the item's model can take (see :mod:`batchqwen.split`); at ``--pace`` the
    streaming must also end in time for the answer within the session lifetime (``item_timeout_for``)."""
    return split.session_budget(
        plan.model,
        texts=(plan.instructions, plan.prompt),
        modalities=plan.modalities,
        output=output,
        pace=config.pace,
        answer_seconds=split.LIFETIME_KEPT_SECONDS,  # ITEM_TIMEOUT_MARGIN + SESSION_LIFETIME_MARGIN
    )


async def _long_recording(
    ready: ReadyItem,
    ctx: ItemContext,
    limiter: Limiter,
    event_log: Callable[[str, str, dict[str, Any]], None] | None,
    breaker: Breaker | None,
    run_events: EventSink | None,
    *,
    carried: int,
    record_partial: Callable[[dict[str, Any]], None] | None,
) -> results.ResultRow:
    """A long recording's segments, each a session of its own through :func:`session`: the item's one row."""
    assert ready.recording is not None

    async def one_segment(segment_media: PreparedInput, wav: Path) -> results.ResultRow:
        segment = ReadyItem(ready.item, ready.plan, segment_media, tools=ready.tools)
        return await session(
            segment, ctx, limiter, event_log=event_log, breaker=breaker, run_events=run_events, wav_file=wav
        )

    def half_done(row: results.ResultRow) -> None:
        if record_partial is not None:
            row.failed_attempt_tokens = (row.failed_attempt_tokens or 0) + carried
            record_partial(row.to_record())

    row = await longaudio.run_segments(
        ready.item, ready.recording, one_segment, out_dir=ctx.out_dir, notes=ready.plan.notes, progress=half_done
    )
    if carried:  # billed by an earlier run that left the item half-done
        row.failed_attempt_tokens = (row.failed_attempt_tokens or 0) + carried
    return row


async def session(
    ready: ReadyItem,
    ctx: ItemContext,
    limiter: Limiter,
    *,
    event_log: Callable[[str, str, dict[str, Any]], None] | None = None,
    breaker: Breaker | None = None,
    run_events: EventSink | None = None,
    carried_tokens: int = 0,
    record_partial: Callable[[dict[str, Any]], None] | None = None,
    wav_file: Path | None = None,
) -> results.ResultRow:
    """Stream one prepared item through a session (with retries) and collect its result row.

    A conversation hands every turn but its last to ``record_partial`` (a ``partial`` journal record: the
    turns so far and the tokens billed, ``carried_tokens`` of earlier runs included), so that a run killed
    mid-conversation still counts them when the item runs again whole.

    A long recording (``ready.recording``) runs as one session per segment, in order, each through this
    function (``wav_file``: where that segment's answer goes); the half-done item goes to ``record_partial``
    after each segment but the last, the same way.
    """
    if ready.recording is not None:
        return await _long_recording(
            ready, ctx, limiter, event_log, breaker, run_events, carried=carried_tokens, record_partial=record_partial
        )
    config = ctx.config
    secrets = [config.api_key] if config.api_key else []
    started = _now()
    item, plan, prepared = ready.item, ready.plan, ready.media
    whole = conversation.combined_media(ready.turns) if ready.turns else prepared  # the row's totals
    chosen = {
        "model": plan.model.name,
        "voice": plan.voice,
        "modalities": ",".join(plan.modalities),
        "target_language": plan.target_language,
        "notes": [*plan.notes, *whole.notes],
    }
    estimate, est_cost = estimate_ready(ready, ctx)
    price = ctx.prices.lookup(plan.model.name, config.resolved_region)
    known: dict[str, Any] = {
        **chosen,
        "started_at": started,
        "input_audio_seconds": round(whole.audio_seconds, 3),
        "padded_silence_seconds": whole.padded_silence_seconds,
        "image_count": len(whole.images),
        "segments": 1,
        **{f"est_{name}_tokens": value for name, value in estimate.as_dict().items()},
        "est_cost": est_cost,
        "currency": ctx.prices.currency,
    }
    request = TurnRequest(
        model=plan.model,
        voice=plan.voice,
        modalities=plan.modalities,
        media=prepared,
        instructions=plan.instructions,
        prompt=plan.prompt,
        transcribe_input=config.transcribe_input,
        target_language=plan.target_language,
        source_language=plan.source_language,
        chunk_bytes=round(config.chunk_ms * INPUT_BYTES_PER_SECOND / 1000 / 2) * 2,
        session_options={"tools": ctx.toolbox.declarations(ready.tools)} if ready.tools and ctx.toolbox else {},
        turns=ready.turns,
    )
    session_timeout = item_timeout_for(config, plan.model, whole.audio_seconds)
    if ready.tools and config.item_timeout is None:  # every tool round may take its whole timeout
        rounds = len(request.all_turns) * config.max_tool_rounds * config.tool_timeout
        session_timeout = min(session_timeout + rounds, plan.model.session_lifetime_seconds - SESSION_LIFETIME_MARGIN)
    settings = replace(ctx.client, session_timeout=session_timeout)
    if event_log is not None:
        settings = replace(settings, event_log=lambda direction, event: event_log(item.id, direction, event))
    toolbox, offered = ctx.toolbox, ready.tools

    async def run_tool(call: FunctionCall, turn: int) -> ToolOutput:
        assert toolbox is not None
        return await toolbox.answer(call, offered)

    failed_tokens: int | None = carried_tokens or None  # billed by attempts that left no row (earlier runs)
    attempts = 0

    def on_turn(turn: TurnOutput) -> None:
        """A turn of a conversation is done: journal how far it got."""
        if record_partial is None:
            return
        done_turns.append(turn)
        billed = (failed_tokens or 0) + sum(t.usage.total_tokens for t in done_turns if t.usage)
        row = results.ResultRow.from_item(
            item,
            results.STATUS_PARTIAL,
            attempts=attempts,
            failed_attempt_tokens=billed,
            **{**known, "notes": [*known["notes"], _partial_note(turn.index, len(request.all_turns))]},
            turns=[conversation.turn_record(t, wav=None, audio_seconds=None) for t in done_turns],
            tool_calls=[conversation.tool_call_record(c) for t in done_turns for c in t.tool_calls],
        )
        record_partial(row.to_record())

    done_turns: list[TurnOutput] = []

    policy = ctx.retry
    delays = backoff_delays(base=policy.base_delay, cap=policy.max_delay)
    throttle_delays = backoff_delays(base=policy.throttle_base_delay, cap=policy.throttle_max_delay)
    failures = throttled = unreachable = 0
    host = host_of(url_for(settings.base_url, plan.model.name, settings.workspace))
    while True:
        # both raise once the run stops (AdmissionClosed) or the outage outlasts --max-outage
        # (ServiceUnreachable): the item stays unfinished and runs next time
        probe = await breaker.admit() if breaker is not None else False
        try:
            reservation = await limiter.acquire(tokens=estimate.total, cost=est_cost or 0.0)
            attempts += 1
            done_turns.clear()
            result = await run_turn(
                request,
                settings,
                tool_runner=run_tool if ready.tools else None,
                max_tool_rounds=config.max_tool_rounds,
                on_turn=on_turn if ready.turns else None,
            )
        except BatchQwenError as exc:
            failure = exc
        else:
            if breaker is not None:
                breaker.success(probe=probe)
            break
        finally:
            if probe and breaker is not None:
                breaker.release_probe()  # a probe that ended without a verdict lets the next one go
        if isinstance(failure, AdmissionClosed | BudgetExceeded):
            raise failure
        # the network's or the gateway's fault, not the item's: charged to the breaker, not an attempt
        to_breaker = breaker is not None and is_connection_failure(failure)
        if to_breaker:
            assert breaker is not None
            limiter.release(reservation, tokens=0, cost=0.0)
            was_open = breaker.is_open
            breaker.failure(results.redact(str(failure), secrets), host, probe=probe)
            attempts -= 1
            if probe or was_open or breaker.is_open:
                continue  # an outage: the breaker waits it out (or gives up), never the item
            unreachable += 1  # an isolated failure while the service otherwise answers
            if unreachable < policy.max_connect_failures:
                await asyncio.sleep(next(delays))
                continue
        elif breaker is not None:
            breaker.success(probe=probe)  # the service answered, even if with a refusal
        usage_seen = getattr(failure, "usage", None)  # a failed attempt's usage, when the client knows it
        spent = usage_seen.total_tokens if isinstance(usage_seen, Usage) else None
        if spent is not None:
            failed_tokens = (failed_tokens or 0) + spent
        billed = 0.0  # what the failed attempt cost, when the service reported usage: counts to the cap
        if isinstance(usage_seen, Usage) and price is not None:
            billed, _ = cost.cost_of_usage(price, usage_seen, estimate=estimate, modalities=plan.modalities)
        if not to_breaker:
            limiter.release(reservation, tokens=spent, cost=billed)
        kind = classify(failure)
        if kind == "fatal":
            raise FatalRunError(failure) from failure
        if kind == "retryable" and is_throttling(failure):
            # Refused before any work: not billed, so not one of --max-attempts; bounded on its own.
            # The cool-down pauses every worker, since the quota is the account's, not this item's.
            throttled += 1
            if throttled < policy.max_throttled:
                delay = next(throttle_delays)
                limiter.cool_down(delay)
                if run_events is not None:
                    run_events("throttle", {"item": item.id, "error": str(failure), "cool_down_seconds": delay})
                log.info("item %s: throttled (%s); every worker pauses %.1f s", item.id, failure, delay)
                continue
        elif kind == "retryable" and not to_breaker:
            failures += 1
            if failures < config.max_attempts:
                delay = next(delays)
                log.info("item %s: attempt %d failed (%s); retrying in %.1f s", item.id, attempts, failure, delay)
                await asyncio.sleep(delay)
                continue
        message = results.redact(str(failure), secrets)
        log.warning("item %s failed after %d attempt(s): %s", item.id, attempts, message)
        return results.failed_row(
            item,
            failure,
            attempts=attempts,
            secrets=secrets,
            finished_at=_now(),
            failed_attempt_tokens=failed_tokens,
            **known,
        )

    row = results.ResultRow.from_item(
        item, results.STATUS_OK, attempts=attempts, failed_attempt_tokens=failed_tokens, **known
    )
    usage = result.usage
    if usage is not None:
        tokens, row.cost_basis = cost.usage_tokens(usage, estimate=estimate, modalities=plan.modalities)
        if price is not None:
            row.cost, row.cost_basis = cost.cost_of_usage(price, usage, estimate=estimate, modalities=plan.modalities)
        row.usage_input_text_tokens = tokens.input_text
        row.usage_input_audio_tokens = tokens.input_audio
        row.usage_input_image_tokens = tokens.input_image
        row.usage_output_text_tokens = tokens.output_text
        row.usage_output_audio_tokens = tokens.output_audio
        row.usage_input_tokens = usage.input_tokens
        row.usage_output_tokens = usage.output_tokens
        row.usage_total_tokens = usage.total_tokens
    elif est_cost is not None:
        row.cost, row.cost_basis = est_cost, "estimate"
    limiter.release(reservation, tokens=usage.total_tokens if usage else None, cost=row.cost or 0.0)

    if result.output_pcm:
        try:
            wav_path = wav_file or results.wav_path(ctx.out_dir, item.id)
            wav = media.pcm_to_wav(result.output_pcm, plan.model.output_sample_rate)
            await asyncio.to_thread(results.write_wav_atomic, wav_path, wav)
        except OSError as exc:
            if exc.errno in results.DISK_FULL_ERRNOS:  # the disk, not the item: stop; this item runs again
                raise OutputUnwritable(f"cannot store {wav_path}: {exc.strerror or exc}") from exc
            row.status = results.STATUS_FAILED
            row.error_type, row.error_code = "output", None
            row.error_message = results.redact(f"cannot write the output WAV: {exc}", secrets)
        except BatchQwenError as exc:
            # the answer was paid for but cannot be kept: say so on the row; the run goes on
            row.status = results.STATUS_FAILED
            row.error_type, row.error_code = "output", None
            row.error_message = results.redact(f"cannot write the output WAV: {exc}", secrets)
        else:
            if ctx.outputs is not None:  # stored in the remote OUT before the item counts as done
                await asyncio.to_thread(ctx.outputs.store, wav_path)
            row.output_wav = results.relative_to_out(ctx.out_dir, wav_path)
            row.output_audio_seconds = round(len(result.output_pcm) / (2 * plan.model.output_sample_rate), 3)
    row.input_transcript = result.input_transcript
    row.output_text = result.output_text
    row.output_transcript = result.output_transcript
    row.utterances = [
        {"start_seconds": u.start_seconds, "end_seconds": u.end_seconds, "source_text": u.source_text, "text": u.text}
        for u in result.utterances
    ]
    row.session_id = result.session_id
    row.response_ids = list(result.response_ids)
    row.connect_seconds = result.connect_seconds
    row.first_text_seconds = result.first_text_seconds
    row.first_audio_seconds = result.first_audio_seconds
    row.total_seconds = result.total_seconds
    await _tools_and_turns(row, result, ready, ctx, secrets)
    row.finished_at = _now()
    return row


def _partial_note(turn: int, turns: int) -> str:
    return f"conversation journaled after turn {turn} of {turns}: stopped here, it runs again whole"


async def _store_wav(out_dir: Path, path: Path, pcm: bytes, rate: int) -> str:
    """Write one answer WAV; its path relative to OUT. OutputUnwritable when the disk is full or read-only;
    any other failure is the row's (BatchQwenError / OSError)."""
    try:
        await asyncio.to_thread(results.write_wav_atomic, path, media.pcm_to_wav(pcm, rate))
    except OSError as exc:
        if exc.errno in results.DISK_FULL_ERRNOS:  # the disk, not the item: stop; this item runs again
            raise OutputUnwritable(f"cannot store {path}: {exc.strerror or exc}") from exc
        raise
    return results.relative_to_out(out_dir, path)


async def _tools_and_turns(
    row: results.ResultRow, result: TurnResult, ready: ReadyItem, ctx: ItemContext, secrets: list[str]
) -> None:
    """Onto a finished row: every tool call, a conversation's turns with their WAVs, the --extract
    arguments; a turn stopped by --max-tool-rounds or an extraction that fails makes the row failed, with
    all of it still recorded."""
    calls = [call for turn in result.turns for call in turn.tool_calls]
    row.tool_calls = [conversation.tool_call_record(call) for call in calls]
    for record in row.tool_calls:  # a tool's exception text could hold anything, the key too
        if record["error"]:
            record["error"] = results.redact(record["error"], secrets)
    if ready.turns:
        rate = ready.plan.model.output_sample_rate
        records = []
        for turn in result.turns:
            wav, seconds = None, None
            if turn.output_pcm and row.status == results.STATUS_OK:
                try:
                    path = results.turn_wav_path(ctx.out_dir, row.id, turn.index)
                    wav = await _store_wav(ctx.out_dir, path, turn.output_pcm, rate)
                except (OSError, BatchQwenError) as exc:
                    if isinstance(exc, OutputUnwritable):
                        raise
                    row.status = results.STATUS_FAILED
                    row.error_type, row.error_code = "output", None
                    row.error_message = results.redact(f"cannot write the WAV of turn {turn.index}: {exc}", secrets)
                else:
                    seconds = round(len(turn.output_pcm) / (2 * rate), 3)
            records.append(conversation.turn_record(turn, wav=wav, audio_seconds=seconds))
        row.turns = records
    problem: BatchQwenError | None = None
    if result.tool_round_limit:
        problem = ToolRoundsExceeded(result.tool_round_limit)
    elif ctx.extraction is not None:
        try:
            row.extracted_arguments = ctx.extraction.final_arguments(calls)
            row.extracted_tool = ctx.extraction.tool
        except ExtractError as exc:
            problem = exc
    if problem is not None and row.status == results.STATUS_OK:
        row.status = results.STATUS_FAILED
        for key, value in results.error_fields(problem, secrets=secrets).items():
            setattr(row, key, value)


async def _unavailable_row(item: Item, model: str, cause: ServerError, secrets: list[str]) -> results.ResultRow:
    """The failed row of an item whose model an earlier item of this run found unavailable: no session."""
    exc = ModelUnavailable(f"model {model} is not available to this key: {cause.message}", code=cause.code)
    return results.failed_row(
        item, exc, attempts=0, secrets=secrets, started_at=_now(), finished_at=_now(), model=model
    )


# ----------------------------------------------------------------------------- the whole run


class EventLog:
    """``--log-events``: every raw event as a JSON line, base64 payloads elided, the key never present."""

    def __init__(self, path: Path, secrets: list[str]):
        self._file: TextIO = path.open("a", encoding="utf-8")
        self._secrets = secrets
        self.failed = False

    def __call__(self, item_id: str, direction: str, event: dict[str, Any]) -> None:
        # the client hands over events already redacted (payloads elided)
        line = json.dumps(
            {"t": round(time.time(), 3), "item": item_id, "dir": direction, "event": event}, ensure_ascii=False
        )
        try:
            self._file.write(results.redact(line, self._secrets) + "\n")
        except OSError:
            self.failed = True  # a debugging aid, best effort: a full disk stops the run through the journal

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()


class PartialRecords:
    """One conversation's ``partial`` journal records, written in order off the event loop while its session
    goes on; :meth:`flush` waits for them (before the item's final record, which must come last)."""

    def __init__(self, journal: results.Journal, done: results.JournalIndex) -> None:
        self._journal = journal
        self._done = done
        self._last: asyncio.Task[None] | None = None

    def add(self, record: dict[str, Any]) -> None:
        self._last = asyncio.create_task(self._write(self._last, record))

    async def _write(self, previous: asyncio.Task[None] | None, record: dict[str, Any]) -> None:
        if previous is not None:
            await asyncio.wait((previous,))
        try:
            offset = await asyncio.to_thread(self._journal.append, record)
        except OutputUnwritable as exc:  # progress only: the final record says whether the disk is gone
            log.warning("item %s: could not journal its progress: %s", record.get("id"), exc)
            return
        self._done.note(record, offset)

    async def flush(self) -> None:
        if self._last is not None:
            await asyncio.wait((self._last,))


def carried_tokens(done: results.JournalIndex, item: Item) -> int:
    """Tokens billed to a conversation of this content that an earlier run left half-done (its ``partial``
    record): they count again in the rerun's ``failed_attempt_tokens``."""
    entry = done.entries.get(item.id)
    if entry is None or entry.status != results.STATUS_PARTIAL or entry.content_hash != item.content_hash:
        return 0
    try:
        return int(done[item.id].get("failed_attempt_tokens") or 0)
    except (KeyError, TypeError, ValueError):
        return 0


class Progress:
    """A tqdm bar on a terminal; plain log lines every ``interval`` seconds otherwise (cron, CI, pipes).

    Both show the spend with its currency and the ETA: the items left at the pace so far, never faster
    than the RPM limit allows (one session an item).
    """

    def __init__(self, total: int, *, bar: bool, interval: float = 30.0, currency: str = "", rpm: int | None = None):
        self.total = total
        self.done = self.failed = self.skipped = 0
        self.tokens = 0
        self.cost = 0.0
        self.currency = currency
        self.rpm = rpm  # set once the run knows its limits
        self._interval = interval
        self._started = self._last = time.monotonic()
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="item", file=sys.stderr, dynamic_ncols=True)

    def update(self, row: dict[str, Any], *, skipped: bool = False) -> None:
        if skipped:
            self.skipped += 1
        elif row.get("status") == "ok":
            self.done += 1
        else:
            self.failed += 1
        self.tokens += int(row.get("usage_total_tokens") or 0)
        self.cost += float(row.get("cost") or 0.0)
        if self._bar is not None:
            self._bar.set_postfix(
                ok=self.done,
                failed=self.failed,
                skipped=self.skipped,
                tokens=self.tokens,
                cost=self.spend(),
                eta=self.eta_text(),
                refresh=False,
            )
            self._bar.update(1)
        else:
            self.tick()

    def tick(self) -> None:
        """Without a bar: a log line when ``interval`` seconds have passed since the last (the run calls
        this while it waits, so a line comes even when no item finishes)."""
        if self._bar is None and time.monotonic() - self._last >= self._interval:
            self._last = time.monotonic()
            log.info("progress: %s", self.line())

    def spend(self) -> str:
        return f"{self.cost:.4f} {self.currency}".strip()

    def eta_seconds(self) -> float | None:
        """Seconds until every item is finished: the pace so far, capped by the RPM limit; None before
        any item ran (nothing to go by but the limit)."""
        left = self.total - self.done - self.failed - self.skipped
        if left <= 0:
            return 0.0
        ran = self.done + self.failed
        elapsed = time.monotonic() - self._started
        rate = ran / elapsed if ran and elapsed > 0 else None  # items a second
        if self.rpm:
            rate = min(rate, self.rpm / 60.0) if rate is not None else self.rpm / 60.0
        return None if not rate else left / rate

    def eta_text(self) -> str:
        eta = self.eta_seconds()
        if eta is None:
            return "unknown"
        minutes, seconds = divmod(round(eta), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"

    def line(self) -> str:
        finished = self.done + self.failed + self.skipped
        limit = f" at most {self.rpm} RPM" if self.rpm else ""
        return (
            f"{finished}/{self.total} items (ok {self.done}, failed {self.failed}, skipped {self.skipped});"
            f" tokens {self.tokens}; cost {self.spend()}; ETA {self.eta_text()}{limit}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.asynccontextmanager
async def _endpoint(config: RunConfig) -> AsyncIterator[tuple[str, str]]:
    """The URL and key to use: the real service, or the built-in simulator started in-process."""
    if not config.simulate:
        if not config.api_key:
            raise UsageError("no API key: set DASHSCOPE_API_KEY or pass --api-key (or use --simulate / --dry-run)")
        yield config.url, config.api_key
        return
    from batchqwen.sim.server import Simulator, SimulatorConfig

    async with Simulator(SimulatorConfig(), host="127.0.0.1", port=0) as sim:
        yield sim.url, config.api_key or "sk-simulator"


def client_settings(config: RunConfig, url: str, api_key: str) -> ClientSettings:
    return ClientSettings(
        base_url=url,
        api_key=api_key,
        workspace=config.workspace,
        open_timeout=config.connect_timeout,
        first_event_timeout=config.first_event_timeout,
        idle_timeout=config.idle_timeout,
        # a session must end before the service's own lifetime cut does
        session_timeout=config.item_timeout or ITEM_TIMEOUT_MARGIN,  # set per item by item_timeout_for
        pace=config.pace,
    )


def _install_signal_handlers(stop: Callable[[int], None]) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop, signum)
            installed.append(signum)

    def remove() -> None:
        for signum in installed:
            loop.remove_signal_handler(signum)

    return remove


def _pending_items(
    items: Iterator[Item], done: results.JournalIndex, progress: Progress, counters: dict[str, int]
) -> Iterator[Item]:
    """Skip items already ok with unchanged content; everything else (failed, changed, new) is run."""
    for item in items:
        entry = done.entries.get(item.id)
        previous = entry.as_record() if entry is not None else None
        if not results.needs_run(item, previous):
            counters["skipped"] += 1
            progress.update(done.get(item.id) or {}, skipped=True)
            continue
        if entry is not None and entry.content_hash != item.content_hash:
            if entry.status == results.STATUS_OK:  # an ok result of other content: rerun and say so
                counters["changed"] += 1
                log.warning("item %s (row %d) changed since its last ok result: running it again", item.id, item.row)
            else:
                log.info("item %s (row %d) changed since its last failed attempt", item.id, item.row)
        yield item


PREPARE_AHEAD = 4  # items prepared beyond the concurrency window
PREPARERS_PER_CORE = 2  # preparations in flight per core: one decoding, one being handed over
AUTO_PROCESSES_MIN_ITEMS = 64  # a process pool costs about a second to start: worth it from here on


async def _already(row: results.ResultRow) -> results.ResultRow:
    return row


def ramp_seconds_for(concurrency: int, rpm: int | None) -> float:
    """How long the limiter takes to open every slot: against the service's burst limit, which is
    relative to the quota, the time the quota itself would take to start ``concurrency`` sessions, at most
    ``RUN_RAMP_SECONDS``; next to nothing when the quota is huge."""
    if rpm is None or rpm <= 0:
        return 0.0
    return min(RUN_RAMP_SECONDS, 60.0 * concurrency / rpm)


def decode_processes_for(config: RunConfig, checked: manifest.ManifestSummary) -> int:
    """``--decode-processes``, or with ``auto`` (None): worker processes when the manifest holds enough
    compressed media (video, images, audio other than WAV) to repay starting them, one per core but one
    (the event loop keeps a core of its own), at least one; none for a small or WAV-only job."""
    if config.decode_processes is not None:
        return config.decode_processes
    cores = os.cpu_count() or 1
    rows = checked.rows if config.limit is None else min(checked.rows, config.limit)
    if cores < 2 or rows < AUTO_PROCESSES_MIN_ITEMS or checked.rows_with_compressed_media * 2 < checked.rows:
        return 0
    return max(1, cores - 1)


def _decoder_pool(processes: int) -> ProcessPoolExecutor | None:
    """Worker processes for decoding, or None for the default thread: a thread shares the GIL with the
    event loop, so on a busy run decoding and sessions take turns on one core."""
    if processes <= 0:
        return None
    # spawn, not fork: the event loop's threads and sockets must not be copied into the workers
    pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"))
    for _ in range(processes):  # start them now and let them import the decoders, before the first item
        pool.submit(media.silence, 0.0)
    return pool


def load_run_tools(config: RunConfig) -> tuple[tools.Toolbox | None, Extraction | None]:
    """``--tools`` and ``--extract`` of a run, checked before any session (UsageError: exit 2): the file
    loads, the default model takes tools, the extract tool exists and has properties."""
    from batchqwen.extract import extraction_for

    if config.tools is None:
        if config.extract is not None:
            raise UsageError("--extract needs --tools (the tool whose arguments become columns)")
        return None, None
    tools.check_tool_model(get_model(config.model))
    toolbox = tools.load_tools(config.tools, canned_output=config.tool_output, timeout=config.tool_timeout)
    extraction = extraction_for(toolbox, config.extract) if config.extract is not None else None
    return toolbox, extraction


def _estimated_cost_already_done(config: RunConfig, done: results.JournalIndex) -> float:
    """The estimated cost of the items in scope that are already ok with unchanged content."""
    total = 0.0
    for item in manifest.iter_items(config.manifest, limit=config.limit, options=config.manifest_options):
        entry = done.entries.get(item.id)
        if entry is not None and not results.needs_run(item, entry.as_record()):
            total += entry.est_cost or 0.0
    return total


async def run(
    config: RunConfig,
    *,
    retry: RetryPolicy | None = None,
    window: float = 60.0,
    window_margin: float = 0.5,
    checkpoint_seconds: float = 30.0,
    loaded_tools: tuple[tools.Toolbox | None, Extraction | None] | None = None,
) -> RunOutcome:
    """Run a whole manifest. Raises ManifestError / UsageError / LockHeld before any session opens.

    ``window`` is the length of the service's rate-limit window (RPM/TPM count over it), ``window_margin``
    what the limiter adds to it against clock skew and connect latency; ``checkpoint_seconds`` how often
    results.parquet is rewritten (atomically) while the run goes on. ``loaded_tools`` is what
    :func:`load_run_tools` gave for this config (the CLI loads them first, to refuse a bad file early).
    """
    started = time.monotonic()
    summary_check = manifest.check_manifest(config.manifest, options=config.manifest_options)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out, wait=config.wait_lock):
        remote = None
        if config.remote_out is not None:  # ``out`` is the local state directory of a bucket's OUT
            remote = RemoteOut(
                Remote(config.remote_out), out, fetch.shared_storage(config.storage), wait_lock=config.wait_lock
            )
            await asyncio.to_thread(remote.open)
        try:
            return await _run_locked(
                config,
                summary_check,
                started,
                retry=retry or RetryPolicy(),
                window=window,
                window_margin=window_margin,
                checkpoint_seconds=checkpoint_seconds,
                remote=remote,
                loaded_tools=loaded_tools,
            )
        finally:
            if remote is not None:
                await asyncio.to_thread(remote.close)


def _exit_code(signum: int | None, *, environment: bool, stopped: bool, some_failed: bool) -> int:
    """The run's exit code, the strongest cause first: a signal, the environment, a stop, failed items."""
    if signum is not None:
        return EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
    if environment:
        return EXIT_ENVIRONMENT
    if stopped:
        return EXIT_ABORTED
    return EXIT_SOME_FAILED if some_failed else EXIT_OK


async def _run_locked(
    config: RunConfig,
    checked: manifest.ManifestSummary,
    started: float,
    *,
    retry: RetryPolicy,
    window: float,
    window_margin: float,
    checkpoint_seconds: float,
    loaded_tools: tuple[tools.Toolbox | None, Extraction | None] | None = None,
    remote: RemoteOut | None = None,
) -> RunOutcome:
    out = config.out
    prices = cost.load_prices(config.prices)
    output = cost.OutputAssumption(output_seconds_per_item=config.output_seconds)
    journal = results.Journal(out)
    longaudio.clear_spool(out)  # left by a run that was killed (the lock says none is running)
    done = journal.index()  # small entries in memory; the records stay in the journal file
    secrets = [config.api_key] if config.api_key else []
    total = checked.rows if config.limit is None else min(checked.rows, config.limit)
    show_bar = config.progress if config.progress is not None else (sys.stderr.isatty() and not config.quiet)
    progress = Progress(total, bar=show_bar, currency=prices.currency)
    counters = {"skipped": 0, "changed": 0, "ran": 0}
    stop_reason: list[str] = []  # first reason wins: "fatal: ...", "budget: ...", "signal: SIGINT"
    environment_failed: list[str] = []  # set when the stop was the environment's: an outage, a full disk
    run_events = RunEvents(out, secrets)
    exit_signal: list[int] = []
    # a bad tools file is exit 2, before any session
    toolbox, extraction = loaded_tools if loaded_tools is not None else load_run_tools(config)

    if config.max_cost is not None:
        from batchqwen.estimate import estimate_manifest

        report = await asyncio.to_thread(
            estimate_manifest,
            config.manifest,
            default_model=config.model,
            region=config.resolved_region,
            prices=prices,
            output=output,
            modalities=config.modalities,
            instructions=config.instructions,
            limit=config.limit,
            pad_silence_seconds=config.pad_silence_seconds,
            out_dir=out,
            video_fps=config.video_fps,
            image_frames=config.image_frames,
            voice=config.voice,
            target_language=config.translate_to,
            source_language=config.source_language,
            tools=toolbox.catalog if toolbox is not None else None,
            tool_rounds=config.assume_tool_rounds,
            extract=config.extract,
            manifest_options=config.manifest_options,
            storage=config.storage,
            split=config.split,
            pace=config.pace,
        )
        # items of this manifest (and --limit) that will not run again: take their estimate off the total
        already = await asyncio.to_thread(_estimated_cost_already_done, config, done)
        remaining = None if report.total_cost is None else max(0.0, report.total_cost - already)
        if remaining is None:
            log.warning("some items' model has no known price: the budget cap only covers priced items")
            remaining = max(0.0, report.known_cost - already)
        if remaining > config.max_cost:
            raise BudgetExceeded(
                f"estimated cost {remaining:.4f} {report.currency} exceeds --max-cost {config.max_cost:g}"
                f" by {remaining - config.max_cost:.4f}; nothing was started (see {out / 'estimate.parquet'})"
            )

    def checkpoint(on_row: Callable[[Mapping[str, Any]], None] | None = None) -> Path:
        return results.write_results(
            out,
            manifest.iter_items(config.manifest, options=config.manifest_options),
            done,
            checked.passthrough_columns,
            on_row=on_row,
            extraction=extraction,
        )

    if done:  # a resumed run: results.parquet reflects the journal from the start
        await asyncio.to_thread(checkpoint)
    cache = fetch.DownloadCache.for_run(fetch.shared_storage(config.storage))

    async with _endpoint(config) as (url, api_key):
        ctx = ItemContext(
            config,
            client_settings(config, url, api_key),
            prices,
            output,
            out,
            retry,
            toolbox=toolbox,
            extraction=extraction,
            cache=cache,
            outputs=remote,
        )
        pending = manifest.iter_items(config.manifest, limit=config.limit, options=config.manifest_options)
        items = _pending_items(pending, done, progress, counters)
        in_flight: set[asyncio.Task[results.ResultRow]] = set()
        stopping = asyncio.Event()
        # Preparation runs ahead of the sessions: a few preparers plan and decode items (in the decoder
        # pool) into a bounded queue, from which the workers take what is ready; so a session never waits
        # on its own decoding while a core is idle, and memory stays flat (at most the queue is ahead).
        # None in the queue tells a worker that nothing more will come.
        ahead: asyncio.Queue[ReadyItem | results.ResultRow | None] = asyncio.Queue(
            maxsize=config.concurrency + PREPARE_AHEAD
        )
        preparers_left = [0]
        preparers: list[asyncio.Task[None]] = []

        async def preparer() -> None:
            try:
                while not stopping.is_set():
                    item = next(items, None)
                    if item is None:
                        return
                    await ahead.put(await prepare(item, ctx, decoder=decoder))
            except OutputUnwritable as exc:  # a long recording's spool on a full disk: the environment's
                output_failed(exc)
            except Exception as exc:  # not the item's (a decoder process that died, a bug): stop, say it
                message = results.redact(f"{type(exc).__name__}: {exc}", secrets)
                log.error("stopping the run: preparation failed: %s", message)
                if not stop_reason and isinstance(exc, OutputUnwritable):  # the download cache's disk is full
                    stop_reason.append(f"environment: {results.redact(str(exc), secrets)}")
                    environment_failed.append(stop_reason[0])
                if not stop_reason:
                    stop_reason.append(f"error: preparation failed: {message}")
                stopping.set()  # no new item; what is in flight finishes; the rest stays pending
                with contextlib.suppress(asyncio.QueueFull):
                    for _ in range(config.concurrency):
                        ahead.put_nowait(None)
            finally:
                preparers_left[0] -= 1
                task = asyncio.current_task()
                cancelled = task is not None and task.cancelling() > 0
                if preparers_left[0] == 0 and not stopping.is_set() and not cancelled:
                    for _ in range(config.concurrency):
                        await ahead.put(None)

        def release_workers() -> None:
            """The run stops: what is prepared and not run stays pending; every waiting worker wakes."""
            for task in preparers:
                task.cancel()
            while not ahead.empty():
                ahead.get_nowait()
            with contextlib.suppress(asyncio.QueueFull):
                for _ in range(config.concurrency):
                    ahead.put_nowait(None)

        # preparation starts now: the pool's start and the first decodes overlap the quota lookup below
        processes = decode_processes_for(config, checked)
        decoder = _decoder_pool(processes)
        preparer_count = max(PREPARERS_PER_CORE * (os.cpu_count() or 1), 2 * processes)
        preparers_left[0] = preparer_count
        preparers.extend(asyncio.create_task(preparer()) for _ in range(preparer_count))
        model = get_model(config.model)
        # flags win; else the account's quota (with a workspace or a base URL that answers it); else the
        # registry's defaults; the summary says which
        limits = await quotas.run_limits(
            url=url,
            api_key=api_key,
            model=model,
            rpm_flag=config.rpm,
            tpm_flag=config.tpm,
            workspace=config.workspace,
            base_url=config.base_url,
            simulate=config.simulate,
            window=window,
            timeout=min(config.connect_timeout, quotas.DEFAULT_TIMEOUT),
        )
        progress.rpm = limits.rpm
        limiter = Limiter(
            concurrency=config.concurrency,
            rpm=limits.rpm,
            tpm=limits.tpm,
            max_cost=config.max_cost,
            window=window,
            margin=window_margin,
            ramp_seconds=0.0 if config.simulate else ramp_seconds_for(config.concurrency, limits.rpm),
        )

        def on_breaker(event: str, fields: dict[str, Any]) -> None:
            run_events(event, fields)
            if event == "breaker_close":
                limiter.ramp_up()  # after an outage, not every worker at once: the burst limit

        breaker = Breaker(max_outage=config.max_outage, on_event=on_breaker)

        def stop_run(reason: str, *, environment: bool = False) -> None:
            if not stop_reason:
                stop_reason.append(reason)
                if environment:
                    environment_failed.append(reason)
            stopping.set()
            limiter.close()  # waiting and retrying items start no session from now on
            breaker.close()
            release_workers()

        def output_failed(exc: OutputUnwritable) -> None:
            if not stopping.is_set():
                log.error("stopping the run: %s", exc)
                run_events("output_unwritable", {"error": str(exc)})
            stop_run(f"environment: {exc}", environment=True)

        def on_signal(signum: int) -> None:
            if exit_signal:  # a second signal: stop waiting for in-flight items
                for task in in_flight:
                    task.cancel()
                return
            exit_signal.append(signum)
            stop_reason.insert(0, f"signal: {signal.Signals(signum).name}")
            log.warning(
                "%s received: no new items; waiting up to %g s for %d in flight",
                signal.Signals(signum).name,
                config.grace_seconds,
                len(in_flight),
            )
            stop_run(stop_reason[0])

        remove_handlers = _install_signal_handlers(on_signal)
        # model name -> why the service refused it (Model.NotExist, unpurchased): its other items fail at once
        unavailable: dict[str, ServerError] = {}

        async def worker() -> None:
            while not stopping.is_set():
                ready = await ahead.get()
                if ready is None or stopping.is_set():
                    return
                item = ready.item if isinstance(ready, ReadyItem) else None
                model_name = (item.model or config.model).strip() if item is not None else ""
                work: Coroutine[Any, Any, results.ResultRow]
                partial: PartialRecords | None = None
                if isinstance(ready, results.ResultRow):
                    work = _already(ready)  # refused before any session: a row as it is
                elif model_name in unavailable:
                    work = _unavailable_row(ready.item, model_name, unavailable[model_name], secrets)
                else:
                    # a conversation or a long recording journals how far it got, and counts what an
                    # earlier run of it left half-done
                    halves = bool(ready.turns) or ready.recording is not None
                    partial = PartialRecords(journal, done) if halves else None
                    work = session(
                        ready,
                        ctx,
                        limiter,
                        event_log=event_log,
                        breaker=breaker,
                        run_events=run_events,
                        carried_tokens=carried_tokens(done, ready.item) if halves else 0,
                        record_partial=partial.add if partial is not None else None,
                    )
                task = asyncio.create_task(work)
                in_flight.add(task)
                try:
                    row = await task
                    if partial is not None:
                        await partial.flush()  # the final record goes after every partial one
                except FatalRunError as exc:
                    message = results.redact(str(exc.cause), secrets)
                    if not stopping.is_set():
                        log.error("stopping the run: %s", message)
                    stop_run(f"fatal: {message}")
                    for other in in_flight:
                        if other is not task:
                            other.cancel()
                    return
                except BudgetExceeded as exc:
                    stop_run(f"budget: {exc}")
                    return
                except ServiceUnreachable as exc:
                    stop_run(f"environment: {exc}", environment=True)  # the item stays pending
                    return
                except OutputUnwritable as exc:
                    output_failed(exc)
                    return
                except AdmissionClosed:
                    return  # the run is stopping; this item stays unfinished and runs next time
                except asyncio.CancelledError:
                    if task.cancelled() and stopping.is_set():
                        return  # cancelled on purpose: the item stays unfinished and runs next time
                    raise
                finally:
                    in_flight.discard(task)
                if row.error_code in MODEL_UNAVAILABLE_CODES and row.error_type != ModelUnavailable.kind:
                    if model_name not in unavailable:
                        log.error(
                            "model %s is not available to this key (%s): its items fail, the others go on",
                            model_name,
                            results.redact(row.error_message or "", secrets),
                        )
                    unavailable[model_name] = ServerError(row.error_message or "", code=row.error_code or "")
                record = row.to_record()
                # durable on disk before the item counts as done (fsync off the event loop)
                try:
                    offset = await asyncio.to_thread(journal.append, record)
                except OutputUnwritable as exc:
                    output_failed(exc)  # the record is not in the journal: the item runs next time
                    return
                done.note(record, offset)
                counters["ran"] += 1
                progress.update(record)

        event_log = EventLog(config.log_events, secrets) if config.log_events else None
        workers = [asyncio.create_task(worker()) for _ in range(config.concurrency)]
        last_checkpoint = time.monotonic()
        try:
            all_done = asyncio.gather(*workers)
            while not all_done.done():
                await asyncio.wait([all_done], timeout=0.5)
                progress.tick()
                if stopping.is_set() and exit_signal and in_flight:
                    await asyncio.wait([all_done], timeout=config.grace_seconds)
                    for task in in_flight:
                        task.cancel()
                if time.monotonic() - last_checkpoint >= checkpoint_seconds and not all_done.done():
                    try:
                        await asyncio.to_thread(checkpoint)
                        if remote is not None:
                            await asyncio.to_thread(remote.checkpoint)
                    except OutputUnwritable as exc:  # the remote OUT: an upload failed, or the lock was lost
                        output_failed(exc)
                    except OSError as exc:
                        output_failed(OutputUnwritable(f"cannot write {out / 'results.parquet'}: {exc}"))
                    last_checkpoint = time.monotonic()
            await all_done
        finally:
            # normally all finished; after an unexpected error in one worker, stop the others before the
            # journal closes under them
            for worker_task in [*workers, *preparers]:
                worker_task.cancel()
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*workers, *preparers, *in_flight, return_exceptions=True)
            remove_handlers()
            if decoder is not None:
                decoder.shutdown(wait=False, cancel_futures=True)
            longaudio.clear_spool(out)  # long recordings prepared and never run
            progress.close()
            if toolbox is not None:
                toolbox.close()
            breaker_summary = breaker.summary()
            journal.close()
            cache.close()
            if event_log is not None:
                event_log.close()

    totals = results.Totals()  # over the final rows: every manifest item, pending ones included
    results_path: Path | None
    try:
        results_path = await asyncio.to_thread(checkpoint, totals.add)
    except OSError as exc:
        problem = f"environment: cannot write {out / 'results.parquet'}: {exc}"
        log.error("%s (the journal keeps every finished item; rerun once there is space)", problem)
        if not environment_failed:
            stop_reason.insert(0, problem)
            environment_failed.append(problem)
        results_path = None
    summary = totals.result()
    reason = stop_reason[0] if stop_reason else "completed"
    exit_code = _exit_code(
        exit_signal[0] if exit_signal else None,
        environment=bool(environment_failed),
        stopped=bool(stop_reason),
        some_failed=bool(totals.by_status[results.STATUS_FAILED]),
    )
    summary.update(
        manifest=config.manifest_options.shown(config.manifest),
        # the report finds the input images from anywhere (a manifest from a bucket or URL: not from here)
        **({} if config.manifest_options.origin else {"manifest_path": str(Path(config.manifest).resolve())}),
        out=str(Remote(config.remote_out)) if config.remote_out else str(out),
        **({"state_dir": str(out)} if config.remote_out else {}),
        model=config.model,
        simulate=config.simulate,
        items_in_manifest=checked.rows,
        items_run_now=counters["ran"],
        items_skipped_already_ok=counters["skipped"],
        items_changed_since_last_ok=counters["changed"],
        sessions_started=limiter.sessions_started,
        throttle_cooldowns=limiter.cooldowns,
        duration_seconds=round(time.monotonic() - started, 3),
        started_at=(_now() - timedelta(seconds=time.monotonic() - started)).isoformat(timespec="milliseconds"),
        finished_at=_now().isoformat(timespec="milliseconds"),
        region=config.resolved_region,
        concurrency=config.concurrency,
        max_cost=config.max_cost,
        max_attempts=config.max_attempts,
        exit_code=exit_code,
        exit_reason=reason,
        output_assumption=output.describe(),
        prices_source=prices.source,
        prices_as_of=prices.as_of,
        prices_source_url=prices.source_url,
        limits=limits.as_dict(),
        outages=breaker_summary,
        run_events=RUN_EVENTS_NAME,
    )
    run_events("run_end", {"exit_code": exit_code, "reason": reason})
    run_events.close()
    try:
        results.write_summary(out, summary)
    except OSError as exc:  # the disk that stopped the run may not take the summary either: stderr has it
        log.error("cannot write %s: %s; the run ended with: %s", out / "summary.json", exc, reason)
    if results_path is not None:
        await asyncio.to_thread(_end_of_run_reports, out, html=config.html_report)
    if remote is not None:
        try:
            await asyncio.to_thread(remote.finish)  # every file the run leaves in the state directory
        except OutputUnwritable as exc:
            log.error("%s; the state directory %s keeps everything: rerun to store it", exc, out)
            exit_code, reason = EXIT_ENVIRONMENT, f"environment: {exc}"
    return RunOutcome(exit_code, reason, summary, results_path)


def _end_of_run_reports(out: Path, *, html: bool) -> None:
    """The failed items by error type in the log, and ``OUT/report.html``: best effort, for people; a
    report that cannot be made never changes the run's outcome."""
    from batchqwen.reporting import analysis

    try:
        frame = analysis.load(out, columns=["id", "row", "status", "error_type", "error_code", "error_message"]).frame
        groups = analysis.failure_groups(frame)
        for line in analysis.failure_lines(out, groups, sum(g.count for g in groups)):
            log.warning("%s", line)
    except Exception as exc:
        log.warning("cannot list the failed items: %s", exc)
    if not html:
        return
    try:
        from batchqwen.reporting.html import write_html_report

        path = write_html_report(out)
        log.info("report: %s", path)
    except Exception as exc:
        log.warning("cannot write the HTML report: %s: %s", type(exc).__name__, exc)
