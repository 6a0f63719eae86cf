"""Tools from the command line: schemas from type hints, declaration files, running calls (sync, async,
raising, too slow), tool rounds in the protocol core, --extract typed columns, and whole runs against the
simulator (``run --simulate --tools``, per-row narrowing, refusals before any session, the budget)."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from media_factory import write_audio

from batchqwen import cli, cost, runner
from batchqwen.config import RunConfig
from batchqwen.errors import ExtractError, InvalidState, ProtocolError, UsageError
from batchqwen.extract import arrow_type, extraction_for
from batchqwen.items import PreparedInput, ToolCall, TurnRequest
from batchqwen.limiter import Limiter
from batchqwen.models import get_model
from batchqwen.realtime.events import (
    ConversationItemCreate,
    Event,
    InputAudioBufferCommitted,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    ResponseFunctionCallArgumentsDone,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    SessionCreated,
    SessionFinished,
    SessionUpdated,
)
from batchqwen.realtime.protocol import ClientTurn, FunctionCall, State, ToolOutput
from batchqwen.sim.server import Simulator, SimulatorConfig
from batchqwen.sim.tools import arguments_for, call_prompt
from batchqwen.tools import Toolbox, load_tools, schema_for_hint, tool_of_function

OMNI35 = get_model("qwen3.5-omni-flash-realtime")
FLASH = get_model("qwen3-omni-flash-realtime")
KEY = "sk-tools-test-key-0001"
FAST = runner.RetryPolicy(base_delay=0.01, max_delay=0.05, throttle_base_delay=0.05, throttle_max_delay=0.1)

TOOLS_PY = '''
"""Tools of a test job."""
import asyncio
import time
from typing import Literal, TypedDict


class Address(TypedDict):
    street: str
    zip: int


def record_order(
    customer: str,
    quantity: int,
    express: bool = False,
    weight: float | None = None,
    tags: list[str] | None = None,
    address: Address | None = None,
    mood: Literal["calm", "upset"] | None = None,
    counts: dict[str, int] | None = None,
) -> dict:
    """Record the order a caller places.

    Args:
        customer: the caller's name
        quantity: how many items
    """
    return {"order": f"{customer[:8]}-{quantity}", "express": express}


def explode(x: int) -> int:
    """Always fails."""
    raise ValueError("boom " + str(x))


def sleepy(x: int) -> int:
    """Never answers in time."""
    time.sleep(3)
    return x


async def dawdle(x: int) -> int:
    """Never answers in time either, asynchronously."""
    await asyncio.sleep(3)
    return x


async def echo(x: int) -> dict:
    """Answers at once, asynchronously."""
    await asyncio.sleep(0)
    return {"x": x}


def _helper() -> None:
    """Private: not a tool."""
'''


@pytest.fixture()
def tools_py(tmp_path: Path) -> Path:
    path = tmp_path / "tools.py"
    path.write_text(TOOLS_PY)
    return path


def call(name: str, arguments: dict[str, Any] | str, call_id: str = "call_1") -> FunctionCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return FunctionCall(call_id, name, text)


# ----------------------------------------------------------------------------- schemas from type hints


class Point(TypedDict, total=False):
    x: float
    label: str


def test_schema_for_hints_covers_the_json_types() -> None:
    assert schema_for_hint(str) == {"type": "string"}
    assert schema_for_hint(int) == {"type": "integer"}
    assert schema_for_hint(float) == {"type": "number"}
    assert schema_for_hint(bool) == {"type": "boolean"}
    assert schema_for_hint(list[int]) == {"type": "array", "items": {"type": "integer"}}
    assert schema_for_hint(dict[str, float]) == {"type": "object", "additionalProperties": {"type": "number"}}
    assert schema_for_hint(Literal["a", "b"]) == {"type": "string", "enum": ["a", "b"]}
    assert schema_for_hint(int | None) == {"type": ["integer", "null"]}
    assert schema_for_hint(int | str) == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert schema_for_hint(Annotated[str, "the city"]) == {"type": "string", "description": "the city"}
    assert schema_for_hint(Point) == {
        "type": "object",
        "properties": {"x": {"type": "number"}, "label": {"type": "string"}},
        "additionalProperties": False,
    }
    assert schema_for_hint(Any) == {}
    with pytest.raises(UsageError, match="no JSON Schema"):
        schema_for_hint(bytes)
    with pytest.raises(UsageError, match="keys must be str"):
        schema_for_hint(dict[int, str])


def lookup(city: str, days: int = 3, units: Literal["C", "F"] = "C") -> dict[str, Any]:
    """Look up the weather.

    Args:
        city: the city's name,
            as spoken
        days: how many days ahead

    Returns:
        a forecast
    """
    return {}


def test_tool_of_a_function_takes_name_docstring_hints_and_defaults() -> None:
    tool = tool_of_function(lookup)
    assert tool.name == "lookup"
    assert tool.description == "Look up the weather."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "the city's name, as spoken"},
            "days": {"type": "integer", "description": "how many days ahead", "default": 3},
            "units": {"type": "string", "enum": ["C", "F"], "default": "C"},
        },
        "additionalProperties": False,
        "required": ["city"],
    }
    assert tool.declaration() == {
        "type": "function",
        "function": {"name": "lookup", "description": "Look up the weather.", "parameters": tool.parameters},
    }


def test_a_parameter_without_a_hint_or_of_an_odd_kind_is_refused() -> None:
    def untyped(city):  # type: ignore[no-untyped-def]
        return city

    def star(*cities: str) -> None:
        return None

    with pytest.raises(UsageError, match="parameter 'city' needs a type hint"):
        tool_of_function(untyped)
    with pytest.raises(UsageError, match="plain named parameter"):
        tool_of_function(star)


def test_module_tools_are_its_public_functions_in_source_order(tools_py: Path) -> None:
    box = load_tools(tools_py)
    assert box.names == ["record_order", "explode", "sleepy", "dawdle", "echo"]
    order = box.tools["record_order"].parameters
    assert order["required"] == ["customer", "quantity"]
    assert order["properties"]["address"] == {
        "type": ["object", "null"],
        "properties": {"street": {"type": "string"}, "zip": {"type": "integer"}},
        "additionalProperties": False,
        "required": ["street", "zip"],
        "default": None,
    }


def test_bad_tools_files_are_usage_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import nothing_of_that_name\n")
    with pytest.raises(UsageError, match="importing it failed: ModuleNotFoundError"):
        load_tools(broken)
    empty = tmp_path / "empty.py"
    empty.write_text("from json import dumps\nX = 1\n")
    with pytest.raises(UsageError, match="no tools found"):
        load_tools(empty)
    with pytest.raises(UsageError, match="no such file"):
        load_tools(tmp_path / "absent.py")
    bad_schema = tmp_path / "bad.json"
    bad_schema.write_text(json.dumps([{"name": "f", "parameters": {"type": "object", "required": "x"}}]))
    with pytest.raises(UsageError, match="not a valid JSON Schema"):
        load_tools(bad_schema)
    with pytest.raises(UsageError, match="--tool-output must be JSON"):
        load_tools(tmp_path / "empty.py", canned_output="{not json")  # checked before the module's tools


def test_json_declarations_in_the_service_form_answer_with_the_canned_output(tmp_path: Path) -> None:
    declared = tmp_path / "tools.json"
    function = {"name": "fill", "description": "Fill the form.", "parameters": {"type": "object", "properties": {}}}
    declared.write_text(json.dumps({"tools": [{"type": "function", "function": function}]}))
    box = load_tools(declared, canned_output='{"saved": 1}')
    assert box.declarations() == [{"type": "function", "function": function}]
    answer = asyncio.run(box.answer(call("fill", {}), ["fill"]))
    assert answer.output == '{"saved": 1}' and answer.error is None


# ----------------------------------------------------------------------------- answering calls


def answer(box: Toolbox, name: str, arguments: dict[str, Any] | str) -> ToolOutput:
    return asyncio.run(box.answer(call(name, arguments), box.names))


def test_sync_and_async_tools_answer_with_json(tools_py: Path) -> None:
    box = load_tools(tools_py)
    first = answer(box, "record_order", {"customer": "Ann", "quantity": 2})
    assert json.loads(first.output) == {"order": "Ann-2", "express": False} and first.error is None
    assert first.seconds is not None and first.seconds >= 0
    assert json.loads(answer(box, "echo", {"x": 7}).output) == {"x": 7}
    box.close()


def test_a_tool_that_raises_answers_an_error_object(tools_py: Path) -> None:
    out = answer(load_tools(tools_py), "explode", {"x": 3})
    assert out.error == "ValueError: boom 3"
    assert json.loads(out.output) == {"error": {"type": "ValueError", "message": "ValueError: boom 3"}}


@pytest.mark.parametrize("name", ["sleepy", "dawdle"])
def test_a_tool_past_its_timeout_answers_an_error_object_in_time(tools_py: Path, name: str) -> None:
    box = load_tools(tools_py, timeout=0.2)
    started = time.monotonic()
    out = answer(box, name, {"x": 1})
    assert time.monotonic() - started < 1.5  # not the tool's 3 s
    assert out.error == f"tool {name} did not return within 0.2 s"
    assert json.loads(out.output)["error"]["type"] == "timeout"
    box.close()


def test_arguments_off_the_schema_unknown_or_unoffered_tools_are_not_run(tools_py: Path) -> None:
    box = load_tools(tools_py)
    wrong = answer(box, "record_order", {"customer": "Ann", "quantity": "two"})
    assert wrong.error is not None and "'two' is not of type 'integer' (at $.quantity)" in wrong.error
    extra = answer(box, "record_order", {"customer": "Ann", "quantity": 1, "colour": "red"})
    assert extra.error is not None and "Additional properties are not allowed" in extra.error
    assert answer(box, "record_order", "{oops").error == (
        "the arguments are not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )
    unknown = asyncio.run(box.answer(call("steal", {}), box.names))
    assert unknown.error is not None and unknown.error.startswith("no tool 'steal' is offered here")
    unoffered = asyncio.run(box.answer(call("explode", {"x": 1}), ["record_order"]))
    assert unoffered.error == "no tool 'explode' is offered here; tools: record_order"


# ----------------------------------------------------------------------------- tool rounds in the core


def call_response(rid: str, *calls: tuple[str, str]) -> list[Event]:
    events: list[Event] = [ResponseCreated(response={"id": rid})]
    for index, (call_id, name) in enumerate(calls):
        events += [
            ResponseOutputItemAdded(response_id=rid, output_index=index, item={"type": "function_call"}),
            ResponseFunctionCallArgumentsDone(
                response_id=rid, output_index=index, call_id=call_id, name=name, arguments='{"x": 1}'
            ),
            ResponseOutputItemDone(response_id=rid, output_index=index),
        ]
    usage = {"total_tokens": 10, "input_tokens": 8, "output_tokens": 2}
    return [*events, ResponseDone(response={"id": rid, "status": "completed", "usage": usage})]


def opened(core: ClientTurn) -> list[Any]:
    sent = []
    for event in [SessionCreated(session={"id": "s"}), SessionUpdated(session={})]:
        core.receive(event)
    while (out := core.next_event()) is not None:
        sent.append(out.event)
    core.receive(InputAudioBufferCommitted(item_id="in"))
    return sent


def drain(core: ClientTurn) -> list[Any]:
    sent = []
    while (out := core.next_event()) is not None:
        sent.append(out.event)
    return sent


def test_deferred_tool_round_with_two_calls_waits_for_the_outputs_then_asks_again() -> None:
    request = TurnRequest(OMNI35, "Tina", ("text",), PreparedInput(b"\0" * 3200), transcribe_input=False)
    core = ClientTurn(request, defer_tools=True, max_tool_rounds=4)
    opened(core)
    with pytest.raises(InvalidState, match="no function calls await outputs in state await_response"):
        core.provide_tool_outputs([])
    for event in call_response("r1", ("c1", "f"), ("c2", "g")):
        core.receive(event)
    assert core.state is State.AWAIT_TOOLS
    assert [c.call_id for c in core.pending_calls] == ["c1", "c2"]
    assert core.next_event() is None  # nothing goes until the outputs are there
    with pytest.raises(InvalidState, match="1 tool outputs for 2 function calls"):
        core.provide_tool_outputs([ToolOutput("{}")])
    core.provide_tool_outputs([ToolOutput('{"a": 1}', seconds=0.5), ToolOutput('{"error": 1}', error="boom")])
    sent = drain(core)
    assert [type(e) for e in sent] == [ConversationItemCreate, ConversationItemCreate, ResponseCreate]
    assert [e.item for e in sent[:2]] == [
        {"type": "function_call_output", "call_id": "c1", "output": '{"a": 1}'},
        {"type": "function_call_output", "call_id": "c2", "output": '{"error": 1}'},
    ]
    for event in call_response("r2"):  # the final answer: no calls
        core.receive(event)
    assert [type(e).__name__ for e in drain(core)] == ["SessionFinish"]
    core.receive(SessionFinished())
    result = core.result()
    assert result.tool_round_limit is None
    assert result.turns[0].tool_calls == [
        ToolCall("c1", "f", '{"x": 1}', 1, '{"a": 1}', None, 0.5),
        ToolCall("c2", "g", '{"x": 1}', 1, '{"error": 1}', "boom", None),
    ]
    assert result.usage is not None and result.usage.total_tokens == 20  # both responses billed
    core.provide_tool_outputs([])  # a core that is done ignores late outputs (a tool outlived its session)


def test_a_round_past_max_tool_rounds_is_not_run_and_ends_the_session() -> None:
    request = TurnRequest(OMNI35, "Tina", ("text",), PreparedInput(b"\0" * 3200), transcribe_input=False)
    core = ClientTurn(request, tool_handler=lambda c: '{"ok": true}', max_tool_rounds=2)
    opened(core)
    for rid in ("r1", "r2"):
        for event in call_response(rid, (f"c-{rid}", "f")):
            core.receive(event)
        assert core.state is State.AWAIT_RESPONSE
        drain(core)
    for event in call_response("r3", ("c-r3", "f")):
        core.receive(event)
    assert core.state is State.FINISHING  # no third round: the session ends
    assert [type(e).__name__ for e in drain(core)] == ["SessionFinish"]
    core.receive(SessionFinished())
    result = core.result()
    assert result.tool_round_limit == (
        "the model asked for tool round 3 past the limit of 2 (--max-tool-rounds); its calls were not run"
    )
    calls = result.turns[0].tool_calls
    assert [(c.output, c.error) for c in calls] == [
        ('{"ok": true}', None),
        ('{"ok": true}', None),
        (None, "not run: past --max-tool-rounds"),
    ]


def test_the_hard_response_cap_still_stops_a_loop_without_a_round_limit() -> None:
    request = TurnRequest(OMNI35, "Tina", ("text",), PreparedInput(b"\0" * 3200), transcribe_input=False)
    core = ClientTurn(request, tool_handler=lambda c: "{}", max_responses=2)
    opened(core)
    for event in call_response("r1", ("c1", "f")):
        core.receive(event)
    drain(core)
    with pytest.raises(ProtocolError, match="more than 2 responses"):
        for event in call_response("r2", ("c2", "f")):
            core.receive(event)


# ----------------------------------------------------------------------------- --extract


def test_json_schema_to_arrow_types() -> None:
    root = {"$defs": {"Zip": {"type": "integer"}}}
    assert arrow_type({"type": "string", "format": "date"}) == pa.string()
    assert arrow_type({"type": "integer"}) == pa.int64()
    assert arrow_type({"type": "number"}) == pa.float64()
    assert arrow_type({"type": "boolean"}) == pa.bool_()
    assert arrow_type({"type": ["number", "null"]}) == pa.float64()
    assert arrow_type({"enum": ["a", "b", None]}) == pa.string()
    assert arrow_type({"enum": [1, 2]}) == pa.int64()
    assert arrow_type({"type": "array", "items": {"type": "string"}}) == pa.list_(pa.string())
    assert arrow_type({"$ref": "#/$defs/Zip"}, root) == pa.int64()
    nested = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "array", "items": {}}}}
    assert arrow_type(nested) == pa.struct([("a", pa.int64()), ("b", pa.list_(pa.string()))])
    assert arrow_type({"type": "object", "additionalProperties": {"type": "integer"}}) == pa.map_(
        pa.string(), pa.int64()
    )
    assert arrow_type({"anyOf": [{"type": "integer"}, {"type": "null"}]}) == pa.int64()
    for as_json in ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, {}, {"type": "object"}):
        assert arrow_type(as_json) == pa.string()  # stored as JSON text


def test_final_arguments_validate_or_fail_with_the_reason(tools_py: Path) -> None:
    extraction = extraction_for(load_tools(tools_py), "record_order")
    assert extraction.columns[:3] == ["extract_customer", "extract_quantity", "extract_express"]
    first = ToolCall("c1", "record_order", '{"customer": "Ann", "quantity": 1}')
    last = ToolCall("c2", "record_order", '{"customer": "Ann", "quantity": 5, "tags": ["a"]}', turn=2)
    text = extraction.final_arguments([first, ToolCall("c3", "explode", "{}"), last])
    assert json.loads(text) == {"customer": "Ann", "quantity": 5, "tags": ["a"]}
    assert extraction.values(text)[:5] == ["Ann", 5, None, None, ["a"]]
    with pytest.raises(ExtractError, match=r"the final arguments do not match the schema: 'quantity' is a required"):
        extraction.final_arguments([ToolCall("c", "record_order", '{"customer": "Ann"}')])
    with pytest.raises(ExtractError, match=r"never called record_order \(it called explode\)"):
        extraction.final_arguments([ToolCall("c", "explode", "{}")])
    with pytest.raises(ExtractError, match="does not fit a 64-bit integer"):
        extraction.final_arguments(
            [ToolCall("c", "record_order", '{"customer": "A", "quantity": 99999999999999999999}')]
        )
    with pytest.raises(UsageError, match="no such tool"):
        extraction_for(load_tools(tools_py), "nothing")


# ----------------------------------------------------------------------------- whole runs


def write_job(folder: Path, rows: list[dict[str, str]], *, seconds: float = 0.6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, row in enumerate(rows):
        if "audio" not in row:
            row["audio"] = f"clip{index}.wav"
            write_audio(folder / row["audio"], seconds=seconds, rate=16_000, channels=1, seed=index)
    names = list(dict.fromkeys(key for row in rows for key in row))
    target = folder / "manifest.csv"
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, names)
        writer.writeheader()
        writer.writerows(rows)
    return target


def cli_run(*args: str) -> Any:
    return CliRunner().invoke(cli.main, ["run", *args], catch_exceptions=False)


def test_run_simulate_with_tools_every_row_has_its_calls_and_outputs(tmp_path: Path, tools_py: Path) -> None:
    manifest = write_job(
        tmp_path / "job",
        [
            {"id": "order", "instructions": "Log this call with record_order.", "tools": ""},
            {"id": "boom", "instructions": "Try explode on it.", "tools": "explode"},
            {"id": "slow", "instructions": "Ask sleepy.", "tools": "sleepy"},
            {"id": "async-slow", "instructions": "Ask dawdle.", "tools": "dawdle"},
            {"id": "echo", "instructions": "Call echo please.", "tools": "echo;record_order"},
        ],
    )
    out = tmp_path / "out"
    events = tmp_path / "events.jsonl"
    started = time.monotonic()
    result = cli_run(
        str(manifest), "--simulate", "--model", OMNI35.name, "--tools", str(tools_py), "--tool-timeout", "0.3",
        "--out", str(out), "--log-events", str(events), "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 20
    rows = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert all(r["status"] == "ok" for r in rows.values())
    for row in rows.values():
        assert len(row["tool_calls"]) == 1 and len(row["response_ids"]) == 2
        [entry] = row["tool_calls"]
        assert entry["output"] and entry["call_id"] and entry["turn"] == 1 and entry["seconds"] is not None
        assert f"Tool {entry['name']} returned" in row["output_transcript"]  # the output went back
    order = rows["order"]["tool_calls"][0]
    assert order["name"] == "record_order" and order["error"] is None
    assert json.loads(order["output"])["order"].endswith(f"-{json.loads(order['arguments'])['quantity']}")
    assert rows["boom"]["tool_calls"][0]["error"].startswith("ValueError: boom")
    assert rows["slow"]["tool_calls"][0]["error"] == "tool sleepy did not return within 0.3 s"
    assert rows["async-slow"]["tool_calls"][0]["error"] == "tool dawdle did not return within 0.3 s"
    assert json.loads(rows["slow"]["tool_calls"][0]["output"])["error"]["type"] == "timeout"
    assert rows["echo"]["tool_calls"][0]["name"] == "echo"
    # the row's tools column narrowed what its session declared
    declared = {}
    for line in events.read_text().splitlines():
        entry = json.loads(line)
        if entry["event"]["type"] == "session.update":
            declared[entry["item"]] = [t["function"]["name"] for t in entry["event"]["session"]["tools"]]
    assert declared == {
        "order": ["record_order", "explode", "sleepy", "dawdle", "echo"],
        "boom": ["explode"],
        "slow": ["sleepy"],
        "async-slow": ["dawdle"],
        "echo": ["echo", "record_order"],
    }


def test_extract_gives_typed_columns_whose_parquet_schema_follows_the_json_schema(
    tmp_path: Path, tools_py: Path
) -> None:
    manifest = write_job(
        tmp_path / "job",
        [{"id": f"r{n}", "instructions": f"Use record_order for caller {n}.", "lang": "en"} for n in range(3)],
    )
    out = tmp_path / "out"
    result = cli_run(
        str(manifest), "--simulate", "--model", OMNI35.name, "--tools", str(tools_py),
        "--extract", "record_order", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    schema = pq.read_schema(out / "results.parquet")  # the file's own schema, read back by pyarrow
    extract = {name: schema.field(name).type for name in schema.names if name.startswith("extract_")}
    assert extract == {
        "extract_customer": pa.string(),
        "extract_quantity": pa.int64(),
        "extract_express": pa.bool_(),
        "extract_weight": pa.float64(),
        "extract_tags": pa.list_(pa.string()),
        "extract_address": pa.struct([("street", pa.string()), ("zip", pa.int64())]),
        "extract_mood": pa.string(),
        "extract_counts": pa.map_(pa.string(), pa.int64()),
    }
    assert schema.names[-1] == "lang"  # passthrough columns after the extract columns
    table = pq.read_table(out / "results.parquet")
    for row in table.to_pylist():
        arguments = json.loads(row["tool_calls"][-1]["arguments"])
        assert row["status"] == "ok" and row["extracted_tool"] == "record_order"
        assert json.loads(row["extracted_arguments"]) == arguments
        assert (row["extract_customer"], row["extract_quantity"], row["extract_express"]) == (
            arguments["customer"],
            arguments["quantity"],
            arguments["express"],
        )


def test_extract_fails_the_rows_whose_arguments_do_not_validate_and_keeps_the_others(tmp_path: Path) -> None:
    # the simulator's arguments follow the schema, deterministically (sim.tools.arguments_for); one row
    # switches its connection's calls to arguments that break it (sim_fault=bad_argument_type)
    declared = tmp_path / "tools.json"
    parameters = {
        "type": "object",
        "properties": {"note": {"type": "string", "maxLength": 30}, "size": {"type": "integer", "minimum": 1}},
        "required": ["note", "size"],
    }
    declared.write_text(json.dumps([{"type": "function", "function": {"name": "note", "parameters": parameters}}]))
    prompts = {
        "short": "Use note.",
        "broken": "Use note to write down what the caller says. sim_fault=bad_argument_type",
        "long": "Call note and write down everything this caller says, word by word.",
    }
    manifest = write_job(tmp_path / "job", [{"id": key, "instructions": text} for key, text in prompts.items()])
    out = tmp_path / "out"
    result = cli_run(
        str(manifest), "--simulate", "--model", OMNI35.name, "--tools", str(declared), "--extract", "note",
        "--tool-output", '{"noted": true}', "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    rows = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    for key in ("short", "long"):  # the columns hold exactly what the simulator's rules predict
        predicted = arguments_for(parameters, call_prompt(prompts[key], []))
        assert rows[key]["status"] == "ok"
        assert (rows[key]["extract_note"], rows[key]["extract_size"]) == (predicted["note"], predicted["size"])
        assert rows[key]["tool_calls"][0]["output"] == '{"noted": true}'
    broken = rows["broken"]
    assert broken["status"] == "failed" and broken["error_type"] == "extract" and broken["error_code"] == "validation"
    wrong = json.loads(broken["tool_calls"][0]["arguments"])["note"]
    assert broken["error_message"] == (
        f"--extract note: the final arguments do not match the schema: {wrong!r} is not of type 'string' (at $.note)"
    )
    told = json.loads(broken["tool_calls"][0]["output"])  # the model was told why, too
    assert told["error"]["type"] == "invalid_arguments" and "is not of type 'string'" in told["error"]["message"]
    assert broken["extract_note"] is None and broken["usage_total_tokens"]  # paid for, recorded


def test_max_tool_rounds_and_several_calls_against_the_simulator(tmp_path: Path, tools_py: Path) -> None:
    manifest = write_job(
        tmp_path / "job",
        [
            {"id": "two-rounds", "instructions": "Use echo. sim_tool_rounds=2"},
            {"id": "three-rounds", "instructions": "Use echo. sim_tool_rounds=3"},
            {"id": "parallel", "instructions": "Use echo and record_order."},
        ],
    )
    out = tmp_path / "out"
    result = cli_run(
        str(manifest), "--simulate", "--model", OMNI35.name, "--tools", str(tools_py), "--max-tool-rounds", "2",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    rows = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    two = rows["two-rounds"]
    assert two["status"] == "ok" and len(two["response_ids"]) == 3  # call, call after its output, answer
    assert [c["name"] for c in two["tool_calls"]] == ["echo", "echo"] and all(c["output"] for c in two["tool_calls"])
    three = rows["three-rounds"]
    assert three["status"] == "failed" and three["error_type"] == "tool_rounds"
    assert three["error_message"] == (
        "the model asked for tool round 3 past the limit of 2 (--max-tool-rounds); its calls were not run"
    )
    assert [(c["output"] is not None, c["error"]) for c in three["tool_calls"]] == [
        (True, None),
        (True, None),
        (False, "not run: past --max-tool-rounds"),
    ]
    assert three["usage_total_tokens"] and len(three["response_ids"]) == 3  # billed and kept
    parallel = rows["parallel"]
    assert parallel["status"] == "ok" and len(parallel["response_ids"]) == 2  # both calls in one response
    assert sorted(c["name"] for c in parallel["tool_calls"]) == ["echo", "record_order"]
    assert all(c["error"] is None and c["output"] for c in parallel["tool_calls"])


def test_tools_on_a_model_without_them_are_refused_before_any_session(tmp_path: Path, tools_py: Path) -> None:
    manifest = write_job(tmp_path / "job", [{"id": "a"}])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli.main, ["run", str(manifest), "--simulate", "--tools", str(tools_py), "--out", str(out)]
    )
    assert result.exit_code == 2
    assert (
        "qwen3-omni-flash-realtime has no function calling; models with tools:"
        " qwen3.5-omni-flash-realtime, qwen3.5-omni-plus-realtime"
    ) in result.output
    assert not out.exists()  # nothing started
    estimate = CliRunner().invoke(cli.main, ["estimate", str(manifest), "--tools", str(tools_py), "--out", str(out)])
    assert estimate.exit_code == 2 and "has no function calling" in estimate.output


def test_a_row_whose_model_has_no_tools_fails_without_a_session(tmp_path: Path, tools_py: Path) -> None:
    manifest = write_job(
        tmp_path / "job",
        [
            {"id": "tools-ok", "instructions": "Use echo.", "model": ""},
            {"id": "old-model", "instructions": "Use echo.", "model": FLASH.name},
            {"id": "no-tools", "instructions": "Hello.", "model": FLASH.name, "tools": "none"},
            {"id": "unknown", "instructions": "Use echo.", "model": "", "tools": "echo;steal"},
        ],
    )

    async def main() -> tuple[runner.RunOutcome, int]:
        async with Simulator(SimulatorConfig()) as sim:
            config = RunConfig(
                manifest, tmp_path / "out", model=OMNI35.name, base_url=sim.url, api_key=KEY, tools=tools_py,
                rpm=10**6, tpm=10**9, pad_silence_seconds=0.0,
            )  # fmt: skip
            outcome = await runner.run(config, retry=FAST)
            return outcome, sim.stats.sessions

    outcome, sessions = asyncio.run(main())
    assert outcome.exit_code == 1
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()}
    old = rows["old-model"]
    assert old["status"] == "failed" and old["attempts"] == 0 and old["error_type"] == "item"
    assert (
        "qwen3-omni-flash-realtime has no function calling; models with tools: qwen3.5-omni-flash"
        in (old["error_message"])
    )
    assert rows["unknown"]["status"] == "failed" and "unknown tools 'steal'" not in rows["unknown"]["error_message"]
    assert "unknown tool 'steal'" in rows["unknown"]["error_message"]
    assert rows["tools-ok"]["status"] == rows["no-tools"]["status"] == "ok"
    assert rows["no-tools"]["tool_calls"] == []
    assert sessions == 2  # the refused rows never opened one


def test_the_budget_counts_the_tool_rounds_that_happen(tmp_path: Path, tools_py: Path) -> None:
    """A session with three real tool rounds is charged its four responses, whatever the estimate assumed."""
    manifest = write_job(tmp_path / "job", [{"id": "a", "instructions": "Use echo. sim_tool_rounds=3"}])
    prices_file = tmp_path / "prices.toml"  # qwen3.5-omni has no published price: a test's own
    prices_file.write_text(
        'source = "test"\nas_of = "2026-12"\ncurrency = "CNY"\n'
        '[models."qwen3.5-omni-flash-realtime".cn-beijing]\n'
        "input_text = 10\ninput_audio = 80\ninput_image = 10\n"
        "output_text_textonly = 60\noutput_text_multimodal = 60\noutput_text_audio = 300\n"
    )
    prices = cost.load_prices(prices_file)

    async def main() -> tuple[Any, Limiter, cost.TokenEstimate, list[Any]]:
        async with Simulator(SimulatorConfig()) as sim:
            config = RunConfig(
                manifest, tmp_path / "out", model=OMNI35.name, base_url=sim.url, api_key=KEY, tools=tools_py,
                assume_tool_rounds=0, pad_silence_seconds=0.0, prices=prices_file,
            )  # fmt: skip
            toolbox, _ = runner.load_run_tools(config)
            ctx = runner.ItemContext(
                config,
                runner.client_settings(config, sim.url, KEY),
                prices,
                cost.OutputAssumption(),
                tmp_path / "out",
                FAST,
                toolbox=toolbox,
            )
            item = next(iter(runner.manifest.iter_items(manifest)))
            ready = await runner.prepare(item, ctx)
            assert isinstance(ready, runner.ReadyItem)
            limiter = Limiter(concurrency=1, rpm=None, tpm=None, max_cost=100.0)
            estimate, _ = runner.estimate_ready(ready, ctx)
            row = await runner.session(ready, ctx, limiter)
            return row, limiter, estimate, sim.stats.billing[row.session_id or ""]

    row, limiter, estimate, records = asyncio.run(main())
    assert len(row.response_ids) == 4 and [r.response_id for r in records] == row.response_ids
    assert [r.function_calls for r in records] == [("echo",)] * 3 + [()]  # the rounds the simulator billed
    usage = [r.usage for r in records]
    assert row.usage_total_tokens == sum(u.total_tokens for u in usage)  # every response
    price = prices.lookup(OMNI35.name, "cn-beijing")
    assert price is not None and row.cost is not None
    everything = usage[0] + usage[1] + usage[2] + usage[3]
    charged, _ = cost.cost_of_usage(price, everything, estimate=estimate, modalities=("text", "audio"))
    assert limiter.spent == pytest.approx(row.cost) == pytest.approx(charged)  # what happened, not assumed
    assert row.est_cost == pytest.approx(cost.cost_of_estimate(price, estimate, modalities=("text", "audio")))
    assert estimate.output_text == 24  # the estimate assumed no round (--assume-tool-rounds 0): one answer


def test_estimate_counts_declarations_and_assumed_tool_rounds(tmp_path: Path, tools_py: Path) -> None:
    manifest = write_job(tmp_path / "job", [{"id": "a", "instructions": "Use echo."}])

    def total(*extra: str) -> int:
        out = tmp_path / f"est{len(extra)}"
        result = CliRunner().invoke(
            cli.main, ["estimate", str(manifest), "--model", OMNI35.name, "--out", str(out), *extra]
        )
        assert result.exit_code == 0, result.output
        if extra:
            assert "Tool rounds assumed: " in result.output
        return int(pq.read_table(out / "estimate.parquet").column("total_tokens")[0].as_py())

    plain = total()
    one = total("--tools", str(tools_py))
    two = total("--tools", str(tools_py), "--assume-tool-rounds", "2")
    declarations = load_tools(tools_py).assumption(["record_order", "explode", "sleepy", "dawdle", "echo"], 1)
    assert declarations.declaration_tokens > 100
    assert plain < one < two
    assert two - one > one - plain - declarations.declaration_tokens  # each round re-bills the context


def test_tools_py_of_the_jobs_folder_loads(tmp_path: Path) -> None:
    box = load_tools(Path(__file__).parent.parent / "jobs" / "tools" / "tools.py")
    assert box.names == ["record_order", "rate_call"]
    assert box.tools["record_order"].description == "Record the order a caller places."
    assert box.tools["rate_call"].parameters["properties"]["mood"]["enum"] == ["calm", "upset", "neutral"]


def test_session_estimate_re_bills_the_context_and_counts_each_round() -> None:
    from batchqwen.tokens import count_text_tokens

    tools = cost.ToolAssumption(rounds_per_turn=1, declaration_tokens=100, call_tokens=40, output_tokens=20)
    turns = [cost.TurnInput(2.0), cost.TurnInput(1.0, texts=["why?"])]
    got = cost.estimate_session_tokens(
        OMNI35,
        turns=turns,
        session_texts=["Be brief."],
        modalities=("text", "audio"),
        output=cost.OutputAssumption(),
        tools=tools,
    )
    t0, p = count_text_tokens("Be brief."), count_text_tokens("why?")
    # turn 1: a call (context), then the answer (context + the call and its output: 40 + 20);
    # turn 2 re-reads turn 1's call, output and answer (60 + 24) besides its own input
    assert got.input_text == (t0 + 100) + (t0 + 160) + (t0 + 184 + p) + (t0 + 244 + p)
    assert got.input_audio == 25 + 25 + (25 + 13) + (25 + 13)
    assert got.output_text == 40 + 24 + 40 + 24 and got.output_audio == 100 + 100
    plain = cost.estimate_session_tokens(
        OMNI35, turns=turns[:1], session_texts=["Be brief."], modalities=("text",), output=cost.OutputAssumption()
    )
    assert plain == cost.estimate_tokens(
        OMNI35,
        audio_seconds=2.0,
        image_sizes=(),
        texts=["Be brief."],
        modalities=("text",),
        output=cost.OutputAssumption(),
    )


def test_estimate_lists_rows_naming_tools_without_tools_or_with_bad_turn_media(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    write_audio(folder / "a.wav", seconds=0.5, rate=16_000, channels=1)
    (folder / "bad.wav").write_text("not audio")
    rows = [
        {"id": "names-tools", "audio": "a.wav", "tools": "lookup"},
        {"id": "bad-turn", "turns": [{"audio": "a.wav"}, {"audio": "bad.wav"}]},
        {"id": "fine", "turns": [{"audio": "a.wav"}, {"prompt": "and?"}]},
    ]
    (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(
        cli.main, ["estimate", str(folder / "m.jsonl"), "--model", OMNI35.name, "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    problems = {r["id"]: r["problem"] for r in pq.read_table(tmp_path / "o" / "estimate.parquet").to_pylist()}
    assert "the row names tools (lookup) but the run has no --tools" in problems["names-tools"]
    assert problems["bad-turn"].startswith("media: turn 2: ")
    assert problems["fine"] is None


def test_the_tools_demo_job_runs_with_every_row_calling_and_answered(tmp_path: Path) -> None:
    jobs = Path(__file__).parent.parent / "jobs" / "tools"
    out = tmp_path / "out"
    result = cli_run(
        str(jobs / "manifest.csv"), "--simulate", "--model", OMNI35.name, "--tools", str(jobs / "tools.py"),
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with (jobs / "manifest.csv").open() as handle:
        offered = {r["id"]: (r["tools"] or "record_order;rate_call").split(";") for r in csv.DictReader(handle)}
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == len(offered) == 4
    for row in rows:
        assert row["status"] == "ok" and row["tool_calls"], row["id"]
        for entry in row["tool_calls"]:
            assert entry["output"] and json.loads(entry["output"])  # every call answered, with JSON
            assert entry["name"] in offered[row["id"]]
