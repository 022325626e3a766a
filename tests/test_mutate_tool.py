"""scripts/mutate.py, the mutation-testing tool: its mutants are well-formed and its exclusions current."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("snsd_mutate", ROOT / "scripts" / "mutate.py")
mutate = importlib.util.module_from_spec(_spec)
sys.modules["snsd_mutate"] = mutate
_spec.loader.exec_module(mutate)

SAMPLE = '''
"""Docstring, never mutated."""
import re

LIMIT = 3


def f(x, y=2):
    """Nor this one."""
    if x < LIMIT and not y:
        return max(x, y) + 1
    return re.fullmatch(r"sns\\.[a-z0-9-]+", x) is None
'''


def test_regex_edits_include_the_unescaped_dot_and_the_widened_class():
    edits = mutate.regex_edits(r"sns\.[a-z0-9-]+\.com(\.cn)?")
    assert ("unescape \\.", r"sns.[a-z0-9-]+\.com(\.cn)?") in edits
    assert ("unescape \\.", r"sns\.[a-z0-9-]+\.com(.cn)?") in edits
    assert ("add . to [a-z0-9-]", r"sns\.[.a-z0-9-]+\.com(\.cn)?") in edits
    assert ("drop ?", r"sns\.[a-z0-9-]+\.com(\.cn)") in edits
    assert ("+ -> *", r"sns\.[a-z0-9-]*\.com(\.cn)?") in edits


def test_regex_edits_that_do_not_compile_are_left_out():
    assert all(mutate.re.compile(p) for _, p in mutate.regex_edits("[0-9]{1,5}|a"))


def test_every_kind_of_mutant_is_found_and_docstrings_are_left_alone():
    kinds = {m.kind for m in mutate.mutants_of(SAMPLE)}
    assert kinds == {"delete statement", "comparison", "and/or", "not", "min/max", "arithmetic", "constant", "regex"}
    for m in mutate.mutants_of(SAMPLE):
        assert "Docstring" not in m.key and "Nor this one" not in m.key


def test_each_mutant_changes_the_source_in_one_place():
    original = ast.unparse(ast.parse(SAMPLE))
    mutants = mutate.mutants_of(SAMPLE)
    sources = {mutate.mutated_source(SAMPLE, m.index) for m in mutants}
    assert original not in sources
    assert len(sources) == len(mutants)


def test_mutant_keys_do_not_depend_on_line_numbers():
    shifted = SAMPLE.replace("LIMIT = 3\n", "LIMIT = 3\n\n\nOTHER = None\n")
    assert {m.key for m in mutate.mutants_of(SAMPLE)} <= {m.key for m in mutate.mutants_of(shifted)}


@pytest.mark.parametrize(
    "module",
    sorted(
        {
            line.split(" :: ")[0]
            for line in mutate.EQUIVALENTS.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        }
    )
    or ["(none)"],
)
def test_every_listed_equivalent_names_a_mutant_that_exists(module):
    if module == "(none)":
        return
    keys = {m.key for m in mutate.mutants_of((ROOT / module).read_text())}
    listed = {key for (file, key) in mutate.load_equivalents() if file == module}
    assert listed - keys == set(), "stale entries in scripts/mutation-equivalents.txt"


def test_every_mutant_of_a_real_module_can_be_built():
    for path in [ROOT / "snsd" / "trust" / "hosts.py"]:
        source = path.read_text()
        for m in mutate.mutants_of(source):
            text = mutate.mutated_source(source, m.index)
            assert text is None or text != source
