"""``--extract TOOLNAME``: the final arguments of one tool as typed columns of ``results.parquet``.

Each top-level property ``p`` of the tool's parameters becomes a column ``extract_p`` (the prefix keeps
them apart from every result column; a passthrough column of the same name gets ``manifest_``). Its Arrow
type follows the property's JSON Schema (:func:`arrow_type`):

==========================================  ===========================================
JSON Schema                                 Arrow
==========================================  ===========================================
string (any ``format``), enum of strings    string
integer, enum of integers                   int64
number                                      float64
boolean                                     bool
array with ``items``                        list<the items' type>
object with ``properties``                  struct<one field per property> (nested)
object with only ``additionalProperties``   map<string, its type>
``["T", "null"]``, ``anyOf [T, null]``      T (nullable; every column is)
anything else (mixed unions, no type, ...)  string holding the value as JSON text
==========================================  ===========================================

Local ``$ref``s (``#/$defs/...``) are followed. A row's final arguments of the tool (its last call, over
all turns) must validate against the schema (``jsonschema``); a row whose do not, or whose model never
called the tool, fails with the reason (``error_type`` ``extract``), its calls and turns still recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batchqwen.errors import ExtractError, UsageError
from batchqwen.items import ToolCall
from batchqwen.tools import Toolbox, validation_message

EXTRACT_PREFIX = "extract_"
_INT64 = (-(2**63), 2**63 - 1)

Convert = Callable[[Any], Any]


@dataclass(frozen=True)
class Extraction:
    """One tool's arguments as columns: its name, its schema, and one Arrow field per top-level property."""

    tool: str
    schema: dict[str, Any]
    fields: tuple[pa.Field, ...]
    converters: tuple[Convert, ...]

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.fields]

    def final_arguments(self, calls: Sequence[ToolCall]) -> str:
        """The JSON text of the last call of the tool, checked against its schema; ExtractError otherwise."""
        mine = [call for call in calls if call.name == self.tool]
        if not mine:
            called = sorted({call.name for call in calls})
            also = f" (it called {', '.join(called)})" if called else ""
            raise ExtractError(f"--extract {self.tool}: the model never called {self.tool}{also}", code="not_called")
        text = mine[-1].arguments
        try:
            arguments = json.loads(text or "{}")
        except ValueError as exc:
            raise ExtractError(
                f"--extract {self.tool}: the final arguments are not JSON: {exc}", code="invalid_json"
            ) from None
        problem = validation_message(self.schema, arguments)
        if problem is not None:
            raise ExtractError(
                f"--extract {self.tool}: the final arguments do not match the schema: {problem}", code="validation"
            )
        for field, convert in zip(self.fields, self.converters, strict=True):  # what Arrow cannot hold, say now
            try:
                convert(arguments.get(field.name.removeprefix(EXTRACT_PREFIX)))
            except (TypeError, ValueError, OverflowError) as exc:
                raise ExtractError(f"--extract {self.tool}: {field.name}: {exc}", code="validation") from None
        return json.dumps(arguments, ensure_ascii=False, sort_keys=True)

    def values(self, arguments_text: str | None) -> list[Any]:
        """The typed column values of one row's stored arguments (all null when absent or unreadable)."""
        if not arguments_text:
            return [None] * len(self.fields)
        try:
            arguments = json.loads(arguments_text)
        except ValueError:
            return [None] * len(self.fields)
        if not isinstance(arguments, dict):
            return [None] * len(self.fields)
        out = []
        for field, convert in zip(self.fields, self.converters, strict=True):
            try:
                out.append(convert(arguments.get(field.name.removeprefix(EXTRACT_PREFIX))))
            except (TypeError, ValueError, OverflowError, AttributeError):
                out.append(None)  # a hand-edited journal: what cannot be read is null
        return out


def extraction_for(toolbox: Toolbox, name: str) -> Extraction:
    """The extraction of tool ``name`` of the run's tools; UsageError when there is none to extract."""
    tool = toolbox.tools.get(name)
    if tool is None:
        where = toolbox.source or "--tools"
        raise UsageError(f"--extract {name}: no such tool; {where} has {', '.join(toolbox.names)}")
    schema = tool.parameters
    properties = _resolve(schema, schema).get("properties")
    if not isinstance(properties, dict) or not properties:
        raise UsageError(f"--extract {name}: the tool's parameters declare no properties to make columns of")
    fields, converters = [], []
    for prop, prop_schema in properties.items():
        kind, convert = _column(prop_schema, schema, depth=0)
        fields.append(pa.field(EXTRACT_PREFIX + str(prop), kind))
        converters.append(convert)
    return Extraction(name, schema, tuple(fields), tuple(converters))


def arrow_type(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> pa.DataType:
    """The Arrow type a value of ``schema`` is stored as (see the table in the module docstring)."""
    return _column(schema, root if root is not None else schema, depth=0)[0]


# ----------------------------------------------------------------------------- schema -> (type, converter)

_MAX_DEPTH = 16  # a recursive $ref stops here as JSON text


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)


_AS_JSON: tuple[pa.DataType, Convert] = (pa.string(), _json_text)


def _resolve(schema: Any, root: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with a local ``$ref`` followed (``#/$defs/x``, ``#/definitions/x``)."""
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < _MAX_DEPTH:
        ref = schema["$ref"]
        if not ref.startswith("#"):
            return {}
        target: Any = root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        schema, seen = target, seen + 1
    return schema if isinstance(schema, dict) else {}


def _integer(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not float(value).is_integer():
        raise ValueError(f"{value!r} is not an integer")
    number = int(value)
    if not _INT64[0] <= number <= _INT64[1]:
        raise OverflowError(f"{number} does not fit a 64-bit integer column")
    return number


def _number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _boolean(value: Any) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not a boolean")
    return value


def _string(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


_SCALARS: dict[str, tuple[pa.DataType, Convert]] = {
    "string": (pa.string(), _string),
    "integer": (pa.int64(), _integer),
    "number": (pa.float64(), _number),
    "boolean": (pa.bool_(), _boolean),
}


def _enum_kind(values: list[Any]) -> str | None:
    if values and all(isinstance(v, str) for v in values):
        return "string"
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "integer"
    if values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "number"
    if values and all(isinstance(v, bool) for v in values):
        return "boolean"
    return None


def _column(schema: Any, root: Mapping[str, Any], *, depth: int) -> tuple[pa.DataType, Convert]:
    schema = _resolve(schema, root)
    if depth > _MAX_DEPTH or not schema:
        return _AS_JSON
    if "const" in schema:
        kind = _enum_kind([schema["const"]])
        return _SCALARS[kind] if kind else _AS_JSON
    if isinstance(schema.get("enum"), list):
        kind = _enum_kind([v for v in schema["enum"] if v is not None])
        return _SCALARS[kind] if kind else _AS_JSON
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list):
            real = [o for o in options if _resolve(o, root).get("type") != "null"]
            return _column(real[0], root, depth=depth + 1) if len(real) == 1 else _AS_JSON
    if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:
        return _column(schema["allOf"][0], root, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        real_kinds = [k for k in kind if k != "null"]
        if len(real_kinds) != 1:
            return _AS_JSON
        kind = real_kinds[0]
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        items = schema.get("items")
        if not isinstance(items, dict) or "prefixItems" in schema:
            return _AS_JSON
        item_type, item_convert = _column(items, root, depth=depth + 1)

        def convert_list(value: Any) -> list[Any] | None:
            if value is None:
                return None
            if not isinstance(value, list):
                raise ValueError(f"{value!r} is not an array")
            return [item_convert(v) for v in value]

        return pa.list_(item_type), convert_list
    if kind == "object":
        properties = schema.get("properties")
        if isinstance(properties, dict) and properties:
            parts = {str(name): _column(sub, root, depth=depth + 1) for name, sub in properties.items()}

            def convert_struct(value: Any) -> dict[str, Any] | None:
                if value is None:
                    return None
                if not isinstance(value, dict):
                    raise ValueError(f"{value!r} is not an object")
                return {name: convert(value.get(name)) for name, (_, convert) in parts.items()}

            return pa.struct([(name, kind) for name, (kind, _) in parts.items()]), convert_struct
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            value_type, value_convert = _column(extra, root, depth=depth + 1)

            def convert_map(value: Any) -> list[tuple[str, Any]] | None:
                if value is None:
                    return None
                if not isinstance(value, dict):
                    raise ValueError(f"{value!r} is not an object")
                return [(str(k), value_convert(v)) for k, v in value.items()]

            return pa.map_(pa.string(), value_type), convert_map
    return _AS_JSON
