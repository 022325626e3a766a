"""The rules file: loading, strict validation and first-match-wins matching."""

import datetime as dt
import io
import json

import pytest

from snsd.dq.job import DataQualityJob
from snsd.dq.rules import RulesError, load_rules, parse_rules
from snsd.records import S3ObjectRecord

GOOD = """
- name: orders
  bucket: "landing-*"
  key: "incoming/*.csv"
  min_rows: 1
  max_rows: 10
  allow_extra_fields: false
  schema:
    primaryKey: [id]
    fields:
      - name: id
        type: integer
        constraints: {required: true, unique: true, minimum: 1, maximum: 99}
      - name: day
        type: date
        constraints: {minimum: "2024-01-01"}
      - name: status
        type: string
        constraints: {enum: [A, B], pattern: "[AB]", minLength: 1, maxLength: 1}
- name: catch-all-csv
  key: "*.csv"
  schema:
    fields: [{name: id}]
"""


def test_yaml_rules_load_into_frozen_values(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    book = load_rules(path)
    orders = book.rule_sets[0]
    assert [rs.name for rs in book.rule_sets] == ["orders", "catch-all-csv"]
    assert orders.primary_key == ("id",)
    assert orders.field("day").minimum == dt.date(2024, 1, 1)
    assert orders.field("status").enum == ("A", "B")
    assert (orders.min_rows, orders.max_rows, orders.allow_extra_fields) == (1, 10, False)
    with pytest.raises(AttributeError):
        orders.name = "other"


def test_json_rules_load(tmp_path):
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"name": "j", "schema": {"fields": [{"name": "a", "type": "number"}]}}]))
    assert load_rules(path).rule_sets[0].fields[0].type == "number"


def test_yaml_rules_in_flow_style_load_like_block_style(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("[{name: flow, key: '*.csv', schema: {fields: [{name: id, type: integer}]}}]\n")
    assert load_rules(path).rule_sets[0].fields[0].type == "integer"
    path.write_text("{rule_sets: [{name: flow, schema: {fields: [{name: id}]}}]}\n")
    assert load_rules(path).rule_sets[0].name == "flow"


class _OneObject:
    """An S3 client holding one object."""

    def __init__(self, body: bytes):
        self.body = body

    def get_object(self, **_):
        return {"Body": io.BytesIO(self.body)}


def test_the_widest_bounds_accepted_at_load_are_usable_by_the_job():
    book = parse_rules(
        f"""
- name: wide
  schema:
    fields:
      - {{name: i, type: integer, constraints: {{minimum: {-(2**63)}, maximum: {2**63 - 1}, enum: [{2**63 - 1}, 1]}}}}
      - {{name: n, type: number, constraints: {{minimum: {-(10**20)}, maximum: {2**53 + 1}, enum: [{10**20}, 2.5]}}}}
""",
        "r.yaml",
    )
    n = book.rule_sets[0].field("n")
    assert (n.minimum, n.maximum, n.enum) == (-1e20, float(2**53 + 1), (1e20, 2.5))
    job = DataQualityJob(book, s3_client_factory=lambda: _OneObject(b"i,n\n1,2.5\n2,3\n"))
    result = job(S3ObjectRecord(bucket="b", key="wide.csv"))
    failed = {(c["check"], c["field"]) for c in result["checks"] if not c["passed"]}
    assert failed == {("enum", "i"), ("enum", "n")}


def test_first_matching_rule_set_wins_and_globs_apply_to_bucket_and_key():
    book = parse_rules(GOOD, "rules.yaml")
    assert book.match("landing-eu", "incoming/a.csv").name == "orders"
    assert book.match("other", "incoming/a.csv").name == "catch-all-csv"
    assert book.match("landing-eu", "incoming/a.CSV") is None
    assert book.match("landing-eu", "incoming/a.json") is None


def test_no_rule_set_matches_an_empty_rulebook():
    assert parse_rules("[]", "r.json").match("b", "k.csv") is None


@pytest.mark.parametrize(
    "rule_set, problem",
    [
        ({"name": "x", "schema": {"fields": [{"name": "a", "type": "text"}]}}, "unknown type 'text'"),
        ({"name": "x", "schema": {"fields": [{"name": "a", "constraints": {"unqiue": True}}]}}, "unknown constraint"),
        (
            {"name": "x", "schema": {"fields": [{"name": "a", "constraints": {"pattern": "([a-"}}]}},
            "bad regular expression",
        ),
        (
            {"name": "x", "schema": {"fields": [{"name": "a", "constraints": {"pattern": "(a)\\1"}}]}},
            "bad regular expression",
        ),
        (
            {
                "name": "x",
                "schema": {"fields": [{"name": "a", "type": "integer", "constraints": {"minimum": 5, "maximum": 1}}]},
            },
            "minimum (5) > maximum (1)",
        ),
        (
            {"name": "x", "schema": {"fields": [{"name": "a"}], "primaryKey": ["b"]}},
            "primaryKey names unknown field 'b'",
        ),
        (
            {"name": "x", "min_rows": 3, "max_rows": 2, "schema": {"fields": [{"name": "a"}]}},
            "min_rows (3) > max_rows (2)",
        ),
        (
            {"name": "x", "schema": {"fields": [{"name": "a", "type": "integer", "constraints": {"minimum": "one"}}]}},
            "not an integer",
        ),
        (
            {
                "name": "x",
                "schema": {"fields": [{"name": "a", "type": "date", "constraints": {"enum": ["2024-02-30"]}}]},
            },
            "not a date",
        ),
        ({"name": "x", "schema": {"fields": [{"name": "a", "constraints": {"minLength": -1}}]}}, "minLength"),
        ({"name": "x", "schema": {"fields": [{"name": "a"}, {"name": "a"}]}}, "declared twice"),
        ({"name": "x", "schema": {"fields": []}}, "non-empty list"),
        ({"name": "x", "colour": "red", "schema": {"fields": [{"name": "a"}]}}, "unknown key"),
        ({"name": "x", "allow_extra_fields": "no", "schema": {"fields": [{"name": "a"}]}}, "allow_extra_fields"),
        (
            {"name": "x", "schema": {"fields": [{"name": "a", "type": "integer", "constraints": {"minimum": 2**63}}]}},
            "minimum: 9223372036854775808 is outside the 64-bit integer range",
        ),
        (
            {
                "name": "x",
                "schema": {"fields": [{"name": "a", "type": "integer", "constraints": {"enum": [1, -(2**63) - 1]}}]},
            },
            "enum: -9223372036854775809 is outside the 64-bit integer range",
        ),
        (
            {"name": "x", "schema": {"fields": [{"name": "a", "type": "number", "constraints": {"minimum": "nan"}}]}},
            "minimum: NaN is not a usable value",
        ),
        (
            {"name": "x", "schema": {"fields": [{"name": "a", "type": "number", "constraints": {"enum": [1, "NaN"]}}]}},
            "enum: NaN is not a usable value",
        ),
        (
            {"name": "x", "schema": {"fields": [{"name": "a", "type": "number", "constraints": {"maximum": 10**400}}]}},
            "is not a number (a 64-bit float)",
        ),
    ],
)
def test_invalid_rule_sets_name_file_rule_set_and_problem(tmp_path, rule_set, problem):
    path = tmp_path / "bad.json"
    ok = {"name": "fine", "schema": {"fields": [{"name": "a"}]}}
    path.write_text(json.dumps([ok, rule_set]))
    with pytest.raises(RulesError) as excinfo:
        load_rules(path)
    message = str(excinfo.value)
    assert str(path) in message
    assert "rule set 'x' (#1)" in message
    assert problem in message


def test_a_rule_set_without_a_name_is_named_by_index():
    with pytest.raises(RulesError, match=r"r.yaml: rule set #0: 'name' must be"):
        parse_rules("- schema: {fields: [{name: a}]}", "r.yaml")


def test_unparsable_and_missing_files_are_rules_errors(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("- name: [unclosed")
    with pytest.raises(RulesError, match="broken.yaml: not valid YAML"):
        load_rules(bad)
    with pytest.raises(RulesError, match="nope.yaml: cannot read"):
        load_rules(tmp_path / "nope.yaml")
