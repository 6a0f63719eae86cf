"""The simulator's function calls, conversations and billing: arguments that follow the declared JSON
Schema (checked by an independent validator, jsonschema), several calls per response, calls after tool
outputs, the argument faults, tools on a model without them, answers that remember earlier turns, the
re-billed context and the per-session billing records; and the official dashscope 2.x SDK through a
whole tool round."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import ipaddress
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import jsonschema
import numpy as np
import pytest
from dashscope import Client
from dashscope.v2.errors import DashScopeError
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from batchqwen.models import REGISTRY, audio_tokens, get_model
from batchqwen.realtime import events as ev
from batchqwen.sim.core import ServerSession
from batchqwen.sim.server import BilledResponse, Simulator, SimulatorConfig, SimulatorThread
from batchqwen.sim.tools import (
    ToolPolicy,
    ToolTurn,
    arguments_for,
    call_prompt,
    directives,
    round_seed,
    violate,
)
from batchqwen.tokens import count_text_tokens

FLASH = "qwen3-omni-flash-realtime"
PLUS = "qwen3.5-omni-plus-realtime"
LIVE = "qwen3-livetranslate-flash-realtime"
KEY = "sk-test"
Validator = jsonschema.Draft202012Validator

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days"],
}
FORM = {  # the shape a pydantic model gives: $defs, $ref, Optional as anyOf with null, defaults
    "$defs": {
        "Address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "zip": {"type": "string", "minLength": 5, "maxLength": 5}},
            "required": ["street", "zip"],
        }
    },
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "exclusiveMaximum": 130},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "vip": {"type": "boolean"},
        "born": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "uniqueItems": True},
        "address": {"$ref": "#/$defs/Address"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "lang": {"type": "string", "default": "en"},
    },
    "required": ["name", "age", "address"],
}


def tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "description": f"The {name} tool"}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def valid(schema: dict[str, Any], value: Any) -> bool:
    return Validator(schema, format_checker=Validator.FORMAT_CHECKER).is_valid(value)


def speech(seconds: float, freq: float = 220.0) -> bytes:
    t = np.arange(int(seconds * 16_000)) / 16_000
    wave = (np.sin(2 * np.pi * freq * t) + 0.5 * np.sin(4 * np.pi * freq * t)) * (0.7 + 0.3 * np.sin(8 * np.pi * t))
    return (0.2 * wave * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * 16_000) * 2)


# ----------------------------------------------------------------------------- arguments: properties


def _number_schema(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": kind}
        low = draw(st.one_of(st.none(), st.integers(-1000, 1000)))
        width = draw(st.integers(20, 500))
        if low is not None:
            spec["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
        if draw(st.booleans()):
            top = (low if low is not None else 0) + width
            spec["exclusiveMaximum" if draw(st.booleans()) else "maximum"] = top
        step = draw(st.sampled_from([None, 2, 5, 10] if kind == "integer" else [None, 0.5, 0.25, 2.5]))
        if step is not None:
            spec["multipleOf"] = step
        return spec

    return build()


@st.composite
def _string_schema(draw: st.DrawFn) -> dict[str, Any]:
    fmt = draw(st.sampled_from([None, None, "date", "date-time", "time", "email", "uri", "uuid", "ipv4"]))
    if fmt is not None:
        return {"type": "string", "format": fmt}
    spec: dict[str, Any] = {"type": "string"}
    shortest = draw(st.one_of(st.none(), st.integers(0, 50)))
    if shortest is not None:
        spec["minLength"] = shortest
    if draw(st.booleans()):
        spec["maxLength"] = (shortest or 0) + draw(st.integers(0, 30))
    return spec


_SCALARS = st.one_of(st.integers(-5, 5), st.text(max_size=8), st.booleans(), st.none())
_LEAVES = st.one_of(
    _number_schema("integer"),
    _number_schema("number"),
    _string_schema(),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(_SCALARS, min_size=1, max_size=5, unique_by=lambda v: (type(v).__name__, v)).map(lambda e: {"enum": e}),
    _SCALARS.map(lambda c: {"const": c}),
)
_NAMES = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)


@st.composite
def _object_schema(draw: st.DrawFn, children: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    properties = draw(st.dictionaries(_NAMES, children, min_size=0, max_size=5))
    required = draw(st.lists(st.sampled_from(sorted(properties)), unique=True)) if properties else []
    extra = draw(st.lists(_NAMES.filter(lambda n: n not in properties), max_size=1, unique=True))
    return {"type": "object", "properties": properties, "required": required + extra}


def _containers(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    arrays = st.builds(
        lambda items, low, more: {"type": "array", "items": items, "minItems": low, "maxItems": low + more},
        children,
        st.integers(0, 2),
        st.integers(0, 3),
    )
    nullable = children.map(lambda c: {"anyOf": [c, {"type": "null"}]})
    return st.one_of(_object_schema(children), arrays, nullable)


SCHEMAS = _object_schema(st.recursive(_LEAVES, _containers, max_leaves=12))


@settings(max_examples=150, deadline=None)
@given(SCHEMAS, st.text(max_size=60))
def test_arguments_follow_any_generated_schema_and_are_deterministic(schema: dict[str, Any], seed: str) -> None:
    arguments = arguments_for(schema, seed)
    Validator(schema, format_checker=Validator.FORMAT_CHECKER).validate(arguments)
    assert set(schema["required"]) <= set(arguments)  # every required property present
    assert list(arguments)[: len(schema["properties"])] == list(schema["properties"])  # declaration order
    assert arguments_for(copy.deepcopy(schema), seed) == arguments  # a pure function of schema and seed
    assert json.loads(json.dumps(arguments)) == arguments


@settings(max_examples=80, deadline=None)
@given(SCHEMAS, st.text(max_size=20), st.sampled_from(["bad_argument_type", "missing_argument"]))
def test_argument_faults_always_violate_the_schema(schema: dict[str, Any], seed: str, kind: str) -> None:
    broken = violate(schema, arguments_for(schema, seed), kind)
    assert not valid(schema, broken)


def test_refs_defaults_formats_and_bounds_of_a_pydantic_like_schema() -> None:
    arguments = arguments_for(FORM, "Fill the form for Ada Lovelace")
    assert valid(FORM, arguments)
    assert arguments["name"] == "Fill the form for Ada Lovelace"  # a free string is the seed, clipped to 40
    assert arguments["note"] is None and arguments["lang"] == "en"  # defaults, null among them
    assert 0 <= arguments["age"] < 130 and 0 <= arguments["score"] <= 1
    assert datetime.date.fromisoformat(arguments["born"])
    assert len(arguments["address"]["zip"]) == 5 and set(arguments["address"]) == {"street", "zip"}
    assert len(set(arguments["tags"])) == len(arguments["tags"]) >= 1
    long = arguments_for({"properties": {"q": {"type": "string"}}}, "x" * 100)
    assert long == {"q": "x" * 39 + "…"}


def test_every_format_is_valid_by_its_own_parser() -> None:
    schema = {
        "type": "object",
        "properties": {f: {"type": "string", "format": f} for f in ("date-time", "time", "uuid", "ipv4", "email")},
    }
    for seed in ("one", "two", "three"):
        arguments = arguments_for(schema, seed)
        datetime.datetime.fromisoformat(arguments["date-time"])
        datetime.time.fromisoformat(arguments["time"])
        assert uuid.UUID(arguments["uuid"]).version == 4
        ipaddress.IPv4Address(arguments["ipv4"])
        assert arguments["email"].endswith("@example.com")


def test_the_seed_picks_the_values() -> None:
    schema = {"properties": {"n": {"type": "integer", "minimum": 0, "maximum": 10**6}}}
    values = {arguments_for(schema, seed)["n"] for seed in ("a", "b", "c", "d")}
    assert len(values) == 4
    assert arguments_for(None, "x") == {} and arguments_for({"type": "object"}, "x") == {}
    assert arguments_for({"required": ["id"]}, "") == {"id": "id"}  # undeclared but required: a string
    cyclic = {"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}]}}, "properties": {"x": {"$ref": "#/$defs/A"}}}
    assert arguments_for(cyclic, "s") == {"x": "s"}  # a reference cycle stops at the depth limit


def test_the_faults_spelled_out() -> None:
    arguments = arguments_for(WEATHER, "Use get_weather for Paris")
    missing = violate(WEATHER, arguments, "missing_argument")
    assert "city" not in missing and missing["days"] == arguments["days"]
    errors = [e.message for e in Validator(WEATHER).iter_errors(missing)]
    assert errors == ["'city' is a required property"]
    wrong = violate(WEATHER, arguments, "bad_argument_type")
    assert wrong["city"] == 12345
    assert [e.message for e in Validator(WEATHER).iter_errors(wrong)] == ["12345 is not of type 'string'"]
    assert violate({"type": "object"}, {}, "missing_argument") == []  # nothing to break but the object itself
    with pytest.raises(ValueError, match="unknown argument fault"):
        violate(WEATHER, arguments, "nonsense")


# ----------------------------------------------------------------------------- the call policy, pure


def test_policy_names_tools_as_words_and_counts_rounds() -> None:
    tools = [tool("lookup", WEATHER), tool("log")]
    assert [c.name for c in ToolTurn.start("use lookups", tools, ToolPolicy()).next_calls()] == []
    turn = ToolTurn.start("use lookup and log", tools, ToolPolicy(rounds=2))
    first, second, third = turn.next_calls(), turn.next_calls(), turn.next_calls()
    assert [c.name for c in first] == [c.name for c in second] == ["lookup", "log"] and third == []
    assert json.loads(second[0].arguments) == arguments_for(WEATHER, round_seed("use lookup and log", 2))
    sequential = ToolTurn.start("use lookup and log", tools, ToolPolicy(rounds=1, parallel=False))
    assert [[c.name for c in sequential.next_calls()] for _ in range(3)] == [["lookup"], ["log"], []]
    assert directives("x sim_tool_rounds=3 sim_fault=missing_argument") == {
        "sim_tool_rounds": "3",
        "sim_fault": "missing_argument",
    }
    assert ToolPolicy().with_directives("sim_tool_rounds=0 sim_parallel_calls=0") == ToolPolicy(0, False)
    assert call_prompt("", ["a", "", "b"]) == "a b"
    with pytest.raises(ValueError):
        SimulatorConfig(argument_fault="nonsense")


# ----------------------------------------------------------------------------- in memory


def open_core(model: str = PLUS, config: SimulatorConfig | None = None, **update: Any) -> ServerSession:
    core = ServerSession(model, config=config)
    assert isinstance(core.opening_events()[0], ev.SessionCreated)
    out = core.receive(ev.SessionUpdate(session={"turn_detection": None, "modalities": ["text"], **update}))
    assert isinstance(out[-1], ev.SessionUpdated), out
    return core


def say(core: ServerSession, text: str) -> None:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    assert isinstance(core.receive(ev.ConversationItemCreate(item=item))[-1], ev.ConversationItemCreated)


def hear(core: ServerSession, pcm: bytes) -> None:
    core.receive(ev.InputAudioBufferAppend(audio=base64.b64encode(pcm).decode()))
    assert isinstance(core.receive(ev.InputAudioBufferCommit())[0], ev.InputAudioBufferCommitted)


def respond(core: ServerSession) -> list[ev.Event]:
    events = core.receive(ev.ResponseCreate(response={}))
    assert isinstance(events[-1], ev.ResponseDone), events
    return events


def calls(events: list[ev.Event]) -> list[ev.ResponseFunctionCallArgumentsDone]:
    return [e for e in events if isinstance(e, ev.ResponseFunctionCallArgumentsDone)]


def answer(events: list[ev.Event]) -> str:
    (done,) = [e for e in events if isinstance(e, ev.ResponseTextDone)]
    return done.text


def give(core: ServerSession, call: ev.ResponseFunctionCallArgumentsDone, output: str) -> None:
    item = {"type": "function_call_output", "call_id": call.call_id, "output": output}
    assert isinstance(core.receive(ev.ConversationItemCreate(item=item))[-1], ev.ConversationItemCreated)


def test_several_calls_in_one_response_then_the_answer_quotes_every_output() -> None:
    core = open_core(tools=[tool("get_weather", WEATHER), tool("fill_form", FORM), tool("unused", {})])
    say(core, "Use get_weather and fill_form for Paris")
    events = respond(core)
    first, second = calls(events)
    prompt = "Use get_weather and fill_form for Paris"
    assert (first.name, second.name) == ("get_weather", "fill_form")
    assert (first.output_index, second.output_index) == (0, 1) and first.call_id != second.call_id
    assert json.loads(first.arguments) == arguments_for(WEATHER, prompt)
    assert json.loads(second.arguments) == arguments_for(FORM, prompt)
    deltas = "".join(e.delta for e in events if isinstance(e, ev.ResponseFunctionCallArgumentsDelta) and e.output_index)
    assert deltas == second.arguments  # streamed in pieces that add up
    done = events[-1]
    assert isinstance(done, ev.ResponseDone)
    assert [i["type"] for i in done.response["output"]] == ["function_call", "function_call"]
    assert done.usage is not None
    assert done.usage.output_text_tokens == count_text_tokens(first.arguments) + count_text_tokens(second.arguments)
    give(core, first, '{"temp": 21}')
    give(core, second, '{"ok": true}')
    text = answer(respond(core))
    assert (
        "Tool get_weather returned: '{\"temp\": 21}'." in text and "Tool fill_form returned: '{\"ok\": true}'." in text
    )


def test_calls_after_tool_outputs_for_max_tool_rounds_and_one_call_per_response() -> None:
    config = SimulatorConfig(tool_rounds=3, parallel_tool_calls=False)
    core = open_core(
        config=config, instructions="Always use lookup then log.", tools=[tool("lookup", WEATHER), tool("log")]
    )
    say(core, "Paris")
    prompt = call_prompt("Always use lookup then log.", ["Paris"])
    made = []
    for _ in range(6):
        (call,) = calls(respond(core))
        made.append(call.name)
        if call.name == "lookup":
            round_number = made.count("lookup")
            assert json.loads(call.arguments) == arguments_for(WEATHER, round_seed(prompt, round_number))
        give(core, call, "done")
    assert made == ["lookup", "log"] * 3
    final = respond(core)
    assert calls(final) == [] and "Tool log returned: 'done'." in answer(final)
    say(core, "Berlin")  # a new turn calls again
    assert [c.name for c in calls(respond(core))] == ["lookup"]


def test_an_item_switches_its_own_rounds_and_argument_fault_in_its_text() -> None:
    core = open_core(tools=[tool("get_weather", WEATHER)])
    say(core, "get_weather sim_fault=missing_argument sim_tool_rounds=2")
    (call,) = calls(respond(core))
    assert not valid(WEATHER, json.loads(call.arguments)) and "city" not in json.loads(call.arguments)
    give(core, call, "x")
    assert calls(respond(core))  # a second round
    say(core, "get_weather again")  # the next turn is clean
    (clean,) = calls(respond(core))
    assert json.loads(clean.arguments) == arguments_for(WEATHER, "get_weather again")
    assert set(core.argument_faults.values()) == {"missing_argument"} and len(core.argument_faults) == 2


def test_tools_on_a_model_without_them_is_the_documented_session_update_error() -> None:
    core = open_core(FLASH)
    (error,) = core.receive(ev.SessionUpdate(session={"tools": [tool("get_weather", WEATHER)]}))
    assert isinstance(error, ev.Error)
    with_tools = [name for name, model in REGISTRY.items() if model.tools]
    assert with_tools == ["qwen3.5-omni-flash-realtime", "qwen3.5-omni-plus-realtime"]
    assert error.error == {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "message": f"Model {FLASH} does not support tools (function calling); models with tools: "
        + ", ".join(with_tools)
        + ".",
        "param": "session.tools",
    }
    assert core.session["tools"] == [] and not core.should_close  # nothing applied, session usable
    assert isinstance(core.receive(ev.SessionUpdate(session={"tools": []}))[0], ev.SessionUpdated)
    ignoring = open_core(FLASH, SimulatorConfig(unsupported_tools="ignore"), instructions="use get_weather")
    assert isinstance(
        ignoring.receive(ev.SessionUpdate(session={"tools": [tool("get_weather")]}))[0], ev.SessionUpdated
    )
    hear(ignoring, speech(1.0))
    assert calls(respond(ignoring)) == []  # accepted and never called, as reported of the older models


def test_answers_remember_earlier_turns_while_they_are_in_the_context() -> None:
    core = open_core()
    say(core, "My name is Ada.")
    assert "Earlier in this session" not in answer(respond(core))
    hear(core, speech(2.0))
    say(core, "What is my name?")
    second = answer(respond(core))
    assert "Earlier in this session: turn 1: you wrote 'My name is Ada.'." in second
    say(core, "And now?")
    assert "turn 1: you wrote 'My name is Ada.'; turn 2: 2.0 s of audio, you wrote 'What is my name?'." in answer(
        respond(core)
    )
    flash = open_core(FLASH)  # keeps the last 8 audio turns: turn 1 leaves the context at turn 9
    for n in range(1, 10):
        hear(flash, speech(1.0 + n / 10))
        text = answer(respond(flash))
    assert "turn 1:" not in text and "turn 2: 1.2 s of audio" in text and "turn 8: 1.8 s of audio." in text


def test_every_response_re_bills_the_conversation_so_far() -> None:
    instructions = "Answer in one sentence."
    core = open_core(FLASH, instructions=instructions)
    model = get_model(FLASH)
    usages: list[ev.Usage] = []
    for n in range(10):
        hear(core, speech(1.0 + n / 10))
        done = respond(core)[-1]
        assert isinstance(done, ev.ResponseDone) and done.usage is not None
        usages.append(done.usage)
        kept = range(max(0, n - 7), n + 1)  # the last 8 audio turns, and the answers they got
        assert done.usage.input_audio_tokens == sum(audio_tokens(model, 1.0 + k / 10) for k in kept)
        earlier_answers = sum(usages[k].output_text_tokens or 0 for k in kept if k < n)
        assert done.usage.input_text_tokens == count_text_tokens(instructions) + earlier_answers
    assert list(core.usages.values()) == usages
    # a translator answers each utterance alone: nothing earlier is billed again
    live = ServerSession(LIVE)
    live.opening_events()
    heard: list[ev.Event] = []
    for pcm in (speech(1.0) + silence(1.2), speech(1.5, 330) + silence(1.2)):
        heard += live.receive(ev.InputAudioBufferAppend(audio=base64.b64encode(pcm).decode()))
    started = [e.audio_start_ms for e in heard if isinstance(e, ev.InputAudioBufferSpeechStarted)]
    stopped = [e.audio_end_ms for e in heard if isinstance(e, ev.InputAudioBufferSpeechStopped)]
    second = list(live.usages.values())[1]
    assert second.input_text_tokens == 0  # the first translation is not billed again
    assert second.input_audio_tokens == audio_tokens(get_model(LIVE), (stopped[1] - started[1]) / 1000)


# ----------------------------------------------------------------------------- over the socket


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 25))


async def open_ws(sim: Simulator, model: str = PLUS, key: str = KEY, **query: str) -> ClientConnection:
    ws = await connect(sim.url_for(model, **query), additional_headers={"Authorization": f"Bearer {key}"})
    assert (await recv(ws))["type"] == "session.created"
    return ws


async def recv(ws: ClientConnection) -> dict[str, Any]:
    data = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert isinstance(data, dict)
    return data


async def send(ws: ClientConnection, event_type: str, **fields: Any) -> None:
    await ws.send(json.dumps({"type": event_type, **fields}))


async def until(ws: ClientConnection, event_type: str) -> list[dict[str, Any]]:
    seen = [await recv(ws)]
    while seen[-1]["type"] != event_type:
        seen.append(await recv(ws))
    return seen


async def typed(ws: ClientConnection, text: str) -> None:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await send(ws, "conversation.item.create", item=item)
    assert (await recv(ws))["type"] == "conversation.item.created"


async def tool_output(ws: ClientConnection, call_id: str, output: str) -> None:
    await send(
        ws, "conversation.item.create", item={"type": "function_call_output", "call_id": call_id, "output": output}
    )
    assert (await recv(ws))["type"] == "conversation.item.created"


def arguments_of(events: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (e["name"], json.loads(e["arguments"])) for e in events if e["type"] == "response.function_call_arguments.done"
    ]


def test_per_connection_switches_in_the_url_and_the_key() -> None:
    tools = [tool("lookup", WEATHER), tool("log", {"type": "object", "properties": {"n": {"type": "integer"}}})]

    async def main() -> None:
        async with Simulator(SimulatorConfig()) as sim:
            ws = await open_ws(sim, sim_tool_rounds="2", sim_parallel_calls="0")
            await send(ws, "session.update", session={"turn_detection": None, "modalities": ["text"], "tools": tools})
            assert (await recv(ws))["type"] == "session.updated"
            await typed(ws, "use lookup and log")
            names = []
            for _ in range(4):
                await send(ws, "response.create")
                events = await until(ws, "response.done")
                ((name, arguments),) = arguments_of(events)
                names.append(name)
                assert arguments == arguments_for(
                    tools[name == "log"]["function"]["parameters"], round_seed("use lookup and log", names.count(name))
                )
                done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
                await tool_output(ws, done["call_id"], "ok")
            await send(ws, "response.create")
            assert arguments_of(await until(ws, "response.done")) == []
            assert names == ["lookup", "log", "lookup", "log"]
            await ws.close()

            for switch in ({"sim_fault": "missing_argument"}, {"key": "fault-bad_argument_type-7"}):
                key = switch.pop("key", KEY)
                ws = await open_ws(sim, key=key, **switch)
                await send(
                    ws, "session.update", session={"turn_detection": None, "modalities": ["text"], "tools": tools}
                )
                await recv(ws)
                await typed(ws, "use lookup")
                await send(ws, "response.create")
                ((_, arguments),) = arguments_of(await until(ws, "response.done"))
                assert not valid(WEATHER, arguments)
                await ws.close()
            assert sim.stats.faults == {"missing_argument": 1, "bad_argument_type": 1}

            for bad in ({"sim_tool_rounds": "many"}, {"sim_parallel_calls": "yes"}, {"sim_fault": "bad_args"}):
                with pytest.raises(InvalidStatus) as refused:
                    await open_ws(sim, **bad)
                assert refused.value.response.status_code == 400

    run(main)


def test_billing_records_equal_every_response_done_the_client_received() -> None:
    async def main() -> None:
        async with Simulator(SimulatorConfig(delta_delay_seconds=0.002)) as sim:
            ws = await connect(sim.url_for(PLUS), additional_headers={"Authorization": f"Bearer {KEY}"})
            session_id = (await recv(ws))["session"]["id"]
            update = {"turn_detection": None, "modalities": ["text", "audio"], "tools": [tool("get_weather", WEATHER)]}
            await send(ws, "session.update", session=update)
            await recv(ws)
            received: list[dict[str, Any]] = []
            await typed(ws, "get_weather for Paris")
            await send(ws, "response.create")
            events = await until(ws, "response.done")
            received.append(events[-1]["response"])
            call = next(e for e in events if e["type"] == "response.function_call_arguments.done")
            await tool_output(ws, call["call_id"], "21 C")
            await send(ws, "response.create")
            received.append((await until(ws, "response.done"))[-1]["response"])
            await typed(ws, "And tomorrow, in one word?")  # no tool named: a plain answer, cancelled mid-stream
            await send(ws, "response.create")
            assert (await recv(ws))["type"] == "response.created"
            await send(ws, "response.cancel")
            received.append((await until(ws, "response.done"))[-1]["response"])
            await ws.close()
        records = sim.stats.billing[session_id]
        expected = [
            BilledResponse(r["id"], r["status"], ev.Usage.from_json(r["usage"]) or ev.Usage(), calls)
            for r, calls in zip(received, [("get_weather",), (), ()], strict=True)
        ]
        assert records == expected
        assert [r.status for r in records] == ["completed", "completed", "cancelled"]
        first, second, _ = (r.usage for r in records)
        assert second.input_text_tokens == first.input_text_tokens + count_text_tokens("21 C") + (
            first.output_text_tokens or 0
        )

    run(main)


# ----------------------------------------------------------------------------- the official SDK (v2)

SDK_WARNING = "ignore:dashscope 2.0 audio API is a preview:FutureWarning"


@pytest.fixture(scope="module")
def sdk_sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig(api_keys=(KEY,))) as running:
        yield running


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with Client(api_key=KEY, workspace="ws-test", timeout=10) as made:
        yield made


def receive_until(session: Any, target: str, deadline: float = 20.0) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        event = session.recv_event()
        assert event is not None, f"closed before {target}; got {[e['type'] for e in events]}"
        events.append(event)
        if event["type"] == target:
            return events
    raise AssertionError(f"no {target} within {deadline} s")


@pytest.mark.filterwarnings(SDK_WARNING)
def test_sdk_v2_drives_a_whole_tool_round(sdk_sim: SimulatorThread, client: Client) -> None:
    tools = [tool("get_weather", WEATHER), tool("fill_form", FORM)]
    with client.audio.realtime.connect(model=PLUS, ws_url=sdk_sim.url) as session:
        receive_until(session, "session.created")
        session.update_session(
            ["text", "audio"],
            voice="Tina",
            enable_turn_detection=False,
            enable_input_audio_transcription=False,
            instructions="Answer briefly.",
            tools=tools,
        )
        assert receive_until(session, "session.updated")[-1]["session"]["tools"] == tools
        pcm = speech(1.5)
        for start in range(0, len(pcm), 3200):
            session.append_audio(pcm[start : start + 3200])
        session.commit()
        text = "Use get_weather for Paris, then fill_form."
        session.create_item({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
        session.create_response()
        events = receive_until(session, "response.done")
        done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
        prompt = call_prompt("Answer briefly.", [text])
        assert [(d["name"], json.loads(d["arguments"])) for d in done] == [
            ("get_weather", arguments_for(WEATHER, prompt)),
            ("fill_form", arguments_for(FORM, prompt)),
        ]
        assert events[-1]["response"]["status"] == "completed"
        for call, output in zip(done, ['{"temp": 21}', '{"saved": true}'], strict=True):
            session.create_item({"type": "function_call_output", "call_id": call["call_id"], "output": output})
        session.create_response()
        final = receive_until(session, "response.done")
        transcript = next(e for e in final if e["type"] == "response.audio_transcript.done")["transcript"]
        assert "Tool get_weather returned: '{\"temp\": 21}'." in transcript
        assert "Tool fill_form returned: '{\"saved\": true}'." in transcript
        assert any(e["type"] == "response.audio.delta" for e in final)
        assert final[-1]["response"]["output"][0]["type"] == "message"
        session.end_session()
        assert [e["type"] for e in session.events()][-1] == "session.finished"


@pytest.mark.filterwarnings(SDK_WARNING)
def test_sdk_v2_sees_tools_refused_on_a_model_without_them(sdk_sim: SimulatorThread, client: Client) -> None:
    with client.audio.realtime.connect(model=FLASH, ws_url=sdk_sim.url) as session:
        receive_until(session, "session.created")
        session.update_session(["text"], enable_turn_detection=False, tools=[tool("get_weather", WEATHER)])
        with pytest.raises(DashScopeError) as raised:
            receive_until(session, "session.updated")
        assert raised.value.code == "invalid_value" and "does not support tools" in str(raised.value)
        session.update_session(["text"], enable_turn_detection=False)  # the session is still usable
        assert receive_until(session, "session.updated")[-1]["session"]["tools"] == []


def test_batchqwen_simulate_takes_the_tool_switches() -> None:
    """``batchqwen simulate --tool-rounds 2 --sequential-tool-calls`` as a process, driven over its socket."""
    command = [sys.executable, "-m", "batchqwen.cli", "simulate", "--port", "0", "--tool-rounds", "2"]

    async def main(url: str) -> None:
        async with connect(f"{url}?model={PLUS}", additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            await recv(ws)
            tools = [tool("lookup", WEATHER), tool("log")]
            await send(ws, "session.update", session={"turn_detection": None, "modalities": ["text"], "tools": tools})
            await recv(ws)
            await typed(ws, "lookup then log")
            names = []
            while True:
                await send(ws, "response.create")
                done = [e for e in await until(ws, "response.done") if e["type"].endswith("arguments.done")]
                if not done:
                    break
                names += [d["name"] for d in done]
                for call in done:
                    await tool_output(ws, call["call_id"], "ok")
            assert names == ["lookup", "log", "lookup", "log"]

    with subprocess.Popen([*command, "--sequential-tool-calls"], stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()  # "batchqwen simulator listening on ws://127.0.0.1:PORT/...?model=MODEL"
            run(lambda: main(line.split(" on ", 1)[1].split("?", 1)[0]))
        finally:
            process.terminate()
            process.wait(timeout=10)
