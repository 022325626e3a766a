"""`twistd snsd` options: flag > environment > default, and one-line errors for bad values."""

import pytest
from twisted.python import usage

from snsd.admission import AckMode, BreakerMode
from snsd.config import SNSDOptions
from snsd.jobs.head import head_object

HEAD = "snsd.jobs.head:head_object"


def parse(args, env=None):
    options = SNSDOptions(environ=env or {})
    options.parseOptions(args)
    return options.settings


def test_defaults():
    s = parse(["--dry-run", "--job", HEAD])
    assert s.port == "tcp:8080"
    assert s.workers == 10
    assert s.job_nice == 19
    assert s.breaker_max_failures == 5
    assert s.breaker_cooldown == 60.0
    assert s.breaker_mode is BreakerMode.SKIP
    assert s.results == "./dry_run_results.jsonl"
    assert s.spool == "./snsd-spool.sqlite3"
    assert s.max_pending == 10_000
    assert s.ack is AckMode.SPOOLED
    assert s.drain_timeout == 30.0
    assert s.verify_signatures is True
    assert s.max_age == 3600.0
    assert s.dedup_ttl == 3600.0
    assert s.job is head_object


def test_bare_port_number_becomes_tcp():
    assert parse(["--dry-run", "--job", HEAD, "--port", "9000"]).port == "tcp:9000"


def test_endpoint_strings_pass_through():
    s = parse(["--dry-run", "--job", HEAD, "--port", "tcp:8080:interface=127.0.0.1"])
    assert s.port == "tcp:8080:interface=127.0.0.1"


def test_environment_overrides_default_and_flag_overrides_environment():
    env = {"SNS_WORKER_MAX": "4", "CIRCUIT_BREAKER_MODE": "reject", "SNSD_DRY_RUN": "true", "SNSD_JOB": HEAD}
    assert parse([], env).workers == 4
    assert parse([], env).breaker_mode is BreakerMode.REJECT
    assert parse(["--workers", "7"], env).workers == 7


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("0", False), ("false", False)])
def test_dry_run_environment_values(value, expected):
    env = {"SNSD_DRY_RUN": value, "SNSD_RESULTS_BUCKET": "results"}
    assert parse(["--job", HEAD], env).dry_run is expected


def test_repeatable_and_comma_separated_lists():
    env = {"SNSD_TRUSTED_HOSTS": "a:1, b:2", "SNSD_DRY_RUN": "1", "SNSD_JOB": HEAD}
    assert parse([], env).trusted_host == ("a:1", "b:2")
    assert parse(["--trusted-host", "c:3", "--trusted-host", "d"], env).trusted_host == ("c:3", "d")


def test_no_verify_signatures_flag_and_env():
    assert parse(["--dry-run", "--job", HEAD, "--no-verify-signatures"]).verify_signatures is False
    assert parse(["--dry-run", "--job", HEAD], {"SNSD_VERIFY_SIGNATURES": "0"}).verify_signatures is False


@pytest.mark.parametrize(
    "args,names",
    [
        (["--workers", "-1"], "--workers"),
        (["--workers", "ten"], "--workers"),
        (["--workers", "0"], "--workers"),
        (["--breaker-mode", "panic"], "--breaker-mode"),
        (["--breaker-cooldown", "soon"], "--breaker-cooldown"),
        (["--job", "no.such.module:job"], "--job"),
        (["--job", "snsd.jobs.head:nothing"], "--job"),
        (["--job", "notaspec"], "--job"),
        (["--ack", "never"], "--ack"),
        (["--job-nice", "20"], "--job-nice"),
        (["--job-nice", "-5"], "--job-nice"),
        (["--max-age", "7200"], "--dedup-ttl"),
        (["--basic-auth", "nocolon"], "--basic-auth"),
        (["--trusted-host", "http://evil/x"], "--trusted-host"),
        (["--topic-arn", "not-an-arn"], "--topic-arn"),
        (["--port", "abc"], "--port"),
        (["--port", "-1"], "--port"),
        (["--port", "99999"], "--port"),
        (["--port", "tcp:notaport"], "--port"),
        (["--spool", "/proc/no-such-folder/spool.sqlite3"], "--spool"),
        (["--spool", "/tmp"], "--spool"),
        (["--results", "/proc/no-such-folder/results.jsonl"], "--results"),
        (["--results", "/tmp"], "--results"),
    ],
)
def test_bad_values_are_one_line_usage_errors_naming_the_option(args, names):
    with pytest.raises(usage.UsageError) as raised:
        parse(["--dry-run", "--job", HEAD, *args] if "--job" not in args else ["--dry-run", *args])
    message = str(raised.value)
    assert names in message
    assert "\n" not in message


def test_results_bucket_required_without_dry_run():
    with pytest.raises(usage.UsageError, match="--results-bucket"):
        parse(["--job", HEAD])


def test_bad_environment_value_names_the_variable():
    with pytest.raises(usage.UsageError, match="SNSD_DRY_RUN"):
        parse(["--job", HEAD], {"SNSD_DRY_RUN": "maybe"})


def test_a_bad_environment_number_names_the_variable_not_the_flag():
    with pytest.raises(usage.UsageError, match="^SNS_WORKER_MAX must be a whole number"):
        parse(["--dry-run", "--job", HEAD], {"SNS_WORKER_MAX": "abc"})
    with pytest.raises(usage.UsageError, match="^--workers must be a whole number"):
        parse(["--dry-run", "--job", HEAD, "--workers", "abc"], {"SNS_WORKER_MAX": "4"})


@pytest.mark.parametrize(
    "env,message",
    [
        ({"SNSD_PORT": "bogus"}, "SNSD_PORT must be a port number"),
        ({"SNSD_SPOOL_PATH": "/proc/no-such-folder/s.sqlite3"}, "SNSD_SPOOL_PATH /proc/no-such-folder/s.sqlite3: its"),
        ({"SNSD_JOB_NICE": "20"}, "SNSD_JOB_NICE must be between 0 and 19"),
        ({"SNSD_MAX_AGE_SECONDS": "7200"}, "--dedup-ttl (3600) must be at least SNSD_MAX_AGE_SECONDS (7200)"),
    ],
)
def test_a_checked_value_from_the_environment_is_named_by_its_variable(env, message):
    with pytest.raises(usage.UsageError) as raised:
        parse(["--dry-run", "--job", HEAD], env)
    assert str(raised.value).startswith(message)


def test_help_states_each_default_once():
    docs = {flag: doc for flag, _, _, doc, _ in SNSDOptions.optParameters}
    assert all(doc.count("default") == 1 for doc in docs.values()), docs
    assert "(default: data-quality)" in docs["job"] and "(default: one per core)" in docs["job-processes"]
    assert docs["workers"].endswith("[SNS_WORKER_MAX] (default: 10)")


def test_help_documents_every_option_and_its_variable():
    text = str(SNSDOptions(environ={}))
    for flag, env in [
        ("--port", "SNSD_PORT"),
        ("--workers", "SNS_WORKER_MAX"),
        ("--breaker-max-failures", "CIRCUIT_BREAKER_MAX_FAILURES"),
        ("--breaker-cooldown", "CIRCUIT_BREAKER_COOLDOWN_SECONDS"),
        ("--breaker-mode", "CIRCUIT_BREAKER_MODE"),
        ("--dry-run", "SNSD_DRY_RUN"),
        ("--results", "SNSD_RESULTS_PATH"),
        ("--job", "SNSD_JOB"),
        ("--spool", "SNSD_SPOOL_PATH"),
        ("--trusted-host", "SNSD_TRUSTED_HOSTS"),
        ("--topic-arn", "SNSD_TOPIC_ARNS"),
    ]:
        assert flag in text
        assert env in text


def test_readme_documents_every_option_and_variable():
    from pathlib import Path

    from snsd.config import SETTINGS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for setting in SETTINGS:
        flag = "--no-verify-signatures" if setting.flag == "verify-signatures" else f"--{setting.flag}"
        assert f"`{flag}`" in readme, flag
        assert setting.env in readme, setting.env


def test_settings_are_frozen_and_typed():
    import dataclasses

    s = parse(["--dry-run", "--job", HEAD, "--breaker-mode", "spool", "--ack", "after-job"])
    assert s.breaker_mode is BreakerMode.SPOOL and s.ack is AckMode.AFTER_JOB
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.workers = 3


def test_parsing_builds_no_job_processes():
    """The built-in job's worker processes are the daemon's to start, not the option parser's."""
    import multiprocessing

    from snsd.dq.job import DataQualityJob

    before = multiprocessing.active_children()
    s = parse(["--dry-run", "--job-processes", "2"])
    assert type(s.job) is DataQualityJob and s.builtin_job and s.job_processes == 2
    assert multiprocessing.active_children() == before
