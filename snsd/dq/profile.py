"""The built-in profile for objects that no rule set matches: what is in the file, not whether it is right."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

# Text columns are tried as these types, narrowest first; a column's type is the narrowest that fits
# every batch.
_ORDER = ("null", "boolean", "integer", "number", "date", "datetime", "string")
_WIDENS = {("integer", "number"): "number", ("number", "integer"): "number"}


def _merge(a: str, b: str) -> str:
    if a == b or b == "null":
        return a
    if a == "null":
        return b
    return _WIDENS.get((a, b), "string")


def _fits(strings: pa.Array, target: pa.DataType) -> bool:
    try:
        pc.cast(strings, target)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def infer_type(array: pa.Array) -> str:
    """A Table Schema type name for one batch of a column."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    t = array.type
    if array.null_count == len(array):
        return "null"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "datetime"
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        return str(t)  # lists, structs, binary: reported by their Arrow name
    values = pc.drop_null(array)
    if pc.all(pc.is_in(values, value_set=pa.array(["true", "false", "True", "False", "TRUE", "FALSE"]))).as_py():
        return "boolean"
    for name, target in (
        ("integer", pa.int64()),
        ("number", pa.float64()),
        ("date", pa.date32()),
        ("datetime", pa.timestamp("us")),
    ):
        if _fits(values, target):
            return name
    return "string"


class Profiler:
    def __init__(self):
        self.rows = 0
        self._nulls: dict[str, int] = {}
        self._types: dict[str, str] = {}

    def feed(self, batch: pa.RecordBatch) -> None:
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            if name not in self._nulls:
                # A column first seen now (JSON Lines) was absent, i.e. null, in the earlier rows.
                self._nulls[name] = self.rows
                self._types[name] = "null"
            self._nulls[name] += column.null_count
            self._types[name] = _merge(self._types[name], infer_type(column))
        for name in self._nulls:
            if name not in batch.schema.names:
                self._nulls[name] += batch.num_rows
        self.rows += batch.num_rows

    def finish(self, columns: list[str]) -> dict:
        return {
            name: {"nulls": self._nulls.get(name, self.rows), "type": self._types.get(name, "null")} for name in columns
        }
