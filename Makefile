# The two commands: `make run` (the daemon against LocalStack, dry run) and `make test` (everything CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv run test lint localstack clean

venv:
	@scripts/venv.sh

run: venv
	$(PY) -m snsd.tools.run

localstack: venv
	$(PY) -m snsd.tools.localstack install

lint: venv
	$(VENV)/bin/ruff check .

test: venv localstack lint
	$(PY) -m pytest -p no:cacheprovider

clean:
	rm -rf build dist *.egg-info twisted/plugins/dropin.cache
