"""Packaging: the twistd plugin is found after a wheel install and after an editable install.

Each case uses a fresh virtualenv whose only copy of snsd is the one under test; the
third-party dependencies come from this test run's environment through a .pth file, so
the test needs no network for them.
"""

import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.process

TWISTD_HELP = "import sys; sys.argv = ['twistd', '--help']; from twisted.scripts.twistd import run; run()"
WHERE = "import snsd, twisted.plugins.snsd_plugin as p; print(snsd.__file__); print(p.__file__)"


def fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    python = path / "bin" / "python"
    target = subprocess.run(
        [python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    Path(target, "_snsd_test_deps.pth").write_text(site.getsitepackages()[0] + "\n")
    return python


def clean_copy(tmp_path: Path) -> Path:
    """The tracked sources only, like a fresh clone (no build/ or egg-info from the tree)."""
    source = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    return source


def plugin_listed(python: Path, cwd: Path) -> tuple[str, str]:
    listing = subprocess.run([python, "-c", TWISTD_HELP], capture_output=True, text=True, cwd=cwd).stdout
    where = subprocess.run([python, "-c", WHERE], capture_output=True, text=True, cwd=cwd, check=True).stdout
    return listing, where


def test_wheel_install_lists_the_plugin(tmp_path):
    source = clean_copy(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", source],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("snsd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # What an operator runs is in it; the development helpers (snsd_devtools/) are not.
    assert {"snsd/tools/wire.py", "snsd/tools/publish.py", "snsd/tools/post.py", "snsd/admin.py"} <= set(names)
    assert not [name for name in names if name.startswith("snsd_devtools/") or "localstack" in name]
    python = fresh_venv(tmp_path / "venv")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", wheel], check=True, capture_output=True)
    listing, where = plugin_listed(python, tmp_path)
    assert "snsd" in listing and "SNS -> S3 event -> job daemon" in listing
    assert str(tmp_path / "venv") in where.splitlines()[1]  # the wheel's plugin, not the checkout's


def test_editable_install_lists_the_plugin(tmp_path):
    source = clean_copy(tmp_path)
    python = fresh_venv(tmp_path / "venv")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", source], check=True, capture_output=True)
    listing, where = plugin_listed(python, tmp_path)
    assert "SNS -> S3 event -> job daemon" in listing
    assert where.splitlines()[1].startswith(str(source))  # found in the working tree itself
