"""Tools (function calling) from the command line: ``--tools FILE``.

Two kinds of file:

* a **Python module** (``tools.py``): every public function defined in it is a tool. Its name is the
  function's name, its description the docstring's text before an ``Args:`` section, and its parameters a
  JSON Schema made from the type hints and defaults (:func:`schema_for_hint`; parameter descriptions from
  the ``Args:`` lines or ``Annotated[T, "description"]``). Functions may be sync or async. A sync tool
  runs in a daemon thread of its own, an async one on a background event loop in a daemon thread: neither
  can stall the sessions, and a tool that never returns is left behind after ``--tool-timeout``.
* a **JSON file** of declarations in the service's form, ``[{"type": "function", "function": {"name",
  "description", "parameters"}}]`` (or ``{"tools": [...]}``; bare ``{"name", ...}`` objects are accepted
  too), for extraction where nothing needs to run: every call is answered with ``--tool-output``
  (default ``{"ok": true}``).

Every call's arguments are checked against the tool's schema (``jsonschema``) before anything runs. What
the model gets back is JSON text: the function's return value JSON-encoded, or an error object
``{"error": {"type": ..., "message": ...}}`` when the arguments do not fit, the tool raised, timed out,
returned something JSON cannot hold, or was not offered to the item. The row records the error
(``tool_calls[].error``); a tool never fails the item nor stops the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import importlib.util
import inspect
import json
import re
import sys
import threading
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchqwen.cost import ASSUMED_CALL_TOKENS, ASSUMED_TOOL_OUTPUT_TOKENS, ToolAssumption
from batchqwen.errors import ItemError, UsageError
from batchqwen.models import ModelInfo
from batchqwen.realtime.protocol import FunctionCall, ToolOutput
from batchqwen.tokens import count_text_tokens

DEFAULT_TOOL_OUTPUT = '{"ok": true}'
DEFAULT_TOOL_TIMEOUT = 30.0
DEFAULT_MAX_TOOL_ROUNDS = 4
#: a tool's name as the service takes it (the Chat Completions rule)
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Tool:
    """One tool: its declaration, and the function that answers it (None: answered with the canned output)."""

    name: str
    description: str
    parameters: dict[str, Any]  # a JSON Schema of type object
    function: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

    def declaration(self) -> dict[str, Any]:
        """The tool as ``session.tools`` lists it (Chat Completions form)."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


def error_output(kind: str, message: str) -> str:
    """The JSON text a model gets back when its call could not be answered."""
    return json.dumps({"error": {"type": kind, "message": message}}, ensure_ascii=False)


def validator_of(schema: Mapping[str, Any]) -> Any:
    """A ``jsonschema`` validator for ``schema`` (the draft its ``$schema`` names, 2020-12 by default),
    formats checked."""
    import jsonschema  # here, not at the top: only runs with tools pay for importing it

    validator_class = jsonschema.validators.validator_for(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


def validation_message(schema: Mapping[str, Any], value: Any, validator: Any = None) -> str | None:
    """Why ``value`` does not validate against ``schema`` (the first error, with its JSON path), or None."""
    import jsonschema

    validator = validator if validator is not None else validator_of(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    return f"{error.message} (at {error.json_path})" if error.path else error.message


@dataclass(frozen=True)
class ToolCatalog:
    """What planning and the estimate need of the run's tools: names and sizes, no functions (so it goes to
    the dry run's worker processes as it is)."""

    names: tuple[str, ...]
    declaration_tokens: tuple[int, ...]  # each tool's declaration (its JSON text) in text tokens
    runs: tuple[bool, ...]  # a function answers it (else the canned output)
    canned_output_tokens: int
    source: str = "--tools"

    def select(self, names: Iterable[str] | None) -> list[str]:
        """The tools an item offers: ``names`` (the row's ``tools`` column) checked, else all of them."""
        if names is None:
            return list(self.names)
        chosen = list(dict.fromkeys(names))
        unknown = [name for name in chosen if name not in self.names]
        if unknown:
            raise UsageError(
                f"unknown tool{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))};"
                f" {self.source} has {', '.join(self.names)}"
            )
        return chosen

    def assumption(self, names: Iterable[str], rounds_per_turn: int) -> ToolAssumption:
        """What the estimate assumes for an item offering ``names``: their declarations as text tokens with
        every response; a tool output the size of ``--tool-output`` where no tool runs, else a guess."""
        chosen = {self.names.index(name) for name in self.select(names)}
        runs = any(self.runs[i] for i in chosen)
        return ToolAssumption(
            rounds_per_turn=rounds_per_turn,
            declaration_tokens=sum(self.declaration_tokens[i] for i in chosen),
            call_tokens=ASSUMED_CALL_TOKENS,
            output_tokens=ASSUMED_TOOL_OUTPUT_TOKENS if runs else self.canned_output_tokens,
        )


class Toolbox:
    """The tools of a run, and how one call is answered (:meth:`answer`). Shared by every session."""

    def __init__(
        self,
        tools: Sequence[Tool],
        *,
        source: Path | None = None,
        canned_output: str = DEFAULT_TOOL_OUTPUT,
        timeout: float = DEFAULT_TOOL_TIMEOUT,
    ) -> None:
        if timeout <= 0:
            raise UsageError(f"--tool-timeout must be positive, not {timeout:g}")
        try:
            json.loads(canned_output)
        except ValueError as exc:
            raise UsageError(f"--tool-output must be JSON text: {exc}") from None
        self.tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.name in self.tools:
                raise UsageError(f"{source or 'tools'}: tool {tool.name!r} is declared twice")
            self.tools[tool.name] = tool
        if not self.tools:
            raise UsageError(f"{source or 'tools'}: no tools found")
        self.source = source
        self.canned_output = canned_output
        self.timeout = timeout
        self._validators = {name: validator_of(tool.parameters) for name, tool in self.tools.items()}
        self._loop: asyncio.AbstractEventLoop | None = None  # async tools run here, in a daemon thread
        self._loop_lock = threading.Lock()

        self.catalog = ToolCatalog(
            names=tuple(self.tools),
            declaration_tokens=tuple(
                count_text_tokens(json.dumps(tool.declaration(), ensure_ascii=False)) for tool in self.tools.values()
            ),
            runs=tuple(tool.function is not None for tool in self.tools.values()),
            canned_output_tokens=count_text_tokens(canned_output),
            source=str(source or "--tools"),
        )

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def select(self, names: Iterable[str] | None) -> list[str]:
        """The tools an item offers: ``names`` (the row's ``tools`` column) checked, else all of them."""
        return self.catalog.select(names)

    def declarations(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        return [self.tools[name].declaration() for name in self.select(names)]

    def assumption(self, names: Iterable[str], rounds_per_turn: int) -> ToolAssumption:
        return self.catalog.assumption(names, rounds_per_turn)

    async def answer(self, call: FunctionCall, offered: Sequence[str]) -> ToolOutput:
        """Answer one call: validate, run (bounded by the timeout), encode. Never raises for the tool's sake."""
        started = time.monotonic()

        def failed(kind: str, message: str) -> ToolOutput:
            return ToolOutput(error_output(kind, message), error=message, seconds=time.monotonic() - started)

        tool = self.tools.get(call.name)
        if tool is None or call.name not in offered:
            return failed("unknown_tool", f"no tool {call.name!r} is offered here; tools: {', '.join(offered)}")
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError as exc:
            return failed("invalid_arguments", f"the arguments are not JSON: {exc}")
        problem = validation_message(tool.parameters, arguments, self._validators[tool.name])
        if problem is not None:
            return failed("invalid_arguments", f"arguments do not match the schema of {tool.name}: {problem}")
        if tool.function is None:
            return ToolOutput(self.canned_output, seconds=time.monotonic() - started)
        try:
            async with asyncio.timeout(self.timeout):
                value = await self._run(tool.function, arguments)
        except TimeoutError:
            return failed("timeout", f"tool {tool.name} did not return within {self.timeout:g} s")
        except Exception as exc:  # the tool's own failure goes back to the model, and onto the row
            return failed(type(exc).__name__, f"{type(exc).__name__}: {exc}")
        try:
            output = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return failed("bad_output", f"tool {tool.name} returned what JSON cannot hold: {exc}")
        return ToolOutput(output, seconds=time.monotonic() - started)

    async def _run(self, function: Callable[..., Any], arguments: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        if inspect.iscoroutinefunction(function):
            future = asyncio.run_coroutine_threadsafe(function(**arguments), self._background_loop())
            try:
                return await asyncio.wrap_future(future)
            finally:
                future.cancel()  # timed out or cancelled: the coroutine is cancelled in its own loop
        result: asyncio.Future[Any] = loop.create_future()

        def deliver(outcome: Callable[[], None]) -> None:
            if not result.done():
                outcome()

        def hand_back(outcome: Callable[[], None]) -> None:
            with contextlib.suppress(RuntimeError):  # the run ended while an abandoned tool still ran
                loop.call_soon_threadsafe(deliver, outcome)

        def work() -> None:
            try:
                value = function(**arguments)
            except BaseException as exc:  # SystemExit in a tool is the tool's failure, not the process's
                failure = exc if isinstance(exc, Exception) else RuntimeError(f"{type(exc).__name__}: {exc}")
                hand_back(lambda: result.set_exception(failure))
            else:
                hand_back(lambda: result.set_result(value))

        # a daemon thread per call: a tool that never returns cannot hold up the process's exit
        threading.Thread(target=work, name="batchqwen-tool", daemon=True).start()
        return await result

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=_serve, args=(loop,), name="batchqwen-async-tools", daemon=True).start()
                self._loop = loop
            return self._loop

    def close(self) -> None:
        """Stop the background loop of async tools (tools still running there are abandoned)."""
        with self._loop_lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop = None


NO_TOOLS = ("none",)  # a row's ``tools`` cell ``none``: the row offers no tools


def tool_models() -> list[str]:
    """The registered models that take tools (``ModelInfo.tools``)."""
    from batchqwen.models import REGISTRY

    return [name for name, info in REGISTRY.items() if info.tools]


def check_tool_model(model: ModelInfo) -> None:
    """UsageError unless ``model`` takes tools, naming the models that do."""
    if not model.tools:
        raise UsageError(f"{model.name} has no function calling; models with tools: {', '.join(tool_models())}")


def offered_tools(
    model: ModelInfo,
    row_tools: tuple[str, ...] | None,
    toolbox: Toolbox | ToolCatalog | None,
    extract: str | None = None,
) -> tuple[str, ...]:
    """The tools one item offers: the row's ``tools`` column narrows the run's; ItemError for a row that
    names tools the run has not got, a model without tools, or a row that leaves out the ``--extract`` tool."""
    if toolbox is None:
        if row_tools and row_tools != NO_TOOLS:
            raise ItemError(f"the row names tools ({', '.join(row_tools)}) but the run has no --tools")
        return ()
    try:
        names = [] if row_tools == NO_TOOLS else toolbox.select(row_tools)
    except UsageError as exc:
        raise ItemError(f"column 'tools': {exc}") from None
    if names:
        try:
            check_tool_model(model)
        except UsageError as exc:
            raise ItemError(str(exc)) from None
    if extract is not None and extract not in names:
        offer = ", ".join(names) or "none"
        raise ItemError(f"the row does not offer {extract}, the --extract tool (its tools: {offer})")
    return tuple(names)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    """The async tools' event loop, in its own thread, until :meth:`Toolbox.close`; then closed."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.close()


# ----------------------------------------------------------------------------- loading


def load_tools(
    path: Path, *, canned_output: str = DEFAULT_TOOL_OUTPUT, timeout: float = DEFAULT_TOOL_TIMEOUT
) -> Toolbox:
    """The tools of a ``.py`` module or a ``.json`` declarations file; UsageError for anything wrong."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--tools {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".py":
        tools = tools_of_module(_import(path), where=str(path))
    elif suffix == ".json":
        tools = _declared_tools(path)
    else:
        raise UsageError(f"--tools {path}: give a Python module (.py) or a JSON file of declarations (.json)")
    return Toolbox(tools, source=path, canned_output=canned_output, timeout=timeout)


def _import(path: Path) -> types.ModuleType:
    name = f"batchqwen_user_tools_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--tools {path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and typing look their module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise UsageError(f"--tools {path}: importing it failed: {type(exc).__name__}: {exc}") from None
    return module


def tools_of_module(module: types.ModuleType, *, where: str = "") -> list[Tool]:
    """A tool for every public function defined in ``module`` (imported ones left out), in source order."""
    functions = [
        value
        for name, value in vars(module).items()
        if not name.startswith("_") and inspect.isfunction(value) and value.__module__ == module.__name__
    ]
    functions.sort(key=lambda function: function.__code__.co_firstlineno)
    return [tool_of_function(function, where=where) for function in functions]


def tool_of_function(function: Callable[..., Any], *, where: str = "") -> Tool:
    """The tool of one function: name, docstring text, parameters from its type hints and defaults."""
    name = function.__name__
    label = f"{where}: {name}" if where else name
    if not _NAME.match(name):
        raise UsageError(f"{label}: a tool name takes letters, digits, _ and - only (at most 64)")
    description, documented = _docstring(inspect.getdoc(function) or "")
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as exc:
        raise UsageError(f"{label}: its type hints cannot be read: {exc}") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
            raise UsageError(f"{label}: parameter {parameter.name!r} must be a plain named parameter")
        if parameter.name not in hints:
            raise UsageError(f"{label}: parameter {parameter.name!r} needs a type hint (it makes the JSON Schema)")
        try:
            schema = schema_for_hint(hints[parameter.name])
        except UsageError as exc:
            raise UsageError(f"{label}: parameter {parameter.name!r}: {exc}") from None
        if parameter.name in documented and "description" not in schema:
            schema["description"] = documented[parameter.name]
        if parameter.default is parameter.empty:
            required.append(parameter.name)
        else:
            default = _json_default(parameter.default)
            if default is not _NO_DEFAULT:
                schema["default"] = default
        properties[parameter.name] = schema
    parameters: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        parameters["required"] = required
    return Tool(name, description, parameters, function)


_NO_DEFAULT = object()


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return _NO_DEFAULT  # not JSON: the schema says nothing about the default
    return value


_ARGS_HEADER = re.compile(r"^(args|arguments|parameters|params)\s*:?\s*$", re.IGNORECASE)
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the description before an ``Args:`` section, parameter name -> its text in that section)."""
    lines = doc.splitlines()
    start = next((n for n, line in enumerate(lines) if _ARGS_HEADER.match(line.strip())), None)
    if start is None:
        return doc.strip(), {}
    described: dict[str, str] = {}
    current, base = "", None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            break  # the next section (Returns:, Raises:)
        match = _ARG_LINE.match(line)
        if match and (base is None or indent <= base):
            base, current = indent, match.group(1)
            described[current] = match.group(3).strip()
        elif current:  # a continuation line, indented further
            described[current] = f"{described[current]} {line.strip()}".strip()
    return "\n".join(lines[:start]).strip(), described


def schema_for_hint(hint: Any) -> dict[str, Any]:
    """The JSON Schema of a type hint: str, int, float, bool, None, list/tuple/set, dict[str, T], Literal,
    Enum, ``T | None`` and unions, TypedDict, dataclasses, ``Annotated[T, "description"]``, Any."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        schema = schema_for_hint(args[0])
        texts = [a for a in args[1:] if isinstance(a, str)]
        if texts:
            schema["description"] = " ".join(texts)
        return schema
    if hint is Any:
        return {}
    if hint is type(None) or hint is None:
        return {"type": "null"}
    simple = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if hint in simple:
        return {"type": simple[hint]}
    if origin is typing.Literal:
        values = list(args)
        kinds = {_json_kind(value) for value in values}
        schema = {"enum": values}
        if len(kinds) == 1 and None not in kinds:
            schema = {"type": kinds.pop(), "enum": values}
        return schema
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [member.value for member in hint]
        kinds = {_json_kind(value) for value in values}
        if None in kinds:
            raise UsageError(f"enum {hint.__name__} has values JSON cannot hold")
        return {"type": kinds.pop(), "enum": values} if len(kinds) == 1 else {"enum": values}
    if origin in (types.UnionType, typing.Union):
        options = [schema_for_hint(arg) for arg in args]
        non_null = [o for o in options if o != {"type": "null"}]
        if len(non_null) == 1 and len(options) == 2:
            only = non_null[0]
            if isinstance(only.get("type"), str) and "enum" not in only:
                return {**only, "type": [only["type"], "null"]}
        return {"anyOf": options}
    if origin in (list, set, frozenset, Sequence, typing.Sequence) or hint in (list, set):
        return {"type": "array", "items": schema_for_hint(args[0]) if args else {}}
    if origin is tuple or hint is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": schema_for_hint(args[0])}
        if args:
            items = [schema_for_hint(arg) for arg in args]
            return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
        return {"type": "array"}
    if origin in (dict, Mapping, typing.Mapping) or hint is dict:
        if args and args[0] is not str:
            raise UsageError("a dict's keys must be str (JSON object keys are text)")
        return {"type": "object", "additionalProperties": schema_for_hint(args[1]) if args else {}}
    if typing.is_typeddict(hint):
        hints = typing.get_type_hints(hint, include_extras=True)
        required = [name for name in hints if name in hint.__required_keys__]
        return _object({name: schema_for_hint(value) for name, value in hints.items()}, required)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = typing.get_type_hints(hint, include_extras=True)
        fields = dataclasses.fields(hint)
        required = [
            f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        return _object({f.name: schema_for_hint(hints[f.name]) for f in fields}, required)
    raise UsageError(f"type {getattr(hint, '__name__', hint)!r} has no JSON Schema here (use str, int, float, ...)")


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def _json_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _declared_tools(path: Path) -> list[Tool]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"--tools {path}: not readable JSON: {exc}") from None
    if isinstance(data, dict) and "tools" in data:
        data = data["tools"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UsageError(f"--tools {path}: expected a list of tool declarations")
    tools = []
    for number, entry in enumerate(data, 1):
        where = f"--tools {path}: declaration {number}"
        if not isinstance(entry, dict):
            raise UsageError(f"{where} is not an object")
        function = entry.get("function") if entry.get("type") == "function" else entry
        if not isinstance(function, dict):
            raise UsageError(f"{where}: 'function' must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise UsageError(f"{where}: 'name' must be letters, digits, _ and - (at most 64), not {name!r}")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        description = function.get("description", "")
        if not isinstance(description, str):
            raise UsageError(f"{where} ({name}): 'description' must be text")
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise UsageError(f"{where} ({name}): 'parameters' must be a JSON Schema of type object")
        import jsonschema

        try:
            jsonschema.validators.validator_for(parameters).check_schema(parameters)
        except jsonschema.exceptions.SchemaError as exc:
            raise UsageError(f"{where} ({name}): 'parameters' is not a valid JSON Schema: {exc.message}") from None
        tools.append(Tool(name, description, parameters))
    return tools
