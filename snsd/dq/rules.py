"""The rules file: which objects get which table schema.

A rules file (YAML or JSON) is a list of rule sets, or a mapping with a ``rule_sets`` list.  Each rule set
matches objects by bucket and key glob (first match wins) and declares a Frictionless-style Table Schema
plus three table checks that live at the rule set's top level, next to ``schema``::

    - name: orders
      bucket: "landing-*"          # fnmatch glob, default "*"
      key: "incoming/*.csv"         # fnmatch glob, default "*"
      min_rows: 1                   # optional
      max_rows: 1000000             # optional
      allow_extra_fields: false     # default true
      schema:
        primaryKey: [order_id]
        fields:
          - name: order_id
            type: integer
            constraints: {required: true, unique: true, minimum: 1}

Everything is validated once, at startup, into frozen values; a problem raises ``RulesError`` naming the
file, the rule set and what is wrong, so the daemon refuses to start rather than mis-checking files.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

TYPES = ("string", "integer", "number", "boolean", "date", "datetime")
CONSTRAINTS = ("required", "unique", "minimum", "maximum", "pattern", "enum", "minLength", "maxLength")
# Frictionless keys we accept and ignore (documentation only) besides the ones we act on.
_FIELD_KEYS = {"name", "type", "constraints", "format", "title", "description"}
_SCHEMA_KEYS = {"fields", "primaryKey", "missingValues"}
_RULE_SET_KEYS = {"name", "bucket", "key", "schema", "min_rows", "max_rows", "allow_extra_fields", "description"}
# Integer columns are int64: a bound or enum value outside this range could not be compared with them.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Frictionless' default lexical forms for booleans.
TRUE_VALUES = ("true", "True", "TRUE", "1")
FALSE_VALUES = ("false", "False", "FALSE", "0")


class RulesError(ValueError):
    """The rules file is unusable; the message names the file, the rule set and the problem."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str = "string"
    format: str | None = None  # strptime format for date/datetime; None means ISO 8601
    required: bool = False
    unique: bool = False
    minimum: Any = None  # int/float/date/datetime matching ``type``
    maximum: Any = None
    pattern: str | None = None
    enum: tuple | None = None  # values of ``type``
    min_length: int | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class RuleSet:
    name: str
    bucket: str = "*"
    key: str = "*"
    fields: tuple[FieldSpec, ...] = ()
    primary_key: tuple[str, ...] = ()
    missing_values: tuple[str, ...] = ("",)
    min_rows: int | None = None
    max_rows: int | None = None
    allow_extra_fields: bool = True

    def matches(self, bucket: str, key: str) -> bool:
        # fnmatchcase: S3 names are case-sensitive whatever the host OS.
        return fnmatch.fnmatchcase(bucket, self.bucket) and fnmatch.fnmatchcase(key, self.key)

    def field(self, name: str) -> FieldSpec | None:
        for spec in self.fields:
            if spec.name == name:
                return spec
        return None


@dataclass(frozen=True)
class RuleBook:
    rule_sets: tuple[RuleSet, ...] = ()
    source: str | None = None

    def match(self, bucket: str, key: str) -> RuleSet | None:
        for rule_set in self.rule_sets:
            if rule_set.matches(bucket, key):
                return rule_set
        return None


def load_rules(path: str | Path) -> RuleBook:
    """Read and validate a rules file; raise ``RulesError`` for anything wrong with it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(f"{path}: cannot read rules file: {e}") from e
    return parse_rules(text, source=str(path))


def parse_rules(text: str, source: str = "<rules>") -> RuleBook:
    try:
        if source.lower().endswith(".json"):
            data = json.loads(text)
        else:
            try:
                if not text.lstrip().startswith(("[", "{")):
                    raise ValueError("not JSON")
                data = json.loads(text)
            except ValueError:
                # YAML in flow style starts with [ or { too: `[{name: orders, ...}]`.
                data = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise RulesError(f"{source}: not valid YAML/JSON: {e}") from e
    if isinstance(data, dict) and "rule_sets" in data:
        data = data["rule_sets"]
    if not isinstance(data, list):
        raise RulesError(f"{source}: expected a list of rule sets (or a mapping with 'rule_sets')")
    rule_sets = []
    names = set()
    for index, raw in enumerate(data):
        label = f"rule set #{index}"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            label = f"rule set {raw['name']!r} (#{index})"

        def fail(problem: str, label=label) -> RulesError:
            return RulesError(f"{source}: {label}: {problem}")

        rule_set = _parse_rule_set(raw, fail)
        if rule_set.name in names:
            raise fail(f"duplicate rule set name {rule_set.name!r}")
        names.add(rule_set.name)
        rule_sets.append(rule_set)
    return RuleBook(rule_sets=tuple(rule_sets), source=source)


def _parse_rule_set(raw: Any, fail) -> RuleSet:
    if not isinstance(raw, dict):
        raise fail("must be a mapping")
    unknown = set(raw) - _RULE_SET_KEYS
    if unknown:
        raise fail(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_RULE_SET_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise fail("'name' must be a non-empty string")
    bucket = raw.get("bucket", "*")
    key = raw.get("key", "*")
    for what, value in (("bucket", bucket), ("key", key)):
        if not isinstance(value, str) or not value:
            raise fail(f"'{what}' must be a non-empty glob string")
    min_rows = _optional_count(raw.get("min_rows"), "min_rows", fail)
    max_rows = _optional_count(raw.get("max_rows"), "max_rows", fail)
    if min_rows is not None and max_rows is not None and min_rows > max_rows:
        raise fail(f"min_rows ({min_rows}) > max_rows ({max_rows})")
    allow_extra = raw.get("allow_extra_fields", True)
    if not isinstance(allow_extra, bool):
        raise fail("'allow_extra_fields' must be true or false")
    schema = raw.get("schema")
    if not isinstance(schema, dict):
        raise fail("'schema' must be a mapping with 'fields'")
    unknown = set(schema) - _SCHEMA_KEYS
    if unknown:
        raise fail(f"schema: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SCHEMA_KEYS)}")
    raw_fields = schema.get("fields")
    if not isinstance(raw_fields, list) or not raw_fields:
        raise fail("schema.fields must be a non-empty list")
    fields = []
    seen = set()
    for i, raw_field in enumerate(raw_fields):
        spec = _parse_field(raw_field, i, fail)
        if spec.name in seen:
            raise fail(f"field {spec.name!r} declared twice")
        seen.add(spec.name)
        fields.append(spec)
    primary_key = schema.get("primaryKey", ())
    if isinstance(primary_key, str):
        primary_key = (primary_key,)
    if not isinstance(primary_key, list | tuple) or not all(isinstance(p, str) for p in primary_key):
        raise fail("schema.primaryKey must be a field name or a list of field names")
    for p in primary_key:
        if p not in seen:
            raise fail(f"schema.primaryKey names unknown field {p!r}")
    missing = schema.get("missingValues", [""])
    if not isinstance(missing, list) or not all(isinstance(m, str) for m in missing):
        raise fail("schema.missingValues must be a list of strings")
    return RuleSet(
        name=name,
        bucket=bucket,
        key=key,
        fields=tuple(fields),
        primary_key=tuple(primary_key),
        missing_values=tuple(missing),
        min_rows=min_rows,
        max_rows=max_rows,
        allow_extra_fields=allow_extra,
    )


def _optional_count(value: Any, what: str, fail) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(f"'{what}' must be a non-negative integer, got {value!r}")
    return value


def _parse_field(raw: Any, index: int, fail) -> FieldSpec:
    if not isinstance(raw, dict):
        raise fail(f"field #{index} must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise fail(f"field #{index}: 'name' must be a non-empty string")
    where = f"field {name!r}"
    unknown = set(raw) - _FIELD_KEYS
    if unknown:
        raise fail(f"{where}: unknown key(s) {sorted(unknown)}")
    type_ = raw.get("type", "string")
    if type_ not in TYPES:
        raise fail(f"{where}: unknown type {type_!r}; expected one of {list(TYPES)}")
    fmt = raw.get("format")
    if fmt in (None, "default", "any"):
        fmt = None
    elif type_ not in ("date", "datetime") or not isinstance(fmt, str):
        raise fail(f"{where}: 'format' is only supported as a strptime pattern for date/datetime")
    constraints = raw.get("constraints", {}) or {}
    if not isinstance(constraints, dict):
        raise fail(f"{where}: 'constraints' must be a mapping")
    unknown = set(constraints) - set(CONSTRAINTS)
    if unknown:
        raise fail(f"{where}: unknown constraint(s) {sorted(unknown)}; expected some of {list(CONSTRAINTS)}")
    values: dict[str, Any] = {}
    for flag in ("required", "unique"):
        value = constraints.get(flag, False)
        if not isinstance(value, bool):
            raise fail(f"{where}: constraint {flag} must be true or false")
        values[flag] = value
    for bound in ("minimum", "maximum"):
        if bound in constraints:
            if type_ in ("string", "boolean"):
                raise fail(f"{where}: constraint {bound} does not apply to type {type_}")
            values[bound] = _typed_value(constraints[bound], type_, fmt, lambda p, b=bound: fail(f"{where}: {b}: {p}"))
    if values.get("minimum") is not None and values.get("maximum") is not None:
        if values["minimum"] > values["maximum"]:
            raise fail(f"{where}: minimum ({constraints['minimum']}) > maximum ({constraints['maximum']})")
    for length in ("minLength", "maxLength"):
        value = constraints.get(length)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise fail(f"{where}: constraint {length} must be a non-negative integer, got {value!r}")
    min_length, max_length = constraints.get("minLength"), constraints.get("maxLength")
    if min_length is not None and max_length is not None and min_length > max_length:
        raise fail(f"{where}: minLength ({min_length}) > maxLength ({max_length})")
    pattern = constraints.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str):
            raise fail(f"{where}: constraint pattern must be a string")
        try:
            re.compile(pattern)
            # The check runs in Arrow's RE2, which rejects some Python syntax (backreferences, lookaround).
            pc.match_substring_regex(pa.array([""]), f"^(?:{pattern})$")
        except (re.error, pa.ArrowInvalid) as e:
            raise fail(f"{where}: bad regular expression {pattern!r}: {e}") from e
    enum = constraints.get("enum")
    if enum is not None:
        if not isinstance(enum, list) or not enum:
            raise fail(f"{where}: constraint enum must be a non-empty list")
        enum = tuple(_typed_value(v, type_, fmt, lambda p: fail(f"{where}: enum: {p}")) for v in enum)
    return FieldSpec(
        name=name,
        type=type_,
        format=fmt,
        required=values["required"],
        unique=values["unique"],
        minimum=values.get("minimum"),
        maximum=values.get("maximum"),
        pattern=pattern,
        enum=enum,
        min_length=min_length,
        max_length=max_length,
    )


def _typed_value(value: Any, type_: str, fmt: str | None, fail) -> Any:
    """A constraint's value converted to the field's type (YAML may already have done it)."""
    if type_ == "string":
        if not isinstance(value, str):
            raise fail(f"{value!r} is not a string")
        return value
    if type_ == "integer":
        if isinstance(value, bool):
            raise fail(f"{value!r} is not an integer")
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            value = int(value)
        if not isinstance(value, int):
            raise fail(f"{value!r} is not an integer")
        if not INT64_MIN <= value <= INT64_MAX:
            raise fail(f"{value} is outside the 64-bit integer range ({INT64_MIN} to {INT64_MAX})")
        return value
    if type_ == "number":
        if isinstance(value, bool):
            raise fail(f"{value!r} is not a number")
        if isinstance(value, int) and -(2**53) <= value <= 2**53:
            return value  # kept exact (and shown as written in results)
        try:
            # Number columns are 64-bit floats, which Arrow compares only with values they hold exactly.
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise fail(f"{value!r} is not a number (a 64-bit float)") from None
        if math.isnan(number):
            raise fail("NaN is not a usable value: it compares false with every number")
        return number
    if type_ == "boolean":
        if isinstance(value, bool):
            return value
        if value in TRUE_VALUES:
            return True
        if value in FALSE_VALUES:
            return False
        raise fail(f"{value!r} is not a boolean")
    if type_ == "date":
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        try:
            return dt.datetime.strptime(value, fmt).date() if fmt else dt.date.fromisoformat(value)
        except (TypeError, ValueError):
            raise fail(f"{value!r} is not a date") from None
    # datetime: compared as naive UTC
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        parsed = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            text = str(value)
            parsed = dt.datetime.strptime(text, fmt) if fmt else dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except (TypeError, ValueError):
            raise fail(f"{value!r} is not a datetime") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed
