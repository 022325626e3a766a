"""Result sinks: whole JSON lines under concurrency, and results written to real S3 (LocalStack)."""

import json
import threading

import boto3
import pytest

from snsd.awsclients import SharedClient
from snsd.protocols import Sink
from snsd.sinks import JSONLinesSink, S3ResultSink
from tests.localstack_fixtures import aws_env, localstack_url  # noqa: F401 - fixtures


def test_jsonl_lines_are_whole_under_concurrency(tmp_path):
    sink = JSONLinesSink(str(tmp_path / "results.jsonl"))
    big = "x" * 20_000  # larger than a pipe buffer, so an unlocked write could interleave

    def write(n):
        for i in range(50):
            sink.write({"writer": n, "i": i, "padding": big})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 400
    assert sorted((line["writer"], line["i"]) for line in lines) == [(n, i) for n in range(8) for i in range(50)]


def test_jsonl_write_many_appends_every_line_and_is_on_disk_when_it_returns(tmp_path):
    path = tmp_path / "results.jsonl"
    sink = JSONLinesSink(str(path))
    sink.write({"key": "first"})
    sink.write_many([{"key": "a", "result": {"rows": 2**70}}, {"key": "b"}, {"key": "c"}])
    # Read while the sink is still open: nothing may sit in its buffer once write_many returns.
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["first", "a", "b", "c"]
    sink.close()


def test_jsonl_takes_any_result_a_custom_job_returns(tmp_path):
    import datetime

    sink = JSONLinesSink(str(tmp_path / "results.jsonl"))
    sink.write({"key": "été.csv", "result": {"rows": 2**70, 3: "int key"}})  # past orjson's 64 bits
    sink.write({"key": "b", "result": {1: "int key", "at": datetime.date(2026, 11, 29), "other": object}})
    sink.close()
    first, second = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text("utf-8").splitlines()]
    assert first == {"key": "été.csv", "result": {"rows": 2**70, "3": "int key"}}
    assert second["result"]["1"] == "int key"
    assert second["result"]["at"] == "2026-11-29"
    assert second["result"]["other"] == str(object)


def test_jsonl_a_line_left_torn_by_a_crash_cannot_swallow_the_next_result(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"n": 1}\n{"n": 2, "pa')  # killed mid-write
    sink = JSONLinesSink(str(path))
    sink.write({"n": 3})
    sink.close()
    assert path.read_bytes().splitlines()[1:] == [b'{"n": 2, "pa', b'{"n":3}']


def test_jsonl_a_write_that_fails_part_way_leaves_nothing_to_surface_later(tmp_path, monkeypatch):
    import errno
    import os

    path = tmp_path / "results.jsonl"
    sink = JSONLinesSink(str(path))
    sink.write({"n": 1})
    real_write, calls = os.write, []

    def disk_full_half_way(fd, data):
        # As write(2) behaves on a disk that fills: a short write, then an error.
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        monkeypatch.setattr(os, "write", real_write)  # the disk has room again afterwards
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full_half_way)
    with pytest.raises(OSError):
        sink.write({"n": 2, "pad": "x" * 40})
    sink.write_many([{"n": 3}, {"n": 4}])
    sink.close()
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["n"] for line in lines if line.endswith(b"}")] == [1, 3, 4]
    assert len(lines) == 4 and not lines[1].endswith(b"}")  # the fragment, alone on its line


def test_s3_documents_are_standard_json_even_with_nan(monkeypatch):
    sent = {}

    class Client:
        def put_object(self, **kwargs):
            sent.update(kwargs)

    sink = S3ResultSink("results", "dq/", client=SharedClient(factory=Client))
    sink.write({"bucket": "b", "key": "k.csv", "result": {"observed": float("nan"), "max": float("-inf")}})
    assert json.loads(sent["Body"], parse_constant=pytest.fail) == {
        "bucket": "b", "key": "k.csv", "result": {"observed": None, "max": None}
    }  # fmt: skip


def test_s3_write_many_puts_one_object_per_result_and_stops_at_the_first_failure():
    keys = []

    class Client:
        def put_object(self, **kwargs):
            if kwargs["Key"].endswith("bad.dq.json"):
                raise OSError("S3 said no")
            keys.append(kwargs["Key"])

    sink = S3ResultSink("results", "dq/", client=SharedClient(factory=Client))
    sink.write_many([{"bucket": "b", "key": "1"}, {"bucket": "b", "key": "2"}])
    assert keys == ["dq/b/1.dq.json", "dq/b/2.dq.json"]
    with pytest.raises(OSError):
        sink.write_many([{"bucket": "b", "key": "3"}, {"bucket": "b", "key": "bad"}, {"bucket": "b", "key": "4"}])
    assert keys[2:] == ["dq/b/3.dq.json"]


def test_every_sink_is_a_sink(tmp_path):
    sinks = [JSONLinesSink(str(tmp_path / "r.jsonl")), S3ResultSink("results", client=SharedClient(factory=object))]
    assert all(isinstance(sink, Sink) for sink in sinks)
    sinks[0].close()


@pytest.mark.localstack
def test_s3_sink_writes_each_result_under_the_prefix(aws_env, monkeypatch):  # noqa: F811
    for name, value in aws_env.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="dq-results-test")
    sink = S3ResultSink("dq-results-test", "dq-results/")
    line = {"bucket": "incoming", "key": "dir/a b+été.csv", "status": "ok", "result": {"verdict": "passed"}}
    sink.write(line)
    body = s3.get_object(Bucket="dq-results-test", Key="dq-results/incoming/dir/a b+été.csv.dq.json")["Body"].read()
    assert json.loads(body) == line


def test_one_s3_client_is_built_once_and_shared_by_every_thread():
    built = []
    shared = SharedClient(factory=lambda: built.append(object()) or built[-1])
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(shared.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1
    assert seen == [built[0]] * 8


def test_an_s3_result_is_keyed_by_the_objects_identity_so_a_rerun_rewrites_it():
    keys = []

    class Client:
        def put_object(self, **kwargs):
            keys.append(kwargs["Key"])

    sink = S3ResultSink("results", "dq/", client=SharedClient(factory=Client))
    first = {"bucket": "b", "key": "data/a.csv", "etag": "9b2cf535f27731c974343645a3985328", "version_id": None}
    sink.write(first)
    sink.write(first)  # a redelivery: the same document
    sink.write({**first, "etag": "d41d8cd98f00b204e9800998ecf8427e"})  # a new upload of the key: its own
    sink.write({**first, "version_id": "3/L4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"})  # a version id wins over the ETag
    assert keys == [
        "dq/b/data/a.csv/9b2cf535f27731c974343645a3985328.dq.json",
        "dq/b/data/a.csv/9b2cf535f27731c974343645a3985328.dq.json",
        "dq/b/data/a.csv/d41d8cd98f00b204e9800998ecf8427e.dq.json",
        "dq/b/data/a.csv/3_L4kqtJlcpXroDTDmJ_rmSpXd3dIbrHY.dq.json",
    ]
