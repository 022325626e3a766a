"""The Dockerfile and docker-compose.yml, checked without a Docker engine.

These tests read the files the way Docker would (instructions, exec-form JSON, compose YAML) and
check what the loop depends on: the entrypoint and user, the health check, that the compose
services point at each other consistently, and that the daemon's own option parser accepts the
commands they give it.  They run in a second, without Docker; tests/test_container_run.py builds
the image and runs it for real, and docker compose itself is not run here (no image registry for
the LocalStack image).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from snsd.config import SETTINGS, SNSDOptions

ROOT = Path(__file__).resolve().parent.parent


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also inside a continuation
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continuation"
    return instructions


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value), arguments
    return value


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            result.append([])
        if not result:
            assert keyword == "ARG", f"{keyword} before the first FROM (only ARG may be)"
            continue
        result[-1].append((keyword, rest))
    return result


def global_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """The ARGs before the first FROM, with their defaults: what FROM lines may use."""
    found: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "FROM":
            break
        name, _, default = rest.partition("=")
        found[name] = default
    return found


def base_image(stage: list[tuple[str, str]], args: dict[str, str]) -> str:
    """The image a stage starts FROM, with ``${ARG}`` references replaced by their defaults."""
    image = last(stage, "FROM").split()[0]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def last(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [rest for kw, rest in stage if kw == keyword]
    assert found, f"no {keyword} in the runtime stage"
    return found[-1]


def duration_seconds(value: str) -> float:
    """A compose duration ("45s", "1m30s", "90") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)?", str(value))
    assert parts and "".join(n + (u or "") for n, u in parts) == str(value), value
    return sum(float(n) * units[u or "s"] for n, u in parts)


def option_value(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


@pytest.fixture(scope="module")
def instructions():
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def dockerfile(instructions):
    return stages(instructions)


@pytest.fixture(scope="module")
def runtime(dockerfile):
    return dockerfile[-1]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


# ---------------------------------------------------------------------------- Dockerfile


def test_parser_joins_continuations_and_drops_comments():
    parsed = parse_dockerfile("FROM a\n# note\nRUN one \\\n  # inside\n  && two\nUSER 1\n")
    assert parsed == [("FROM", "a"), ("RUN", "one && two"), ("USER", "1")]


def test_runtime_is_slim_python_311_built_in_two_stages(instructions, dockerfile, runtime):
    assert len(dockerfile) >= 2
    args = global_args(instructions)
    base = base_image(runtime, args)
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    # One ARG picks the base of every stage, so a machine without a registry can swap it
    # (scripts/base-image.sh) and the virtualenv copied between stages finds its interpreter.
    assert "PYTHON_IMAGE" in args
    assert {last(stage, "FROM").split()[0] for stage in dockerfile} == {"${PYTHON_IMAGE}"}


def test_base_image_parser_substitutes_args():
    stage = [("FROM", "${IMG} AS build")]
    assert base_image(stage, {"IMG": "python:3.11-slim"}) == "python:3.11-slim"
    with pytest.raises(KeyError):
        base_image([("FROM", "$OTHER")], {"IMG": "x"})


def test_snsd_is_installed_in_one_stage_and_only_its_virtualenv_copied(dockerfile, runtime):
    build_stage_name = last(dockerfile[0], "FROM").split()[-1]
    venv = "/opt/snsd"
    assert any(f"{venv}/bin/python -m pip install" in rest for kw, rest in dockerfile[0] if kw == "RUN")
    copies = [rest.split() for kw, rest in runtime if kw == "COPY"]
    assert copies == [[f"--from={build_stage_name}", venv, venv]], copies
    assert not any("pip" in rest for kw, rest in runtime if kw == "RUN"), "pip runs in the runtime stage"
    assert env_of(runtime)["PATH"].startswith(f"{venv}/bin:")


def test_pip_settings_are_build_args_of_the_build_stage_only(dockerfile, runtime):
    build_args = {rest.partition("=")[0] for kw, rest in dockerfile[0] if kw == "ARG"}
    assert {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"} <= build_args
    # An ARG without a default is unset when not given; an empty one would mean "no index" to pip.
    assert not any(kw == "ARG" and rest.startswith("PIP_") and "=" in rest for kw, rest in dockerfile[0])
    assert not any(kw == "ARG" for kw, rest in runtime)
    assert not any(name.startswith("PIP_") for name in env_of(runtime))


def test_entrypoint_is_twistd_in_the_foreground_without_a_pidfile(runtime):
    assert exec_form(last(runtime, "ENTRYPOINT")) == ["twistd", "-n", "--pidfile=", "snsd"]


def test_default_command_is_port_8080_and_exposed(runtime):
    command = exec_form(last(runtime, "CMD"))
    assert command == ["--port", "8080"]
    assert "8080" in last(runtime, "EXPOSE").replace("/tcp", "").split()


def test_default_command_is_accepted_by_the_daemons_options(runtime, monkeypatch):
    # The image makes its spool folder (the next tests check how); this machine has none.
    monkeypatch.setattr("snsd.config._check_writable_file", lambda flag, path: None)
    # Without --dry-run the daemon needs a results bucket: the image's one required setting.
    options = SNSDOptions(environ={"SNSD_RESULTS_BUCKET": "results", **env_of(runtime)})
    options.parseOptions(exec_form(last(runtime, "CMD")))
    assert options.settings.port == "tcp:8080"
    assert options.settings.spool == "/var/lib/snsd/spool.sqlite3"


def test_user_is_numeric_and_not_root(runtime):
    user = last(runtime, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, user
    assert not gid or (gid.isdigit() and int(gid) != 0), user


def test_spool_directory_is_the_workdir_and_owned_by_the_user(runtime):
    env = env_of(runtime)
    spool_dir = str(Path(env["SNSD_SPOOL_PATH"]).parent)
    assert last(runtime, "WORKDIR") == spool_dir
    uid = last(runtime, "USER").split(":")[0]
    assert any(f"chown {uid}" in rest and spool_dir in rest for kw, rest in runtime if kw == "RUN")
    assert Path(env["SNSD_RESULTS_PATH"]).parent == Path(spool_dir)


def test_healthcheck_asks_healthz_on_the_served_port_without_curl(runtime):
    env = env_of(runtime)
    check = last(runtime, "HEALTHCHECK")
    assert "CMD" in check.split()
    command = exec_form(check.split("CMD", 1)[1].strip())
    assert command[0] == "python" and "curl" not in check
    url = env["SNSD_HEALTHCHECK_URL"]
    assert "SNSD_HEALTHCHECK_URL" in command[-1]
    assert urlsplit(url).path == "/healthz"
    assert str(urlsplit(url).port) == exec_form(last(runtime, "CMD"))[1]


def test_python_is_unbuffered_and_sigterm_stops_it(runtime):
    assert env_of(runtime).get("PYTHONUNBUFFERED") == "1"
    assert last(runtime, "STOPSIGNAL") == "SIGTERM"


def test_copied_sources_exist_and_are_not_dockerignored(dockerfile):
    ignored = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("", "#")
    ]
    for keyword, rest in dockerfile[0]:
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        matched = []
        for source in rest.split()[:-1]:
            # Like Docker: a wildcard may match nothing, a plain path must exist.
            found = sorted(ROOT.glob(source)) if any(ch in source for ch in "*?[") else [ROOT / source]
            assert all(path.exists() for path in found), f"COPY source {source} missing from the build context"
            matched += found
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is dockerignored"
        assert matched, f"COPY {rest} matches nothing"


# ---------------------------------------------------------------------------- compose


def test_compose_has_localstack_snsd_and_a_one_shot_init(compose):
    services = compose["services"]
    assert set(services) == {"localstack", "snsd", "init"}
    image = services["localstack"]["image"]
    assert "localstack/localstack" in image
    assert set(services["localstack"]["environment"]["SERVICES"].split(",")) >= {"sns", "s3", "sqs"}
    assert services["snsd"]["build"] == "."
    assert services["init"]["image"] == services["snsd"]["image"]  # the wiring tool ships in the snsd image
    assert services["init"].get("restart", "no") == "no"


def test_snsd_trusts_exactly_the_host_localstack_signs_with(compose):
    services = compose["services"]
    trusted = option_value(services["snsd"]["command"], "--trusted-host")
    assert services["localstack"]["environment"]["LOCALSTACK_HOST"] == trusted
    wire_endpoint = urlsplit(option_value(services["init"]["command"], "--endpoint-url"))
    assert wire_endpoint.netloc == trusted
    assert wire_endpoint.hostname in services  # the container name, on the compose network


def test_snsd_command_is_accepted_by_the_daemons_options_in_dry_run(compose):
    snsd = compose["services"]["snsd"]
    options = SNSDOptions(environ={k: str(v) for k, v in snsd["environment"].items()})
    options.parseOptions([str(arg) for arg in snsd["command"]])
    assert options.settings.dry_run is True
    assert options.settings.verify_signatures is True
    assert options.settings.trusted_host == ("localstack:4566",)


def test_init_subscribes_snsd_on_its_served_port_after_both_are_healthy(compose):
    services = compose["services"]
    init = services["init"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert init["entrypoint"][0] in scripts and scripts[init["entrypoint"][0]] == "snsd.tools.wire:main"
    listener = urlsplit(option_value(init["command"], "--listener-url"))
    assert listener.hostname == "snsd"
    assert str(listener.port) == option_value(services["snsd"]["command"], "--port")
    assert init["depends_on"]["snsd"]["condition"] == "service_healthy"
    assert init["depends_on"]["localstack"]["condition"] == "service_healthy"
    assert services["snsd"]["depends_on"]["localstack"]["condition"] == "service_healthy"


def test_stop_grace_period_outlasts_the_drain_timeout(compose):
    snsd = compose["services"]["snsd"]
    default = next(s.default for s in SETTINGS if s.flag == "drain-timeout")
    drain = float(snsd.get("environment", {}).get("SNSD_DRAIN_TIMEOUT_SECONDS", default))
    assert duration_seconds(snsd["stop_grace_period"]) > drain


def test_duration_parser():
    assert duration_seconds("45s") == 45
    assert duration_seconds("1m30s") == 90
    with pytest.raises(AssertionError):
        duration_seconds("soon")
