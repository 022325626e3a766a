"""Finding a Python >= 3.12 for LocalStack's venv, with fake interpreters on a private PATH.

Each fake is a small shell script that answers the version probe the way a real interpreter
(or a pyenv shim) would, so the finder really runs candidates and reads their answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from snsd_devtools import localstack as ls

NEW_ENOUGH = "#!/bin/sh\necho True\n"
TOO_OLD = "#!/bin/sh\necho False\n"
# A pyenv shim: fails unless PYENV_VERSION names a version that has this command.
SHIM = '#!/bin/sh\nif [ "$PYENV_VERSION" = "3.13.0" ]; then echo True; else echo "not found" >&2; exit 127; fi\n'
BROKEN = "#!/bin/sh\nexit 1\n"


def script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def fake_pyenv(bin_dir: Path, root: Path, versions: list[str]) -> None:
    listing = "\\n".join(versions)
    script(
        bin_dir / "pyenv",
        "#!/bin/sh\n"
        f'case "$1" in\n  versions) printf "{listing}\\n" ;;\n  root) echo "{root}" ;;\n  *) exit 1 ;;\nesac\n',
    )


@pytest.fixture
def bin_dir(tmp_path):
    path = tmp_path / "bin"
    path.mkdir()
    return path


def env_for(bin_dir: Path, **extra: str) -> dict[str, str]:
    return {"PATH": str(bin_dir), **extra}


def test_a_working_python313_on_path_is_taken(bin_dir):
    found = script(bin_dir / "python3.13", NEW_ENOUGH)
    assert ls.find_python(env_for(bin_dir)) == ls.PythonCandidate((str(found),))


def test_an_explicit_python_comes_first(bin_dir, tmp_path):
    script(bin_dir / "python3.13", NEW_ENOUGH)
    explicit = script(tmp_path / "elsewhere" / "python", NEW_ENOUGH)
    env = env_for(bin_dir, SNSD_LOCALSTACK_PYTHON=str(explicit))
    assert ls.find_python(env).argv == (str(explicit),)


def test_a_pyenv_shim_is_run_with_pyenv_version_set(bin_dir, tmp_path):
    shim = script(bin_dir / "python3.13", SHIM)
    fake_pyenv(bin_dir, tmp_path / "pyenv-root", ["3.11.7", "3.13.0"])
    found = ls.find_python(env_for(bin_dir))
    assert found == ls.PythonCandidate((str(shim),), {"PYENV_VERSION": "3.13.0"})
    assert found.describe() == f"PYENV_VERSION=3.13.0 {shim}"


def test_pyenv_versions_below_312_are_not_offered(bin_dir, tmp_path):
    script(bin_dir / "python3", NEW_ENOUGH)
    fake_pyenv(bin_dir, tmp_path / "pyenv-root", ["2.7.18", "3.11.7", "3.9.18"])
    assert all("PYENV_VERSION" not in c.env for c in ls.python_candidates(env_for(bin_dir)))


def test_pyenv_root_interpreters_are_the_fallback(bin_dir, tmp_path):
    script(bin_dir / "python3.13", BROKEN)
    root = tmp_path / "pyenv-root"
    script(root / "versions" / "3.11.7" / "bin" / "python3", NEW_ENOUGH)  # would pass, but is too old by name
    direct = script(root / "versions" / "3.12.1" / "bin" / "python3", NEW_ENOUGH)
    fake_pyenv(bin_dir, root, ["3.12.1"])
    assert ls.find_python(env_for(bin_dir)) == ls.PythonCandidate((str(direct),))


def test_pyenv_root_is_found_from_the_environment_without_pyenv(bin_dir, tmp_path):
    root = tmp_path / "pyenv-root"
    direct = script(root / "versions" / "3.13.0" / "bin" / "python3", NEW_ENOUGH)
    assert ls.find_python(env_for(bin_dir, PYENV_ROOT=str(root))).argv == (str(direct),)


def test_a_candidate_that_answers_false_is_refused(bin_dir):
    script(bin_dir / "python3.12", TOO_OLD)
    with pytest.raises(ls.NoSuitablePython, match="python3.12"):
        ls.find_python(env_for(bin_dir))


def test_no_python_at_all_is_a_clear_error(bin_dir):
    with pytest.raises(ls.NoSuitablePython, match=r"needs Python >= 3\.12.*tried: none found"):
        ls.find_python(env_for(bin_dir))


def test_the_cli_exits_2_with_one_line_when_no_python_exists(bin_dir, tmp_path):
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "SNSD_LOCALSTACK_VENV": str(tmp_path / "venv"),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "snsd_devtools.localstack", "install"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == ls.EXIT_NO_PYTHON
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("snsd-localstack: LocalStack 2026.3.0 needs Python >= 3.12")
    assert not (tmp_path / "venv").exists()


def test_an_installed_venv_is_reused_without_looking_for_python(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    script(venv / "bin" / "python", NEW_ENOUGH)
    (venv / ls.MARKER).write_text(ls._marker_text())
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # find_python would fail if it were asked
    assert ls.ensure_venv(venv) == venv


def test_a_stale_or_missing_marker_means_not_installed(tmp_path):
    venv = tmp_path / "venv"
    script(venv / "bin" / "python", NEW_ENOUGH)
    assert not ls.is_installed(venv)
    (venv / ls.MARKER).write_text("localstack-core==1999.1.0\n")
    assert not ls.is_installed(venv)
    (venv / ls.MARKER).write_text(ls._marker_text())
    assert ls.is_installed(venv)


def test_health_is_none_when_nothing_listens():
    assert ls.health(f"http://127.0.0.1:{ls.free_port()}", timeout=1.0) is None
    assert not ls.is_healthy(f"http://127.0.0.1:{ls.free_port()}")


def test_the_constraints_file_pins_what_localstack_needs():
    pins = {line.split("<")[0]: line for line in ls.CONSTRAINTS.read_text().split()}
    assert pins == {
        "cbor2": "cbor2<5.7",
        "cryptography": "cryptography<44",
        "pyopenssl": "pyopenssl<24.3",
        "service-identity": "service-identity<24.3",
        "joserfc": "joserfc<1.6",
    }
