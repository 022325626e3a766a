"""Recognise an object's format and read it as a stream of Arrow record batches.

Every reader is streaming: CSV/TSV go through pyarrow's incremental CSV reader, JSON Lines are cut into
line-aligned chunks of a few MB, Parquet (which needs random access for its footer) is spooled to a
temporary file that only stays in memory while small.  So memory is bounded by the block size and the
readers' read-ahead, not by the object's size.

Parsing and value conversion run in Arrow's C++ code with the GIL released; that is what lets several
jobs share the daemon's thread pool.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from snsd.dq.rules import RuleSet

# Arrow's CSV reader keeps a few dozen blocks in flight (measured: peak RSS grows ~40x the block size,
# independent of the file's size); 1 MiB blocks were also the fastest measured, so small blocks cost nothing.
DEFAULT_BLOCK_SIZE = 1 << 20
# JSON Lines chunks: each is parsed by one read_json call; a few MB amortises the call.
DEFAULT_JSON_CHUNK = 4 << 20
# A JSON Lines line may span this many chunks; a longer one makes the object unreadable (bounded memory).
JSON_LINE_CHUNKS = 4
PARQUET_SPOOL_MEMORY = 32 << 20
PARQUET_BATCH_ROWS = 65536
EXAMPLE_ROWS = 5

_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
_CONTENT_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "text/tab-separated-values": "tsv",
    "application/x-ndjson": "jsonl",
    "application/ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/x-jsonlines": "jsonl",
    "application/jsonlines": "jsonl",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/parquet": "parquet",
}
_GZIP_TYPES = {"application/gzip", "application/x-gzip"}


class UnreadableError(Exception):
    """The bytes are not the format they claim to be (bad gzip, not Parquet, broken encoding...)."""


@dataclass(frozen=True)
class Format:
    kind: str  # csv | tsv | jsonl | parquet
    compression: str | None = None  # gzip

    @property
    def name(self) -> str:
        return f"{self.kind}.gz" if self.compression else self.kind


def detect_format(key: str, content_type: str | None = None, content_encoding: str | None = None) -> Format | None:
    """The format by key suffix, else by Content-Type; None means unsupported.

    The object is gzip-compressed if its key ends in ``.gz``, its ``Content-Encoding`` is gzip (S3 returns the
    stored bytes as they are) or its Content-Type is a gzip type; the format inside then comes from the key.
    """
    lower = key.lower()
    media = (content_type or "").split(";")[0].strip().lower()
    encodings = {token.strip() for token in (content_encoding or "").lower().split(",")}
    compression = "gzip" if encodings & {"gzip", "x-gzip"} or media in _GZIP_TYPES else None
    if lower.endswith(".gz"):
        compression = "gzip"
        lower = lower[:-3]
    kind = next((kind for suffix, kind in _SUFFIXES.items() if lower.endswith(suffix)), _CONTENT_TYPES.get(media))
    if kind is None:
        return None
    if compression and kind == "parquet":
        return None  # Parquet compresses internally; a gzipped Parquet file cannot be read by row group.
    return Format(kind, compression)


class CountingReader(io.RawIOBase):
    """A raw stream over anything with ``read(n)`` (a boto3 StreamingBody) that counts the bytes read."""

    def __init__(self, body):
        self._body = body
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._body.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.bytes_read += n
        return n


@dataclass
class ParseErrors:
    """Rows the parser could not make sense of; ``lines`` locate them in the (decompressed) file: physical line
    numbers for JSON Lines, record numbers for CSV/TSV (the header is record 1; a record is one line unless a
    quoted value holds line breaks, and blank lines are not records)."""

    count: int = 0
    lines: list[int] = field(default_factory=list)

    def add(self, line: int | None) -> None:
        self.count += 1
        if line is not None and len(self.lines) < EXAMPLE_ROWS:
            self.lines.append(line)


class BatchSource:
    """An open object: ``columns`` (names in file order) and ``batches()`` (an iterator of RecordBatch)."""

    columns: list[str]
    parse_errors: ParseErrors
    # True when the reader already turned the rule set's missing values into nulls.
    nulls_normalised: bool = False

    def __init__(self, raw: CountingReader):
        self._raw = raw
        self.parse_errors = ParseErrors()
        self.columns = []

    @property
    def bytes_read(self) -> int:
        return self._raw.bytes_read

    def batches(self) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError


def open_source(fmt: Format, body, rule_set: RuleSet | None = None, block_size: int | None = None) -> BatchSource:
    """Open ``body`` (anything with ``read(n)``) as ``fmt``; ``block_size`` overrides the read sizes (tests)."""
    raw = CountingReader(body)
    try:
        if fmt.kind in ("csv", "tsv"):
            return _CsvSource(raw, fmt, rule_set, block_size or DEFAULT_BLOCK_SIZE)
        if fmt.kind == "jsonl":
            return _JsonLinesSource(raw, fmt, rule_set, block_size or DEFAULT_JSON_CHUNK)
        return _ParquetSource(raw)
    except (pa.ArrowException, OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as e:
        raise UnreadableError(f"cannot open {fmt.name}: {e}") from e


def _text_stream(raw: CountingReader, fmt: Format, buffer_size: int):
    stream = io.BufferedReader(raw, buffer_size=1 << 20)
    if fmt.compression == "gzip":
        # zlib releases the GIL while inflating; the gzip module adds little on top at MB-sized reads.
        stream = io.BufferedReader(gzip.GzipFile(fileobj=stream, mode="rb"), buffer_size=buffer_size)
    return stream


class _CsvSource(BatchSource):
    def __init__(self, raw: CountingReader, fmt: Format, rule_set: RuleSet | None, block_size: int):
        super().__init__(raw)
        delimiter = "\t" if fmt.kind == "tsv" else ","
        self._stream = _text_stream(raw, fmt, block_size)
        # use_threads=False: measured faster for a single stream (the parse is serial anyway) and it makes
        # Arrow report line numbers of invalid rows.
        # Read the header ourselves so every column can be declared a string: Arrow's type inference
        # looks at the first block only and would fail on a later bad value with an exception instead of
        # a failed check with row numbers.  (A header with a quoted newline is not supported.)  Like any row,
        # the header must fit in a block: a longer one (or a file without line breaks) is unreadable rather
        # than read into memory whole.  Blank lines before it are skipped, as Arrow skips them after it.
        header = self._read_header_line(block_size)
        if header.startswith(codecs.BOM_UTF8):
            header = header[len(codecs.BOM_UTF8) :]
        while header and not header.strip():
            header = self._read_header_line(block_size)
        self._empty = not header.strip()
        if self._empty:
            return
        self.columns = next(csv.reader([header.decode("utf-8")], delimiter=delimiter))
        # Arrow refuses a stream with nothing after the header; that is just a file with no rows.
        self._empty = not self._stream.peek(1)
        if self._empty:
            return
        missing = list(rule_set.missing_values) if rule_set else [""]
        self.nulls_normalised = True
        self._reader = pacsv.open_csv(
            self._stream,
            read_options=pacsv.ReadOptions(column_names=self.columns, block_size=block_size, use_threads=False),
            # newlines_in_values: a quoted value may hold line breaks anywhere in the file, not only in its
            # first block (without it Arrow's chunker cuts such a row in two and the read fails).
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, newlines_in_values=True, invalid_row_handler=self._invalid_row
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in self.columns},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                null_values=missing,
            ),
        )

    def _read_header_line(self, limit: int) -> bytes:
        line = self._stream.readline(limit + 1)
        if len(line) > limit and not line.endswith(b"\n"):
            raise UnreadableError(f"the CSV header is longer than the block size ({limit} bytes)")
        return line

    def _invalid_row(self, row) -> str:
        # Arrow numbers CSV records (not physical lines: a quoted line break does not start a record and a
        # blank line is not one) from 1, the record after our header; the header is record 1 for us.
        number = row.number if row.number is not None and row.number >= 0 else None
        self.parse_errors.add(number + 1 if number is not None else None)
        return "skip"

    def batches(self) -> Iterator[pa.RecordBatch]:
        if self._empty:
            return
        try:
            yield from self._reader
        except (pa.ArrowInvalid, OSError, EOFError, zlib.error) as e:
            raise UnreadableError(f"cannot read CSV: {e}") from e


class _JsonLinesSource(BatchSource):
    def __init__(self, raw: CountingReader, fmt: Format, rule_set: RuleSet | None, block_size: int):
        super().__init__(raw)
        self._stream = _text_stream(raw, fmt, block_size)
        self._block_size = block_size
        self._line = 0  # physical lines consumed so far
        self._seen: dict[str, None] = {}
        # The declared types let Arrow parse numbers straight to int64/float64.  Dates stay strings: the
        # checks parse them, so a bad value is a failed row, not a failed chunk.
        types = {"integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}
        self._schema = None
        if rule_set is not None:
            self._schema = pa.schema([(f.name, types.get(f.type, pa.string())) for f in rule_set.fields])

    def batches(self) -> Iterator[pa.RecordBatch]:
        rest = bytearray()  # the start of a line that has not ended yet
        limit = JSON_LINE_CHUNKS * self._block_size
        while True:
            try:
                data = self._stream.read(self._block_size)
            except (OSError, EOFError, zlib.error) as e:
                raise UnreadableError(f"cannot read JSON Lines: {e}") from e
            if not data:
                chunk = bytes(rest)
            else:
                cut = data.rfind(b"\n")
                if cut < 0:  # one line longer than the block: keep reading, up to a limit
                    rest += data
                    if len(rest) > limit:
                        raise UnreadableError(f"a JSON Lines line is longer than {limit} bytes")
                    continue
                rest += data[: cut + 1]
                chunk, rest = bytes(rest), bytearray(data[cut + 1 :])
            if chunk.strip():
                yield from self._parse(chunk)
            elif chunk:
                self._line += chunk.count(b"\n")
            if not data:
                return

    def _parse(self, chunk: bytes) -> Iterator[pa.RecordBatch]:
        lines = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
        try:
            options = pajson.ParseOptions(explicit_schema=self._schema, unexpected_field_behavior="infer")
            table = pajson.read_json(
                io.BytesIO(chunk), read_options=pajson.ReadOptions(block_size=len(chunk) + 1), parse_options=options
            )
        except pa.ArrowInvalid:
            # Mixed types or a broken line somewhere in the chunk: parse it line by line so good rows are
            # still checked and the bad ones are reported by line number.
            table = self._parse_slowly(chunk)
        else:
            self._line += lines
            self._note_columns(self._present(table, chunk))
        yield from table.to_batches()

    def _parse_slowly(self, chunk: bytes) -> pa.Table:
        rows: list[dict] = []
        for raw_line in chunk.split(b"\n"):
            if not raw_line.strip():
                self._line += 1
                continue
            self._line += 1
            try:
                value = json.loads(raw_line)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                self.parse_errors.add(self._line)
                continue
            rows.append(value)
        if chunk.endswith(b"\n"):
            self._line -= 1  # split() yields one empty piece after the final newline
        # Only the keys the rows have: a declared field no row has is missing, and the checks treat it as null.
        names = list(dict.fromkeys(k for r in rows for k in r))
        self._note_columns(names)
        # Everything as its lexical form: the checks convert strings to the declared types row by row.
        columns = {name: pa.array([_lexical(r.get(name)) for r in rows], type=pa.string()) for name in names}
        if not columns:  # rows without keys ({}) still count: a table of no columns keeps its rows this way
            return pa.table({"_": pa.nulls(len(rows), pa.string())}).drop_columns(["_"])
        return pa.table(columns)

    def _present(self, table: pa.Table, chunk: bytes) -> list[str]:
        """The table's columns that some row of ``chunk`` has as a key.  With an explicit schema Arrow adds
        every declared column, as nulls where the key is absent; an all-null declared column is only
        present if some row has the key (with a null value)."""
        declared = set(self._schema.names) if self._schema is not None else set()
        return [
            name
            for name in table.column_names
            if name in self._seen
            or name not in declared
            or table.column(name).null_count < table.num_rows
            or _has_key(chunk, name)
        ]

    def _note_columns(self, names: list[str]) -> None:
        for name in names:
            self._seen.setdefault(name, None)
        self.columns = list(self._seen)


def _has_key(chunk: bytes, name: str) -> bool:
    """Whether some JSON object line of ``chunk`` has the top-level key ``name``.

    Only lines where the key's text stands before a colon are decoded (a nested object's key looks
    the same), each once; an absent key costs one search of the chunk.  The key is looked for as
    UTF-8 and as json.dumps writes it by default (non-ASCII as \\u escapes); other spellings with
    escapes are not recognised: decoding every line with an escape (common in values) made such
    files 20 times slower to check."""
    spellings = {json.dumps(name, ensure_ascii=False).encode(), json.dumps(name).encode()}
    key = re.compile(b"(?:" + b"|".join(re.escape(s) for s in spellings) + rb")\s*:")
    decoded_to = -1
    for match in key.finditer(chunk):
        if match.start() < decoded_to:
            continue  # on a line already decoded
        start = chunk.rfind(b"\n", 0, match.start()) + 1
        end = chunk.find(b"\n", match.end())
        decoded_to = len(chunk) if end == -1 else end
        try:
            value = json.loads(chunk[start:decoded_to])
        except ValueError:
            continue
        if isinstance(value, dict) and name in value:
            return True
    return False


def _lexical(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


class _ParquetSource(BatchSource):
    def __init__(self, raw: CountingReader):
        super().__init__(raw)
        # Parquet's footer is at the end, so it needs random access: spool to a file that stays in memory
        # only while small.
        self._spool = tempfile.SpooledTemporaryFile(max_size=PARQUET_SPOOL_MEMORY)
        shutil.copyfileobj(raw, self._spool, 1 << 20)
        self._spool.seek(0)
        self._file = pq.ParquetFile(self._spool)
        self.columns = list(self._file.schema_arrow.names)

    def batches(self) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._file.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        except (pa.ArrowException, OSError) as e:
            raise UnreadableError(f"cannot read Parquet: {e}") from e
        finally:
            self._spool.close()
