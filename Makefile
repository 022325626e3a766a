# The two commands: `make run` (the daemon against LocalStack, dry run) and `make test` (everything CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
# Per-test limit (pytest-timeout): generous for the LocalStack start inside the first e2e test.
TEST_TIMEOUT ?= 300
PYTEST_ARGS ?=
REQUIRE_E2E ?= 1
# The container tests (tests/test_container_run.py) fail instead of skipping when no Docker engine
# can be had; REQUIRE_CONTAINER=0 lets a machine without one run the rest.
REQUIRE_CONTAINER ?= 1
# `make image`: the base is built from Debian packages unless PYTHON_IMAGE names one to pull.
PYTHON_IMAGE ?=
IMAGE ?= snsd:local

.PHONY: venv run test lint localstack image clean mutate

venv:
	@scripts/venv.sh

run: venv
	$(PY) -m snsd_devtools.run

localstack: venv
	$(PY) -m snsd_devtools.localstack install

lint: venv
	$(VENV)/bin/ruff check .

# The image, with --network host (no bridge networking needed).  Without PYTHON_IMAGE the base is
# made by scripts/base-image.sh from Debian packages (for machines that reach no image registry).
image:
	docker build --network host --tag $(IMAGE) \
		--build-arg PYTHON_IMAGE=$(or $(PYTHON_IMAGE),$$(scripts/base-image.sh)) .

# Exit status 5 (nothing collected) fails make like any other; SNSD_REQUIRE_E2E=1 also fails a run
# in which no LocalStack end-to-end test passed, SNSD_REQUIRE_CONTAINER=1 one in which no container
# test passed (see tests/conftest.py).  The container tests install docker.io and start dockerd
# when needed (root), see tests/container_env.py.
test: venv localstack lint
	SNSD_REQUIRE_E2E=$(REQUIRE_E2E) SNSD_REQUIRE_CONTAINER=$(REQUIRE_CONTAINER) $(PY) -m pytest -p no:cacheprovider --timeout $(TEST_TIMEOUT) $(PYTEST_ARGS)

# Mutation testing (not part of `make test` or CI): MODULE=TEST[,TEST...] pairs, each module scored
# against only its listed test files.  `make mutate MUTATE="snsd/spool.py=tests/test_spool.py"`.
T := tests/test_trust_
S := tests/test_
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
	snsd/breaker.py=tests/test_breaker.py \
	snsd/spool.py=$(S)spool.py,$(S)spool_protocol.py,$(S)spool_versions.py,$(S)admin.py \
	snsd/spool_schema.py=$(S)spool_versions.py,$(S)spool.py,$(S)spool_protocol.py
MUTATE_ARGS ?=

mutate: venv
	$(PY) scripts/mutate.py $(MUTATE_ARGS) $(MUTATE)

clean:
	rm -rf build dist *.egg-info twisted/plugins/dropin.cache
