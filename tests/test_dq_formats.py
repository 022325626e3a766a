"""The readers of snsd.dq.formats on their own: memory bounds and awkward but valid files."""

import io

import pytest

from snsd.dq.formats import Format, UnreadableError, open_source
from snsd.dq.rules import parse_rules


class Endless(io.RawIOBase):
    """``head`` then ``size`` bytes of filler without a line break, counting what was read."""

    def __init__(self, head: bytes, size: int):
        self._head = head
        self._left = size
        self.read_so_far = 0

    def read(self, n: int = -1) -> bytes:
        if self._head:
            data, self._head = self._head, b""
        else:
            data = b"x" * max(0, min(n if n > 0 else 1 << 20, self._left))
            self._left -= len(data)
        self.read_so_far += len(data)
        return data


def read_all(source) -> int:
    return sum(batch.num_rows for batch in source.batches())


@pytest.mark.parametrize("head", [b"", b"\r\n\r\n"])
def test_a_csv_without_line_breaks_is_unreadable_after_one_block_not_read_whole(head):
    body = Endless(head, 16 << 20)
    with pytest.raises(UnreadableError, match="header"):
        read_all(open_source(Format("csv"), body, block_size=4096))
    assert body.read_so_far < 4 << 20


def test_a_json_lines_line_that_never_ends_is_unreadable_after_a_few_chunks():
    body = Endless(b'{"id": 1}\n{"id": "', 8 << 20)
    source = open_source(Format("jsonl"), body, block_size=64 << 10)
    with pytest.raises(UnreadableError, match="longer than"):
        read_all(source)
    assert body.read_so_far < 4 << 20


def test_a_json_lines_line_a_few_chunks_long_is_still_read():
    long_line = b'{"id": 2, "note": "' + b"y" * 3000 + b'"}\n'
    body = io.BytesIO(b'{"id": 1}\n' + long_line + b'{"id": 3}\n')
    source = open_source(Format("jsonl"), body, block_size=1024)
    assert read_all(source) == 3
    assert source.parse_errors.count == 0


def test_blank_lines_before_a_csv_header_are_skipped():
    rules = parse_rules("- name: t\n  schema:\n    fields: [{name: id, type: integer}]\n", "t.yaml").rule_sets[0]
    source = open_source(Format("csv"), io.BytesIO(b"\xef\xbb\xbf\r\n\nid\n1\n2\n"), rules, block_size=64)
    assert source.columns == ["id"]
    assert read_all(source) == 2
