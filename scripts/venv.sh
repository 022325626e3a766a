#!/usr/bin/env bash
# Create (or refresh) the project's .venv with Python 3.11 and install snsd with its test extra.
# Re-installs only when pyproject.toml changed (a stamp file holds its hash).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SNSD_VENV:-.venv}

find_python() {
    local candidate
    for candidate in "${SNSD_PYTHON:-}" python3.11; do
        [ -n "$candidate" ] || continue
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    # pyenv shims need PYENV_VERSION when 3.11 is not the selected version.
    if command -v pyenv >/dev/null 2>&1; then
        local version
        for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.11(\.|$)' | sort -rV); do
            if PYENV_VERSION=$version python3.11 -c 'import sys' 2>/dev/null; then
                echo "$(PYENV_VERSION=$version pyenv which python3.11)"; return 0
            fi
        done
    fi
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    PYTHON=$(find_python) || { echo "snsd: Python 3.11 not found (set SNSD_PYTHON=/path/to/python3.11)" >&2; exit 2; }
    echo "snsd: creating $VENV with $PYTHON" >&2
    "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.snsd-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "snsd: installing snsd[test] into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    # Editable: pyproject's package-dir makes it a plain .pth entry for the checkout, so twistd
    # finds twisted/plugins/ in the tree.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
    echo "$want" > "$stamp"
fi
