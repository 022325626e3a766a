"""The data-quality job end to end against moto's in-process S3: formats, constraints, verdicts, errors."""

import decimal
import gzip
import io
import json
import socket

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from moto import mock_aws
from twisted.internet.task import Clock

from snsd.breaker import CircuitBreaker, State
from snsd.dq import DataQualityJob, JobError, make_job, parse_rules
from snsd.records import S3ObjectRecord

BUCKET = "landing"
# Small enough that every file below spans several batches, so row numbers must carry across them.
SMALL_BLOCK = 64


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def put(s3, key, body: bytes, **extra) -> S3ObjectRecord:
    response = s3.put_object(Bucket=BUCKET, Key=key, Body=body, **extra)
    return S3ObjectRecord(bucket=BUCKET, key=key, version_id=response.get("VersionId"), size=len(body))


def job_for(rules_yaml: str | None, block_size: int = SMALL_BLOCK) -> DataQualityJob:
    book = parse_rules(rules_yaml, "test.yaml") if rules_yaml else None
    return DataQualityJob(book, block_size=block_size)


def check(result: dict, name: str, field: str | None = None) -> dict:
    found = [c for c in result["checks"] if c["check"] == name and c["field"] == field]
    assert len(found) == 1, f"expected one {name}/{field} check in {result['checks']}"
    return found[0]


# --------------------------------------------------------------------------- formats

PEOPLE_RULES = """
- name: people
  schema:
    fields:
      - {name: id, type: integer, constraints: {required: true, unique: true}}
      - {name: age, type: integer, constraints: {minimum: 0, maximum: 130}}
"""
PEOPLE = [{"id": i, "age": 20 + i} for i in range(1, 13)]
PEOPLE[6]["age"] = 200  # row 7
PEOPLE[10]["id"] = 3  # row 11 repeats row 3's id


def people_csv(sep=","):
    lines = [f"id{sep}age"] + [f"{p['id']}{sep}{p['age']}" for p in PEOPLE]
    return ("\n".join(lines) + "\n").encode()


def people_jsonl():
    return "".join(json.dumps(p) + "\n" for p in PEOPLE).encode()


def people_parquet():
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(PEOPLE), out, row_group_size=5)
    return out.getvalue()


@pytest.mark.parametrize(
    "key, body, fmt",
    [
        ("p.csv", people_csv(), "csv"),
        ("p.tsv", people_csv("\t"), "tsv"),
        ("p.jsonl", people_jsonl(), "jsonl"),
        ("p.ndjson", people_jsonl(), "jsonl"),
        ("p.parquet", people_parquet(), "parquet"),
        ("p.csv.gz", gzip.compress(people_csv()), "csv.gz"),
        ("p.tsv.gz", gzip.compress(people_csv("\t")), "tsv.gz"),
        ("p.jsonl.gz", gzip.compress(people_jsonl()), "jsonl.gz"),
        ("p.ndjson.gz", gzip.compress(people_jsonl()), "jsonl.gz"),
    ],
)
def test_every_format_reports_the_same_failures_at_the_same_rows(s3, key, body, fmt):
    result = job_for(PEOPLE_RULES)(put(s3, key, body))
    assert result["format"] == fmt
    assert result["verdict"] == "failed"
    assert result["rule_set"] == "people"
    assert result["rows"] == 12
    assert result["bytes"] == len(body)
    assert result["column_names"] == ["id", "age"] and result["columns"] == 2
    assert check(result, "maximum", "age") == {
        "check": "maximum",
        "field": "age",
        "passed": False,
        "observed": 200,
        "expected": "<= 130",
        "rows": [7],
    }
    assert check(result, "unique", "id")["rows"] == [11]
    assert check(result, "minimum", "age")["passed"] is True
    assert check(result, "type", "id")["passed"] is True
    json.dumps(result)


@pytest.mark.parametrize(
    "content_type, encoding, fmt, body",
    [
        ("text/csv", None, "csv", people_csv()),
        ("text/tab-separated-values; charset=utf-8", None, "tsv", people_csv("\t")),
        ("application/x-ndjson", None, "jsonl", people_jsonl()),
        ("application/vnd.apache.parquet", None, "parquet", people_parquet()),
        ("text/csv", "gzip", "csv.gz", gzip.compress(people_csv())),
    ],
)
def test_content_type_decides_when_the_key_has_no_known_suffix(s3, content_type, encoding, fmt, body):
    extra = {"ContentType": content_type}
    if encoding:
        extra["ContentEncoding"] = encoding
    result = job_for(PEOPLE_RULES)(put(s3, "drop/people", body, **extra))
    assert (result["format"], result["rows"], check(result, "maximum", "age")["rows"]) == (fmt, 12, [7])


@pytest.mark.parametrize(
    "key, extra, fmt",
    [
        ("people.csv", {"ContentEncoding": "gzip"}, "csv.gz"),
        ("people.jsonl", {"ContentEncoding": "gzip", "ContentType": "application/x-ndjson"}, "jsonl.gz"),
        ("people.csv", {"ContentType": "application/gzip"}, "csv.gz"),
        ("people.csv.gz", {"ContentType": "application/x-gzip", "ContentEncoding": "gzip"}, "csv.gz"),
        ("drop/people", {"ContentType": "text/csv", "ContentEncoding": "x-gzip"}, "csv.gz"),
    ],
)
def test_gzip_content_encoding_or_type_means_compressed_whatever_the_key(s3, key, extra, fmt):
    body = gzip.compress(people_jsonl() if "jsonl" in key else people_csv())
    result = job_for(PEOPLE_RULES)(put(s3, key, body, **extra))
    assert (result["format"], result["rows"], check(result, "maximum", "age")["rows"]) == (fmt, 12, [7])


def test_gzip_without_a_known_format_inside_is_unsupported(s3):
    body = gzip.compress(people_csv())
    cases = [("drop/people", {"ContentType": "application/gzip"}), ("p.parquet", {"ContentEncoding": "gzip"})]
    for key, extra in cases:
        assert job_for(PEOPLE_RULES)(put(s3, key, body, **extra))["verdict"] == "unsupported"


def test_other_objects_are_unsupported_not_errors(s3):
    result = job_for(PEOPLE_RULES)(put(s3, "pic.png", b"\x89PNG...", ContentType="image/png"))
    assert result["verdict"] == "unsupported"
    assert result["format"] is None and result["checks"] == []


# --------------------------------------------------------------------------- constraints


def one_column_rules(type_: str, constraints: dict) -> str:
    field = {"name": "v", "type": type_, "constraints": constraints}
    return json.dumps([{"name": "one", "schema": {"fields": [field]}}])


@pytest.mark.parametrize(
    "type_, constraints, values, check_name, failing_rows",
    [
        ("integer", {}, ["1", "2", "x", "4", "5.5", "6", "7", "8", "9", "-10", "+11", "12a"], "type", [3, 5, 12]),
        ("number", {}, ["1", "2.5", "1e3", "abc", "-0.5", ".5", "NaN", "1.2.3"], "type", [4, 8]),
        ("boolean", {}, ["true", "false", "1", "0", "yes", "TRUE", "False", "no"], "type", [5, 8]),
        ("date", {}, ["2024-01-01", "2024-02-30", "2024-12-31", "01/02/2024", "2024-1-1x"], "type", [2, 4, 5]),
        (
            "datetime",
            {},
            ["2024-01-01T10:00:00", "2024-01-01T10:00:00Z", "2024-01-01 10:00", "soon", "2024-01-01T10:00:00+02:00"],
            "type",
            [4],
        ),
        ("string", {"required": True}, ["a", "", "c", "d", "", "f", "g", "h", "i"], "required", [2, 5]),
        ("integer", {"unique": True}, ["1", "2", "3", "1", "5", "2", "7", "1", "9"], "unique", [4, 6, 8]),
        ("integer", {"minimum": 10}, ["10", "11", "9", "100", "-5", "", "x"], "minimum", [3, 5]),
        ("number", {"maximum": 1.5}, ["1.5", "1.6", "0", "2", "-3"], "maximum", [2, 4]),
        ("date", {"minimum": "2024-01-01"}, ["2024-01-01", "2023-12-31", "2025-01-01"], "minimum", [2]),
        (
            "datetime",
            {"maximum": "2024-01-01T00:00:00Z"},
            ["2023-12-31T23:59:59", "2024-01-01T01:00:00+02:00", "2024-01-01T00:00:01"],
            "maximum",
            [3],
        ),
        ("string", {"pattern": "[A-Z]{2}[0-9]+"}, ["AB1", "ab1", "AB", "XY99", "AB1x", "ZZ0"], "pattern", [2, 3, 5]),
        ("string", {"enum": ["red", "green"]}, ["red", "blue", "green", "Red", "", "green"], "enum", [2, 4]),
        ("integer", {"enum": [1, 2]}, ["1", "2", "3", "01"], "enum", [3]),
        ("string", {"minLength": 2}, ["ab", "a", "abc", "", "é"], "minLength", [2, 5]),
        ("string", {"maxLength": 3}, ["abc", "abcd", "ééé", "ééééé"], "maxLength", [2, 4]),
    ],
)
def test_each_constraint_fails_at_the_right_rows(s3, type_, constraints, values, check_name, failing_rows):
    # A row number column keeps empty values from being blank lines, which CSV readers skip.
    body = ("n,v\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values, 1))).encode()
    result = job_for(one_column_rules(type_, constraints), block_size=48)(put(s3, "one.csv", body))
    found = check(result, check_name, "v")
    assert found["passed"] is False
    assert found["rows"] == failing_rows
    assert result["verdict"] == "failed"
    # The same column with only the good values passes the check.
    good = [v for i, v in enumerate(values, 1) if i not in failing_rows and (v or check_name != "required")]
    body = ("n,v\n" + "".join(f"{i},{v}\n" for i, v in enumerate(good, 1))).encode()
    result = job_for(one_column_rules(type_, constraints), block_size=48)(put(s3, "good.csv", body))
    assert check(result, check_name, "v")["passed"] is True, result["checks"]


def parquet_of(**columns) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.table(columns), out)
    return out.getvalue()


@pytest.mark.parametrize(
    "column, bad_rows, lowest",
    [
        (pa.array([2**63 + 5, 7, None], pa.uint64()), [1], 7),  # above int64: does not wrap round
        (pa.array([float("inf"), 1e30, float("nan"), 3.0, -(2.0**63), 2.0**63]), [1, 2, 3, 6], -(2**63)),
        (
            pa.array([decimal.Decimal("1.5"), decimal.Decimal("4"), decimal.Decimal(2**63)], pa.decimal128(38, 1)),
            [1, 3],
            4,
        ),
    ],
)
def test_native_values_outside_int64_or_not_whole_are_bad_integers(s3, column, bad_rows, lowest):
    rules = one_column_rules("integer", {"minimum": -(2**63)})
    result = job_for(rules)(put(s3, "n.parquet", parquet_of(v=column)))
    assert (check(result, "type", "v")["rows"], check(result, "minimum", "v")["observed"]) == (bad_rows, lowest)


def test_nan_fails_both_bounds_of_a_number_and_big_integers_are_numbers(s3):
    rules = one_column_rules("number", {"minimum": 0, "maximum": 10})
    result = job_for(rules)(put(s3, "nan.csv", b"v\n1\nnan\n2\n"))
    assert (check(result, "minimum", "v")["rows"], check(result, "maximum", "v")["rows"]) == ([2], [2])
    assert (check(result, "minimum", "v")["observed"], check(result, "maximum", "v")["observed"]) == (1.0, 2.0)
    result = job_for(rules)(put(s3, "nan-only.csv", b"v\nNaN\n"))
    assert check(result, "minimum", "v")["observed"] is None and check(result, "minimum", "v")["passed"] is False
    result = job_for(rules)(put(s3, "big.parquet", parquet_of(v=pa.array([2**53 + 1, 5], pa.int64()))))
    assert check(result, "type", "v")["passed"] is True and check(result, "maximum", "v")["rows"] == [1]


def test_only_the_first_five_failing_rows_are_listed_but_all_are_counted(s3):
    body = ("v\n" + "\n".join(["x"] * 40) + "\n").encode()
    result = job_for(one_column_rules("integer", {}), block_size=16)(put(s3, "many.csv", body))
    assert check(result, "type", "v")["rows"] == [1, 2, 3, 4, 5]
    assert check(result, "type", "v")["observed"] == 40


def test_row_numbers_carry_across_many_csv_blocks(s3):
    values = [str(i) for i in range(1, 2001)]
    values[1499] = "oops"
    body = ("v\n" + "\n".join(values) + "\n").encode()
    result = job_for(one_column_rules("integer", {}), block_size=256)(put(s3, "long.csv", body))
    assert result["rows"] == 2000
    assert check(result, "type", "v")["rows"] == [1500]


def test_composite_primary_key_and_table_checks(s3):
    rules = """
- name: t
  key: t.csv
  min_rows: 5
  allow_extra_fields: false
  schema:
    primaryKey: [a, b]
    fields: [{name: a, type: integer}, {name: b}, {name: c}]
- name: u
  key: u.csv
  max_rows: 3
  schema:
    fields: [{name: a, type: integer}]
"""
    body = b"a,b,extra\n1,x,.\n1,y,.\n1,x,.\n,y,.\n"
    result = job_for(rules)(put(s3, "t.csv", body))
    assert check(result, "primaryKey", "a,b")["rows"] == [3, 4]
    assert check(result, "min_rows") | {} == {
        "check": "min_rows",
        "field": None,
        "passed": False,
        "observed": 4,
        "expected": ">= 5",
        "rows": [],
    }
    assert check(result, "extra_fields")["observed"] == ["extra"]
    assert check(result, "fields_present")["observed"] == ["c"]
    result = job_for(rules)(put(s3, "u.csv", b"a\n1\n2\n3\n4\n"))
    assert (check(result, "max_rows")["passed"], check(result, "max_rows")["observed"]) == (False, 4)
    assert [c["check"] for c in result["checks"]].count("extra_fields") == 0


def test_a_file_that_passes_every_check_has_verdict_passed(s3):
    body = b"id,age\n1,30\n2,40\n"
    result = job_for(PEOPLE_RULES)(put(s3, "ok.csv", body))
    assert result["verdict"] == "passed"
    assert all(c["passed"] for c in result["checks"])
    assert result["duration_ms"] >= 0


def test_malformed_csv_rows_are_a_failed_check_with_their_line(s3):
    body = b"id,age\n1,30\n2,40,extra\n3,50\n"
    result = job_for(PEOPLE_RULES)(put(s3, "bad.csv", body))
    assert check(result, "parse_errors") | {} == {
        "check": "parse_errors",
        "field": None,
        "passed": False,
        "observed": 1,
        "expected": 0,
        "rows": [3],
    }
    assert result["rows"] == 2


def test_quoted_line_breaks_are_read_in_every_block_and_bad_rows_get_their_record_number(s3):
    rules = """
- name: notes
  schema:
    fields: [{name: id, type: integer, constraints: {maximum: 100}}, {name: note}]
"""
    records = [f'{i},"line one\nline two {i}"\n' for i in range(1, 41)]
    records[29] = "30,too,many\n"  # record 31 of the file (the header is record 1), physical line 60
    records[34] = '500,"x\r\ny"\n'  # data row 34: the bad row before it is not a data row
    body = ("id,note\n" + "".join(records)).encode()
    assert len(body) > 10 * SMALL_BLOCK
    result = job_for(rules)(put(s3, "notes.csv", body))
    assert result["rows"] == 39
    assert check(result, "parse_errors")["rows"] == [31]
    assert check(result, "maximum", "id")["rows"] == [34]
    assert check(result, "type", "id")["passed"] is True


def test_broken_json_lines_are_reported_and_good_lines_still_checked(s3):
    body = b'{"id": 1, "age": 30}\n{"id": 2, "age": \n{"id": "two", "age": 999}\n'
    result = job_for(PEOPLE_RULES)(put(s3, "bad.jsonl", body))
    assert check(result, "parse_errors")["rows"] == [2]
    assert check(result, "type", "id")["rows"] == [2]
    assert check(result, "maximum", "age")["rows"] == [2]


@pytest.mark.parametrize(
    "body, missing, column_names",
    [
        (b'{"id": 1}\n{"id": 2}\n', ["age"], ["id"]),  # every line parses with the declared types
        (b'{"id": 1}\nnot json\n', ["age"], ["id"]),  # a broken line: parsed line by line
        (b'{"id": 1, "x": {"age": 3}}\n', ["age"], ["id", "x"]),  # a nested key is not a field
        (b'{"id": 1, "age": null}\n{"id": 2}\n', [], ["id", "age"]),  # present, if only as null
        (b'{"id": 1}\n' * 20 + b'{"id": 2, "age": null}\n', [], ["id", "age"]),  # only in a later chunk
        (b'{"id": 1, "name": "Ren\\u00e9e"}\n' * 20, ["age"], ["id", "name"]),  # escapes in values cost nothing
    ],
)
def test_json_lines_fields_are_present_only_if_a_line_has_the_key(s3, body, missing, column_names):
    result = job_for(PEOPLE_RULES)(put(s3, "partial.jsonl", body))
    assert check(result, "fields_present")["observed"] == missing
    assert check(result, "fields_present")["passed"] is (not missing)
    assert result["column_names"] == column_names


def test_json_lines_rows_without_keys_are_still_rows(s3):
    result = job_for(PEOPLE_RULES)(put(s3, "empty-objects.jsonl", b"{}\n{}\nnot json\n"))
    assert result["rows"] == 2
    assert check(result, "required", "id")["passed"] is False


def test_json_lines_key_written_with_json_dumps_escapes_is_present(s3):
    rules = "- name: cafes\n  schema:\n    fields: [{name: id}, {name: café}]\n"
    body = "".join(json.dumps({"id": i, "café": "x"}) + "\n" for i in range(30)).encode()  # "caf\\u00e9"
    assert b"\\u00e9" in body
    result = job_for(rules)(put(s3, "cafes.jsonl", body))
    assert check(result, "fields_present")["passed"] is True


# --------------------------------------------------------------------------- profile for unmatched objects


def test_unmatched_objects_get_a_profile_and_pass(s3):
    body = b"a,b,c\n1,x,2024-01-01\n2,,2024-01-02\n3.5,z,\n"
    result = job_for(None)(put(s3, "anything.csv", body))
    assert result["verdict"] == "passed" and result["rule_set"] is None
    assert result["profile"] == {
        "a": {"nulls": 0, "type": "number"},
        "b": {"nulls": 1, "type": "string"},
        "c": {"nulls": 1, "type": "date"},
    }
    assert result["rows"] == 3


def test_an_empty_unmatched_object_fails_its_profile(s3):
    assert job_for(None)(put(s3, "empty.csv", b""))["verdict"] == "failed"
    assert job_for(None)(put(s3, "header-only.csv", b"a,b\n"))["verdict"] == "failed"


def test_an_unparsable_json_lines_object_fails_its_profile(s3):
    result = job_for(None)(put(s3, "junk.jsonl", b"not json\nnor this\n"))
    assert result["verdict"] == "failed"
    assert result["parse_errors"] == {"count": 2, "lines": [1, 2]}


# --------------------------------------------------------------------------- errors and versions


def test_a_missing_object_raises_s3_not_found(s3):
    with pytest.raises(JobError) as excinfo:
        job_for(PEOPLE_RULES)(S3ObjectRecord(bucket=BUCKET, key="gone.csv"))
    assert excinfo.value.kind == "s3_not_found"
    assert "gone.csv" in excinfo.value.message


def test_a_missing_bucket_raises_s3_not_found(s3):
    with pytest.raises(JobError) as excinfo:
        job_for(None)(S3ObjectRecord(bucket="no-such-bucket", key="a.csv"))
    assert excinfo.value.kind == "s3_not_found"


@pytest.mark.parametrize(
    "key, body",
    [("bad.csv.gz", b"this is not gzip"), ("bad.parquet", b"PAR1 not really"), ("bad.csv", b"v\n\xff\xfe\n")],
)
def test_undecodable_data_raises_unreadable(s3, key, body):
    with pytest.raises(JobError) as excinfo:
        job_for(one_column_rules("string", {}))(put(s3, key, body))
    assert excinfo.value.kind == "unreadable"


def test_the_event_version_is_the_one_read(s3):
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    first = put(s3, "v.csv", b"id,age\n1,30\n")
    put(s3, "v.csv", b"id,age\n1,30\n2,40\n3,50\n")
    assert first.version_id
    assert job_for(PEOPLE_RULES)(first)["rows"] == 1


def test_an_unreachable_endpoint_raises_s3_connection(s3):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1})

    def factory():
        return boto3.session.Session().client("s3", endpoint_url=f"http://127.0.0.1:{port}", config=config)

    with pytest.raises(JobError) as excinfo:
        DataQualityJob(None, s3_client_factory=factory)(S3ObjectRecord(bucket=BUCKET, key="a.csv"))
    assert excinfo.value.kind == "s3_connection"


def test_make_job_loads_the_rules_file(tmp_path, s3):
    path = tmp_path / "rules.yaml"
    path.write_text(PEOPLE_RULES)
    job = make_job(str(path))
    assert job(put(s3, "x.csv", b"id,age\n1,2\n"))["rule_set"] == "people"
    assert make_job(None).rulebook.rule_sets == ()


def test_failed_verdicts_leave_the_breaker_closed_but_s3_errors_open_it(s3):
    """The daemon's contract: a job that returns counts as a success, one that raises as a failure."""
    breaker = CircuitBreaker(Clock(), max_failures=2, cooldown=10)
    job = job_for(PEOPLE_RULES)
    bad_file = put(s3, "bad.csv", b"id,age\n1,500\n1,600\n")

    def run(record):
        permit = breaker.acquire()
        try:
            result = job(record)
        except JobError:
            breaker.failed(permit)
            return None
        breaker.succeeded(permit)
        return result

    for _ in range(3):
        assert run(bad_file)["verdict"] == "failed"
    assert breaker.state is State.CLOSED
    for _ in range(2):
        assert run(S3ObjectRecord(bucket=BUCKET, key="missing.csv")) is None
    assert breaker.state is State.OPEN
