"""Function calls as the simulator makes them: which declared tools a response calls, with arguments that
follow each tool's JSON Schema, seeded so that a test can predict them.

The arguments are a pure function of the schema and a seed text::

    from batchqwen.sim.tools import arguments_for, call_prompt, round_seed
    prompt = call_prompt(instructions, [typed_text])          # what the turn said, as the simulator reads it
    arguments_for(schema, round_seed(prompt, 1))               # == json.loads(arguments) of the first call

Values (every declared property is present, in declaration order; required ones that are not declared are
added as strings):

- ``const`` as given; a ``default`` that has a declared type (null too, for an optional property); else
  one of ``enum``; else one of ``examples`` of the declared type; else by type;
- ``integer`` / ``number``: within ``minimum`` / ``maximum`` (exclusive bounds too; 0..100 when open),
  a multiple of ``multipleOf``; numbers with at most two decimals;
- ``boolean``: true or false; ``null``: null; a list of types takes the first that is not ``null``;
- ``string``: a valid ``date``, ``date-time``, ``time``, ``email``, ``uri``, ``uuid``, ``hostname`` or
  ``ipv4`` for those formats; else the seed text on one line, clipped to 40 characters (the property's
  name when the seed is empty), cut to ``maxLength`` and padded with ``.`` to ``minLength``.
  ``pattern`` is not honoured (a value may not match it);
- ``array``: 1 to 3 items (within ``minItems`` / ``maxItems``; ``uniqueItems`` drops repeats),
  ``prefixItems`` / tuple ``items`` item by item;
- ``object``: nested the same way; ``$ref`` to ``#/...`` (``$defs``, ``definitions``), ``allOf`` merged,
  ``anyOf`` / ``oneOf`` take their first branch that is not ``null``. Nesting deeper than 8 levels gives
  ``{}`` / ``[]``.

Every choice is drawn from SHA-256 of the seed text and the value's path (``address.street``,
``tags[1]``), so it is the same in every process and run.

Which tools a response calls (the policy in :class:`ToolTurn`): a declared tool is called when its name
appears as a word in the turn's prompt (the instructions and the turn's typed texts). Every response that
opens a turn (new audio or text) may call; the responses that follow its tool outputs go on calling until
each named tool has been called ``rounds`` times, then the answer comes. ``parallel``: every named tool in
one response (one ``function_call`` item each, in declaration order), so the turn has ``rounds`` call
responses; otherwise one call per response, in declaration order, ``rounds`` × tools call responses.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from batchqwen.sim.analysis import clip
from batchqwen.sim.config import ARGUMENT_FAULTS

MAX_DEPTH = 8
BRANCH_TYPES = "\0branch_types"  # internal key of a resolved schema
STRING_CLIP = 40

_DIRECTIVES = re.compile(r"\b(sim_fault|sim_tool_rounds|sim_parallel_calls)=(\w+)")


# ----------------------------------------------------------------------------- declarations


def tool_function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """The function object of a declaration: Chat-Completions ``{"type":"function","function":{...}}``
    (the service's form) or the flat ``{"type":"function","name":...,"parameters":...}``."""
    function = tool.get("function")
    return function if isinstance(function, Mapping) else tool


def declared_tools(tools: Sequence[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, parameters schema) of every declared function with a name, in declaration order."""
    found: list[tuple[str, Mapping[str, Any]]] = []
    for tool in tools:
        function = tool_function(tool)
        name = function.get("name")
        if isinstance(name, str) and name:
            parameters = function.get("parameters")
            found.append((name, parameters if isinstance(parameters, Mapping) else {}))
    return found


def named_in(prompt: str, name: str) -> bool:
    """Whether ``name`` appears in ``prompt`` as a word (``lookup`` in "use lookup", not in "lookups")."""
    return re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", prompt) is not None


def call_prompt(instructions: str, texts: Sequence[str]) -> str:
    """The text a turn's calls are decided on and seeded by: the instructions, then the turn's typed
    texts, joined by single spaces (empty ones skipped)."""
    return " ".join(part for part in (instructions, *texts) if part)


def round_seed(prompt: str, round_number: int) -> str:
    """The seed text of a turn's ``round_number``-th call of a tool: the prompt itself for the first,
    ``"{prompt} (round N)"`` after."""
    return prompt if round_number <= 1 else f"{prompt} (round {round_number})"


def directives(prompt: str) -> dict[str, str]:
    """Per-item switches written in the prompt (``sim_fault=missing_argument``, ``sim_tool_rounds=3``,
    ``sim_parallel_calls=0``), the same names as the per-connection URL switches; the last one wins."""
    return {key: value for key, value in _DIRECTIVES.findall(prompt)}


# ----------------------------------------------------------------------------- arguments


def arguments_for(schema: Mapping[str, Any] | None, seed_text: str) -> dict[str, Any]:
    """Arguments that follow ``schema`` (a tool's ``parameters``), chosen deterministically from
    ``seed_text``; ``{}`` for a schema that declares nothing (see the module docstring for the rules)."""
    if not isinstance(schema, Mapping):
        return {}
    return _Generator(schema, seed_text).object(schema, "", 0)


def arguments_json(arguments: Any) -> str:
    """The wire form of arguments: JSON in declaration order, non-ASCII kept."""
    return json.dumps(arguments, ensure_ascii=False)


def violate(schema: Mapping[str, Any] | None, arguments: dict[str, Any], kind: str) -> Any:
    """``arguments`` made to violate ``schema``: ``missing_argument`` drops the first required property;
    ``bad_argument_type`` gives the first property whose type is constrained (required ones first) a value
    of another JSON type. Each falls back to the other when it has nothing to break, and with neither the
    arguments become a list, which is not an object."""
    if kind not in ARGUMENT_FAULTS:
        raise ValueError(f"unknown argument fault {kind!r}; one of {', '.join(ARGUMENT_FAULTS)}")
    generator = _Generator(schema if isinstance(schema, Mapping) else {}, "")
    resolved = generator.resolve(generator.root)
    required = [key for key in resolved.get("required") or () if isinstance(key, str) and key in arguments]
    order = required + [key for key in arguments if key not in required]
    specs = {key: generator.resolve(_properties(resolved).get(key)) for key in order}
    typed = [key for key in order if _allowed_types(specs[key]) or "enum" in specs[key] or "const" in specs[key]]
    if required and (kind == "missing_argument" or not typed):
        return {key: value for key, value in arguments.items() if key != required[0]}
    if typed:
        key = typed[0]
        return {**arguments, key: _wrong_type(_allowed_types(specs[key]), arguments[key])}
    return []


def _allowed_types(spec: Mapping[str, Any]) -> list[str]:
    """The JSON types a resolved schema allows (every branch's; empty: any type)."""
    branch_types = spec.get(BRANCH_TYPES)
    return list(branch_types) if isinstance(branch_types, list) else _types(spec)


def _wrong_type(types: list[str], value: Any) -> Any:
    """A value of a JSON type outside ``types`` (outside the value's own type when none is declared)."""
    types = types or [_json_type(value)]
    for candidate in ("not a number", 12345, True, ["not", "an", "object"], {"not": "a list"}):
        if _json_type(candidate) not in types and not (_json_type(candidate) == "integer" and "number" in types):
            return candidate
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _types(spec: Mapping[str, Any]) -> list[str]:
    kind = spec.get("type")
    if isinstance(kind, str):
        return [kind]
    if isinstance(kind, list):
        return [k for k in kind if isinstance(k, str)]
    return []


class _Generator:
    """One schema's values for one seed; ``root`` resolves ``$ref``."""

    def __init__(self, root: Mapping[str, Any], seed_text: str):
        self.root = root
        self.seed = seed_text

    def draw(self, path: str, n: int) -> int:
        """A number in [0, n) from the seed and the path (n >= 1)."""
        digest = hashlib.sha256(f"{self.seed}\0{path}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % max(n, 1)

    def fraction(self, path: str) -> float:
        return self.draw(path, 10_001) / 10_000

    # -- schema plumbing

    def resolve(self, spec: Any, depth: int = 0) -> dict[str, Any]:
        """``spec`` with ``$ref`` followed, ``allOf`` merged and ``anyOf`` / ``oneOf`` narrowed to a branch."""
        if depth > MAX_DEPTH or not isinstance(spec, Mapping):  # a cycle of $ref / anyOf: give up here
            return {}
        out = dict(spec)
        for _ in range(MAX_DEPTH):
            ref = out.pop("$ref", None)
            if not isinstance(ref, str):
                break
            out = {**self.pointer(ref), **out}
        if isinstance(out.get("allOf"), list):
            merged: dict[str, Any] = {}
            properties: dict[str, Any] = {}
            required: list[str] = []
            for part in [self.resolve(p, depth + 1) for p in out.pop("allOf")] + [out]:
                properties.update(part.get("properties") or {})
                required += [r for r in part.get("required") or () if r not in required]
                merged.update(part)
            if properties:
                merged["properties"] = properties
            if required:
                merged["required"] = required
            out = merged
        for key in ("anyOf", "oneOf"):
            branches = out.pop(key, None)
            if isinstance(branches, list) and branches:
                resolved = [self.resolve(b, depth + 1) for b in branches]
                chosen = next((b for b in resolved if _types(b) != ["null"]), resolved[0])
                allowed = [t for b in resolved for t in (_types(b) or ["any"])]
                # the branches' types, so that a default allowed by another branch (null) is still taken
                out = {**out, **chosen, BRANCH_TYPES: [] if "any" in allowed else allowed}
        return out

    def pointer(self, ref: str) -> dict[str, Any]:
        """A local JSON pointer (``#``, ``#/$defs/Name``); anything else resolves to ``{}``."""
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for raw in [p for p in ref[1:].split("/") if p]:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return dict(node) if isinstance(node, Mapping) else {}

    def kind(self, spec: Mapping[str, Any]) -> str:
        types = [t for t in _types(spec) if t != "null"]
        if types:
            return types[0]
        if _types(spec) == ["null"]:
            return "null"
        if "properties" in spec or "required" in spec:
            return "object"
        if "items" in spec or "prefixItems" in spec:
            return "array"
        return "string"

    # -- values

    def value(self, raw: Any, path: str, depth: int) -> Any:
        spec = self.resolve(raw)
        if "const" in spec:
            return spec["const"]
        branch_types = spec.pop(BRANCH_TYPES, None)
        kind, declared = self.kind(spec), _types(spec) if branch_types is None else branch_types
        if "default" in spec and _fits(spec["default"], declared):
            return spec["default"]
        enum = spec.get("enum")
        if isinstance(enum, list) and enum:
            return enum[self.draw(path, len(enum))]
        examples = spec.get("examples")
        if isinstance(examples, list):
            fitting = [e for e in examples if _fits(e, declared or [kind])]
            if fitting:
                return fitting[self.draw(path + "#example", len(fitting))]
        if kind == "object":
            return self.object(spec, path, depth)
        if kind == "array":
            return self.array(spec, path, depth)
        if kind == "integer":
            return self.integer(spec, path)
        if kind == "number":
            return self.number(spec, path)
        if kind == "boolean":
            return self.draw(path, 2) == 1
        if kind == "null":
            return None
        return self.string(spec, path)

    def object(self, raw: Any, path: str, depth: int) -> dict[str, Any]:
        spec = self.resolve(raw)
        if depth >= MAX_DEPTH:
            return {}
        out: dict[str, Any] = {}
        for key, sub in _properties(spec).items():
            out[str(key)] = self.value(sub, f"{path}.{key}" if path else str(key), depth + 1)
        for key in spec.get("required") or ():
            if isinstance(key, str) and key not in out:
                out[key] = self.string({}, f"{path}.{key}" if path else key)
        return out

    def array(self, spec: Mapping[str, Any], path: str, depth: int) -> list[Any]:
        if depth >= MAX_DEPTH:
            return []
        prefix = spec.get("prefixItems")
        items = spec.get("items")
        if not isinstance(prefix, list) and isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, spec.get("additionalItems")
        prefix = prefix if isinstance(prefix, list) else []
        low = _int(spec.get("minItems"), 0)
        high = _int(spec.get("maxItems"), max(low, 3, len(prefix)))
        count = min(max(low, 1 + self.draw(path + "#count", 3), len(prefix) if prefix else 0), high)
        out: list[Any] = []
        for index in range(count):
            sub = prefix[index] if index < len(prefix) else (items if isinstance(items, Mapping) else {})
            value = self.value(sub, f"{path}[{index}]", depth + 1)
            if spec.get("uniqueItems") and index >= len(prefix) and value in out:
                if len(out) >= low:
                    break
                continue
            out.append(value)
        return out

    def integer(self, spec: Mapping[str, Any], path: str) -> int:
        low, high = _bounds(spec, integer=True)
        step = spec.get("multipleOf")
        if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
            return int(_multiple(low, high, float(step), self.draw(path, 1_000_000), integral=True))
        return int(low) + self.draw(path, int(high) - int(low) + 1) if high >= low else int(low)

    def number(self, spec: Mapping[str, Any], path: str) -> float:
        low, high = _bounds(spec, integer=False)
        step = spec.get("multipleOf")
        if isinstance(step, int | float) and not isinstance(step, bool) and step > 0:
            return _multiple(low, high, float(step), self.draw(path, 1_000_000))
        value = round(low + (high - low) * self.fraction(path), 2)
        if not low <= value <= high or _excluded(spec, value):
            value = (low + high) / 2
        return float(value)

    def string(self, spec: Mapping[str, Any], path: str) -> str:
        fmt = spec.get("format")
        formatted = self.formatted(str(fmt), path) if isinstance(fmt, str) else None
        if formatted is not None:
            return formatted
        name = path.rsplit(".", 1)[-1] or "text"
        text = clip(self.seed, STRING_CLIP) if self.seed.strip() else name
        longest = _int(spec.get("maxLength"), -1)
        if longest == 0:
            return ""
        if longest > 0 and len(text) > longest:
            text = clip(text, longest) if longest > 1 else text[:1]
        shortest = _int(spec.get("minLength"), 0)
        return text + "." * max(0, shortest - len(text))

    def formatted(self, fmt: str, path: str) -> str | None:
        number = self.draw(path, 10**9)
        moment = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
            seconds=number % (30 * 365 * 86_400)
        )
        if fmt == "date":
            return moment.date().isoformat()
        if fmt == "date-time":
            return moment.isoformat().replace("+00:00", "Z")
        if fmt == "time":
            return moment.time().isoformat() + "Z"
        if fmt in ("email", "idn-email"):
            return f"user{number % 10_000}@example.com"
        if fmt in ("uri", "url", "iri", "uri-reference"):
            return f"https://example.com/item/{number % 10_000}"
        if fmt == "uuid":
            digest = hashlib.sha256(f"{self.seed}\0{path}".encode()).digest()
            return str(uuid.UUID(bytes=digest[:16], version=4))
        if fmt in ("hostname", "idn-hostname"):
            return f"host{number % 10_000}.example.com"
        if fmt == "ipv4":
            return f"10.{number % 256}.{number // 256 % 256}.{number // 65_536 % 254 + 1}"
        return None


def _properties(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    properties = spec.get("properties")
    return properties if isinstance(properties, Mapping) else {}


def _int(value: Any, fallback: int) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else fallback


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _bounds(spec: Mapping[str, Any], *, integer: bool) -> tuple[float, float]:
    """[low, high] from minimum / maximum / exclusive bounds (draft 4's booleans too); 0..100 when open."""
    low, high = _number(spec.get("minimum")), _number(spec.get("maximum"))
    ex_low, ex_high = spec.get("exclusiveMinimum"), spec.get("exclusiveMaximum")
    nudge = 1.0 if integer else 0.01
    if ex_low is True and low is not None:  # draft 4
        low += nudge
    elif (bound := _number(ex_low)) is not None:
        low = max(low if low is not None else -math.inf, bound + nudge)
    if ex_high is True and high is not None:
        high -= nudge
    elif (bound := _number(ex_high)) is not None:
        high = min(high if high is not None else math.inf, bound - nudge)
    if integer:
        low = math.ceil(low) if low is not None else None
        high = math.floor(high) if high is not None else None
    if low is None and high is None:
        return 0.0, 100.0
    if low is None:
        assert high is not None
        return high - 100, high
    if high is None:
        return low, low + 100
    return low, high


def _excluded(spec: Mapping[str, Any], value: float) -> bool:
    ex_low, ex_high = _number(spec.get("exclusiveMinimum")), _number(spec.get("exclusiveMaximum"))
    return (ex_low is not None and value <= ex_low) or (ex_high is not None and value >= ex_high)


def _multiple(low: float, high: float, step: float, draw: int, *, integral: bool = False) -> float:
    """A multiple of ``step`` in [low, high] that survives the float check validators do
    (``value / step`` is a whole number), a whole number too when ``integral``; the drawn multiple when it
    does, else the nearest one above it (or from the lowest) that does."""
    exact = Decimal(str(step))
    first, last = math.ceil(low / step), math.floor(high / step)
    if first > last:
        return float(low)
    start = first + draw % (last - first + 1)
    for k in [*range(start, min(last, start + 200) + 1), *range(first, min(last, first + 200) + 1)]:
        value = float(exact * k)
        if low <= value <= high and (value / step).is_integer() and (value.is_integer() or not integral):
            return value
    return float(exact * first)


def _fits(value: Any, types: Sequence[str]) -> bool:
    """Whether ``value`` has one of the declared JSON ``types`` (any value when none is declared)."""
    actual = _json_type(value)
    return not types or actual in types or (actual == "integer" and "number" in types)


# ----------------------------------------------------------------------------- the call policy


@dataclass(frozen=True)
class ToolPolicy:
    """How a session calls tools: ``rounds`` calls of each named tool per turn, all in one response
    (``parallel``) or one per response; ``argument_fault`` makes every call's arguments violate the schema."""

    rounds: int = 1
    parallel: bool = True
    argument_fault: str | None = None

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError("tool rounds must not be negative")
        if self.argument_fault is not None and self.argument_fault not in ARGUMENT_FAULTS:
            raise ValueError(f"unknown argument fault {self.argument_fault!r}; one of {', '.join(ARGUMENT_FAULTS)}")

    def with_directives(self, prompt: str) -> ToolPolicy:
        """This policy with the prompt's own switches (see :func:`directives`); invalid ones are ignored."""
        found = directives(prompt)
        rounds, parallel, fault = self.rounds, self.parallel, self.argument_fault
        if found.get("sim_tool_rounds", "").isdigit():
            rounds = int(found["sim_tool_rounds"])
        if found.get("sim_parallel_calls") in ("0", "1"):
            parallel = found["sim_parallel_calls"] == "1"
        if found.get("sim_fault") in ARGUMENT_FAULTS:
            fault = found["sim_fault"]
        return ToolPolicy(rounds=rounds, parallel=parallel, argument_fault=fault)


@dataclass(frozen=True)
class PlannedCall:
    """One function call of a response: the tool, its arguments as sent, and the fault applied, if any."""

    name: str
    arguments: str
    fault: str | None = None


@dataclass
class ToolTurn:
    """The function calls of one user turn, response by response (see the module docstring)."""

    prompt: str
    tools: list[tuple[str, Mapping[str, Any]]]
    policy: ToolPolicy = field(default_factory=ToolPolicy)
    responses: int = 0  # call responses made so far

    @classmethod
    def start(cls, prompt: str, tools: Sequence[Mapping[str, Any]], policy: ToolPolicy) -> ToolTurn:
        named = [(name, schema) for name, schema in declared_tools(tools) if named_in(prompt, name)]
        return cls(prompt, named, policy.with_directives(prompt))

    def next_calls(self) -> list[PlannedCall]:
        """The calls of the turn's next response; empty once every round is done (the answer comes)."""
        if not self.tools:
            return []
        total = self.policy.rounds * (1 if self.policy.parallel else len(self.tools))
        if self.responses >= total:
            return []
        if self.policy.parallel:
            chosen, round_number = self.tools, self.responses + 1
        else:
            chosen = [self.tools[self.responses % len(self.tools)]]
            round_number = self.responses // len(self.tools) + 1
        self.responses += 1
        seed = round_seed(self.prompt, round_number)
        fault = self.policy.argument_fault
        calls = []
        for name, schema in chosen:
            arguments: Any = arguments_for(schema, seed)
            if fault is not None:
                arguments = violate(schema, arguments, fault)
            calls.append(PlannedCall(name, arguments_json(arguments), fault))
        return calls
