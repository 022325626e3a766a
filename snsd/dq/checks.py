"""Vectorised checks of record batches against a rule set, accumulated over the whole file.

Each batch is checked column by column with ``pyarrow.compute`` (C++, GIL released); only counts and
the first few failing row numbers are kept, so memory does not grow with the file, except for
``unique``/``primaryKey``: those keep the (converted) key column of every row until the end of the file,
where Arrow's hash kernel finds the duplicates.  That costs about 8 bytes a row for an integer key and the
strings' size for a text key; exact answers were preferred to a probabilistic sketch.

Row numbers are 1-based and count data rows (a CSV header is not a row).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from snsd.dq.formats import EXAMPLE_ROWS, ParseErrors
from snsd.dq.rules import FALSE_VALUES, INT64_MAX, INT64_MIN, TRUE_VALUES, FieldSpec, RuleSet

_INTEGER_RE = r"^[+-]?[0-9]+$"
_DATE_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_NUMBER_RE = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$|^(NaN|nan|INF|inf|-INF|-inf|\+INF|\+inf)$"


@dataclass
class Tally:
    """Failures of one row-level check: how many and where the first ones were."""

    failures: int = 0
    rows: list[int] = field(default_factory=list)

    def add(self, mask, offset: int) -> None:
        """Count the true values of a boolean ``mask`` (nulls count as false) for a batch at ``offset``."""
        count = pc.sum(mask).as_py() or 0
        if not count:
            return
        self.failures += count
        if len(self.rows) < EXAMPLE_ROWS:
            positions = pc.indices_nonzero(pc.fill_null(mask, False))[: EXAMPLE_ROWS - len(self.rows)]
            self.rows.extend(offset + p + 1 for p in positions.to_pylist())


def check_result(check: str, field: str | None, passed: bool, observed, expected, rows=()) -> dict:
    return {
        "check": check,
        "field": field,
        "passed": passed,
        "observed": observed,
        "expected": expected,
        "rows": list(rows)[:EXAMPLE_ROWS],
    }


# --------------------------------------------------------------------------- type conversion


def _strings(array: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_large_string(array.type) or pa.types.is_string_view(array.type):
        array = array.cast(pa.string())
    return array


def _is_string(array: pa.Array) -> bool:
    return pa.types.is_string(array.type) or pa.types.is_large_string(array.type)


def _guarded(strings: pa.Array, regex: str, target: pa.DataType) -> tuple[pa.Array, pa.Array]:
    ok = pc.fill_null(pc.match_substring_regex(strings, regex), False)
    candidate = pc.if_else(ok, strings, pa.scalar(None, pa.string()))
    try:
        typed = pc.cast(candidate, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        typed = _python_cast(candidate, target)
    bad = pc.and_(pc.is_valid(strings), pc.is_null(typed))
    return typed, bad


def _python_cast(strings: pa.Array, target: pa.DataType) -> pa.Array:
    """Slow path for values the regex let through and Arrow still refused (e.g. integer overflow)."""
    out = []
    for value in strings.to_pylist():
        try:
            if value is None:
                out.append(None)
            elif pa.types.is_date(target):
                out.append(dt.date.fromisoformat(value))
            elif pa.types.is_integer(target):
                number = int(value)
                out.append(number if -(2**63) <= number < 2**63 else None)
            else:
                out.append(float(value))
        except ValueError:
            out.append(None)
    return pa.array(out, type=target)


def _strptime(strings: pa.Array, fmt: str, target: pa.DataType) -> tuple[pa.Array, pa.Array]:
    """Parse with a declared format.  Arrow's strptime rolls impossible dates over (Feb 30 -> Mar 1), so a
    value only counts as good if formatting it again gives back the same text."""
    parsed = pc.strptime(strings, format=fmt, unit="us", error_is_null=True)
    same = pc.fill_null(pc.equal(pc.strftime(parsed, format=fmt), strings), False)
    typed = pc.cast(pc.if_else(same, parsed, pa.scalar(None, parsed.type)), target)
    return typed, pc.and_(pc.is_valid(strings), pc.invert(same))


def _parse_datetimes(strings: pa.Array) -> pa.Array:
    for target in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            return pc.cast(pc.cast(strings, target), pa.timestamp("us"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    out = []
    for value in strings.to_pylist():
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value is not None else None
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
        out.append(parsed)
    return pa.array(out, type=pa.timestamp("us"))


def coerce(array: pa.Array, spec: FieldSpec) -> tuple[pa.Array, pa.Array | None]:
    """Convert a column to ``spec.type``; return the typed values (null where bad) and a mask of bad values.

    The mask is None when every non-null value converted.  A fast whole-array cast is tried first, since
    good files are the common case; only a failing batch pays for the per-value regex.
    """
    array = _strings(array)
    kind = spec.type
    if kind == "string":
        return (array if _is_string(array) else pc.cast(array, pa.string())), None
    if _is_string(array):
        if kind == "integer":
            try:
                return pc.cast(array, pa.int64()), None
            except pa.ArrowInvalid:
                return _guarded(array, _INTEGER_RE, pa.int64())
        if kind == "number":
            try:
                return pc.cast(array, pa.float64()), None
            except pa.ArrowInvalid:
                return _guarded(array, _NUMBER_RE, pa.float64())
        if kind == "boolean":
            true = pc.is_in(array, value_set=pa.array(TRUE_VALUES))
            false = pc.is_in(array, value_set=pa.array(FALSE_VALUES))
            typed = pc.if_else(true, True, pc.if_else(false, False, pa.scalar(None, pa.bool_())))
            return typed, pc.and_(pc.is_valid(array), pc.is_null(typed))
        if kind == "date":
            if spec.format is None:
                try:
                    return pc.cast(array, pa.date32()), None
                except pa.ArrowInvalid:
                    return _guarded(array, _DATE_RE, pa.date32())
            return _strptime(array, spec.format, pa.date32())
        # datetime
        if spec.format is not None:
            return _strptime(array, spec.format, pa.timestamp("us"))
        typed = _parse_datetimes(array)
        return typed, pc.and_(pc.is_valid(array), pc.is_null(typed))
    # Natively typed columns (JSON Lines, Parquet).
    t = array.type
    if kind == "integer":
        if pa.types.is_integer(t):
            try:
                return pc.cast(array, pa.int64()), None
            except pa.ArrowInvalid:  # uint64 above the int64 range
                too_big = pc.fill_null(pc.greater(array, pa.scalar(INT64_MAX, t)), False)
                return pc.cast(pc.if_else(too_big, pa.scalar(None, t), array), pa.int64()), too_big
        if pa.types.is_decimal(t):
            try:
                return pc.cast(array, pa.int64()), None
            except pa.ArrowInvalid:  # a fraction or out of range: sort the values out one by one
                values = array.to_pylist()
                good = [v is not None and v == v.to_integral_value() and INT64_MIN <= v <= INT64_MAX for v in values]
                typed = pa.array([int(v) if ok else None for v, ok in zip(values, good, strict=True)], pa.int64())
                return typed, pa.array([v is not None and not ok for v, ok in zip(values, good, strict=True)])
        if pa.types.is_floating(t):
            as_float = pc.cast(array, pa.float64())
            # Whole and within int64 (NaN and infinities are not; 2**63 is the first float above the range).
            ok = pc.and_(
                pc.equal(pc.floor(as_float), as_float),
                pc.and_(pc.greater_equal(as_float, -(2.0**63)), pc.less(as_float, 2.0**63)),
            )
            ok = pc.fill_null(ok, False)
            typed = pc.cast(pc.if_else(ok, as_float, pa.scalar(None, pa.float64())), pa.int64(), safe=False)
            return typed, pc.and_(pc.is_valid(array), pc.invert(ok))
    elif kind == "number":
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
            # Not a safe cast: an integer above 2**53 is still a number, to the nearest float.
            return pc.cast(array, pa.float64(), safe=False), None
    elif kind == "boolean":
        if pa.types.is_boolean(t):
            return array, None
    elif kind == "date":
        if pa.types.is_date(t):
            return pc.cast(array, pa.date32()), None
    elif kind == "datetime":
        if pa.types.is_timestamp(t):
            return pc.cast(array, pa.timestamp("us", tz=t.tz), safe=False).cast(pa.timestamp("us")), None
        if pa.types.is_date(t):
            return pc.cast(array, pa.timestamp("us")), None
    # A type that cannot hold the declared kind: every present value is wrong.
    return pa.nulls(len(array), _ARROW_TYPES[kind]), pc.is_valid(array)


_ARROW_TYPES = {
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us"),
    "string": pa.string(),
}


def _json_value(value):
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


# --------------------------------------------------------------------------- uniqueness


class UniqueTracker:
    """Finds duplicated keys over the whole file by keeping the key column and hashing it at the end."""

    def __init__(self):
        self._chunks: list[pa.Array] = []

    def add(self, keys: pa.Array) -> None:
        self._chunks.append(keys)

    def finish(self) -> Tally:
        tally = Tally()
        if not self._chunks:
            return tally
        column = pa.chunked_array(self._chunks)
        counts = pc.value_counts(column)
        values, frequencies = counts.field("values"), counts.field("counts")
        repeated = pc.and_(pc.greater(frequencies, 1), pc.is_valid(values))
        duplicates = pc.filter(values, repeated)
        if not len(duplicates):
            return tally
        tally.failures = pc.sum(pc.subtract(pc.filter(frequencies, repeated), 1)).as_py()
        # The example rows are the second and later occurrences, in file order.
        seen: set = set()
        offset = 0
        for chunk in self._chunks:
            hits = pc.indices_nonzero(pc.fill_null(pc.is_in(chunk, value_set=duplicates), False))
            for position in hits.to_pylist():
                value = chunk[position].as_py()
                if value in seen:
                    tally.rows.append(offset + position + 1)
                    if len(tally.rows) == EXAMPLE_ROWS:
                        return tally
                seen.add(value)
            offset += len(chunk)
        return tally


# --------------------------------------------------------------------------- the checker


@dataclass
class _FieldState:
    spec: FieldSpec
    type: Tally = field(default_factory=Tally)
    required: Tally = field(default_factory=Tally)
    minimum: Tally = field(default_factory=Tally)
    maximum: Tally = field(default_factory=Tally)
    pattern: Tally = field(default_factory=Tally)
    enum: Tally = field(default_factory=Tally)
    min_length: Tally = field(default_factory=Tally)
    max_length: Tally = field(default_factory=Tally)
    unique: UniqueTracker | None = None
    lowest: object = None
    highest: object = None


class TableChecker:
    """Feed it every batch of a file in order, then ``finish`` for the list of check results."""

    def __init__(self, rule_set: RuleSet):
        self.rule_set = rule_set
        self.rows = 0
        self._fields = {
            spec.name: _FieldState(spec, unique=UniqueTracker() if spec.unique else None) for spec in rule_set.fields
        }
        self._primary = UniqueTracker() if rule_set.primary_key else None
        self._primary_nulls = Tally()
        self._missing_values = pa.array(list(rule_set.missing_values), type=pa.string())
        self._enums = {
            spec.name: pa.array(list(spec.enum), type=_ARROW_TYPES[spec.type]) for spec in rule_set.fields if spec.enum
        }

    def feed(self, batch: pa.RecordBatch, nulls_normalised: bool = False) -> None:
        offset = self.rows
        n = batch.num_rows
        names = batch.schema.names
        typed_columns: dict[str, pa.Array] = {}
        for name, state in self._fields.items():
            spec = state.spec
            if name in names:
                column = _strings(batch.column(names.index(name)))
                if _is_string(column) and not nulls_normalised and len(self._missing_values):
                    column = pc.if_else(
                        pc.is_in(column, value_set=self._missing_values), pa.scalar(None, column.type), column
                    )
            else:
                column = pa.nulls(n, pa.string())
            typed, bad = coerce(column, spec)
            typed_columns[name] = typed
            if bad is not None:
                state.type.add(bad, offset)
            if spec.required:
                state.required.add(pc.is_null(column), offset)
            # NaN compares false with everything, so it would pass any bound: it fails both instead.
            nan = pc.is_nan(typed) if pa.types.is_floating(typed.type) else None
            if spec.minimum is not None:
                below = pc.less(typed, pa.scalar(spec.minimum, typed.type))
                state.minimum.add(below if nan is None else pc.or_(below, nan), offset)
            if spec.maximum is not None:
                above = pc.greater(typed, pa.scalar(spec.maximum, typed.type))
                state.maximum.add(above if nan is None else pc.or_(above, nan), offset)
            if spec.minimum is not None or spec.maximum is not None:
                self._note_range(state, typed)
            if spec.enum is not None:
                state.enum.add(
                    pc.and_(pc.is_valid(typed), pc.invert(pc.is_in(typed, value_set=self._enums[name]))), offset
                )
            if spec.pattern is not None or spec.min_length is not None or spec.max_length is not None:
                # Pattern and lengths apply to the value's text, as in Frictionless.
                text = column if _is_string(column) else pc.cast(column, pa.string())
                if spec.pattern is not None:
                    matched = pc.match_substring_regex(text, f"^(?:{spec.pattern})$")
                    state.pattern.add(pc.and_(pc.is_valid(text), pc.invert(matched)), offset)
                if spec.min_length is not None or spec.max_length is not None:
                    lengths = pc.utf8_length(text)
                    if spec.min_length is not None:
                        state.min_length.add(pc.less(lengths, spec.min_length), offset)
                    if spec.max_length is not None:
                        state.max_length.add(pc.greater(lengths, spec.max_length), offset)
            if state.unique is not None:
                state.unique.add(typed)
        if self._primary is not None:
            parts = [typed_columns[name] for name in self.rule_set.primary_key]
            if len(parts) == 1:
                key = parts[0]
            else:
                # One hashable column per row; the separator cannot occur in the texts of typed values.
                key = pc.binary_join_element_wise(*[pc.cast(p, pa.string()) for p in parts], "\x1f")
            self._primary_nulls.add(pc.is_null(key), offset)
            self._primary.add(key)
        self.rows += n

    @staticmethod
    def _note_range(state: _FieldState, typed: pa.Array) -> None:
        bounds = pc.min_max(typed)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if low != low:  # NaN: only NaN values (min_max skips NaN otherwise), which are no extreme
            low = high = None
        if low is not None and (state.lowest is None or low < state.lowest):
            state.lowest = low
        if high is not None and (state.highest is None or high > state.highest):
            state.highest = high

    def finish(self, columns: list[str], parse_errors: ParseErrors | None = None) -> list[dict]:
        rs = self.rule_set
        results: list[dict] = []
        declared = [spec.name for spec in rs.fields]
        missing = [name for name in declared if name not in columns]
        extra = [name for name in columns if name not in declared]
        results.append(check_result("fields_present", None, not missing, missing, declared))
        if not rs.allow_extra_fields:
            results.append(check_result("extra_fields", None, not extra, extra, []))
        if parse_errors is not None:
            results.append(
                check_result("parse_errors", None, parse_errors.count == 0, parse_errors.count, 0, parse_errors.lines)
            )
        if rs.min_rows is not None:
            results.append(check_result("min_rows", None, self.rows >= rs.min_rows, self.rows, f">= {rs.min_rows}"))
        if rs.max_rows is not None:
            results.append(check_result("max_rows", None, self.rows <= rs.max_rows, self.rows, f"<= {rs.max_rows}"))
        for name, state in self._fields.items():
            spec = state.spec
            results.append(_row_check("type", name, state.type, spec.type))
            if spec.required:
                results.append(_row_check("required", name, state.required, "no missing values"))
            if spec.unique:
                results.append(_row_check("unique", name, state.unique.finish(), "no duplicate values"))
            if spec.minimum is not None:
                results.append(
                    _range_check(
                        "minimum", name, state.minimum, _json_value(state.lowest), f">= {_json_value(spec.minimum)}"
                    )
                )
            if spec.maximum is not None:
                results.append(
                    _range_check(
                        "maximum", name, state.maximum, _json_value(state.highest), f"<= {_json_value(spec.maximum)}"
                    )
                )
            if spec.pattern is not None:
                results.append(_row_check("pattern", name, state.pattern, spec.pattern))
            if spec.enum is not None:
                results.append(_row_check("enum", name, state.enum, [_json_value(v) for v in spec.enum]))
            if spec.min_length is not None:
                results.append(_row_check("minLength", name, state.min_length, f">= {spec.min_length} characters"))
            if spec.max_length is not None:
                results.append(_row_check("maxLength", name, state.max_length, f"<= {spec.max_length} characters"))
        if self._primary is not None:
            tally = self._primary.finish()
            tally.failures += self._primary_nulls.failures
            tally.rows = sorted(tally.rows + self._primary_nulls.rows)[:EXAMPLE_ROWS]
            results.append(_row_check("primaryKey", ",".join(rs.primary_key), tally, "unique and complete keys"))
        return results


def _row_check(check: str, name: str | None, tally: Tally, expected) -> dict:
    """A row-level check: ``observed`` is the number of failing rows."""
    return check_result(check, name, tally.failures == 0, tally.failures, expected, tally.rows)


def _range_check(check: str, name: str, tally: Tally, extreme, expected) -> dict:
    """A bound check: ``observed`` is the smallest/largest value seen."""
    return check_result(check, name, tally.failures == 0, extreme, expected, tally.rows)
