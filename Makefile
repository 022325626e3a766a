# The two commands: `make run` (the daemon against LocalStack, dry run) and `make test` (everything CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
# Per-test limit (pytest-timeout): generous for the LocalStack start inside the first e2e test.
TEST_TIMEOUT ?= 300
PYTEST_ARGS ?=
REQUIRE_E2E ?= 1

.PHONY: venv run test lint localstack clean

venv:
	@scripts/venv.sh

run: venv
	$(PY) -m snsd.tools.run

localstack: venv
	$(PY) -m snsd.tools.localstack install

lint: venv
	$(VENV)/bin/ruff check .

# Exit status 5 (nothing collected) fails make like any other; SNSD_REQUIRE_E2E=1 also fails a run
# in which no LocalStack end-to-end test passed (see tests/conftest.py).
test: venv localstack lint
	SNSD_REQUIRE_E2E=$(REQUIRE_E2E) $(PY) -m pytest -p no:cacheprovider --timeout $(TEST_TIMEOUT) $(PYTEST_ARGS)

clean:
	rm -rf build dist *.egg-info twisted/plugins/dropin.cache
