"""The rules file: loading, strict validation and first-match-wins matching."""

import datetime as dt
import json

import pytest

from snsd.dq.rules import RulesError, load_rules, parse_rules

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
