# The two commands: `make run` (the daemon against LocalStack, dry run) and `make test` (everything CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
# Per-test limit (pytest-timeout): generous for the LocalStack start inside the first e2e test.
TEST_TIMEOUT ?= 300
PYTEST_ARGS ?=
REQUIRE_E2E ?= 1

.PHONY: venv run test lint localstack clean mutate

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

# Mutation testing (not part of `make test` or CI): MODULE=TEST[,TEST...] pairs, each module scored
# against only its listed test files.  `make mutate MUTATE="snsd/spool.py=tests/test_spool.py"`.
T := tests/test_trust_
MUTATE ?= \
	snsd/trust/signing.py=$(T)signing.py,$(T)verifier.py \
	snsd/trust/hosts.py=$(T)hosts.py,$(T)verifier.py \
	snsd/trust/certs.py=$(T)certs.py,$(T)verifier.py \
	snsd/trust/fetch.py=$(T)certs.py,$(T)confirm.py \
	snsd/trust/confirm.py=$(T)confirm.py \
	snsd/trust/topics.py=$(T)topics.py \
	snsd/trust/verifier.py=$(T)verifier.py \
	snsd/trust/offload.py=$(T)offload.py \
	snsd/trust/errors.py=$(T)verifier.py \
	snsd/trust/proxy.py=$(T)proxy.py \
	snsd/trust/dedup.py=$(T)dedup.py \
	snsd/breaker.py=tests/test_breaker.py
MUTATE_ARGS ?=

mutate: venv
	$(PY) scripts/mutate.py $(MUTATE_ARGS) $(MUTATE)

clean:
	rm -rf build dist *.egg-info twisted/plugins/dropin.cache
