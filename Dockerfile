# snsd: verify SNS deliveries of S3 events and run a job per object.
#
#   docker build -t snsd .
#   docker run --rm -p 8080:8080 -e SNSD_RESULTS_BUCKET=my-results snsd
#
# Stage 1 installs snsd into a virtualenv from the source tree; stage 2 copies only that
# virtualenv, so the image holds no build tools and no sources beyond what the package ships.
#
# PYTHON_IMAGE picks the base of both stages.  Where no image registry is reachable, make one
# from Debian's packages (see scripts/base-image.sh; `make image` does both):
#
#   docker build --network host --build-arg PYTHON_IMAGE="$(scripts/base-image.sh)" -t snsd .
#
# No `# syntax=` line: the builder's own Dockerfile frontend suffices, and fetching another one
# would need a registry.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# pip's index settings, for builders that reach PyPI through a mirror (empty: pip's defaults).
# Only this stage sees them: the runtime stage copies the finished virtualenv and runs no pip, so
# none of them lands in the shipped image's layers or history.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/snsd
WORKDIR /src
# The dependencies first, in their own layer: rebuilt only when pyproject.toml changes.
COPY pyproject.toml setup.cfg ./
RUN /opt/snsd/bin/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && /opt/snsd/bin/python -m pip install -r /tmp/requirements.txt
# README* is a wildcard so a checkout without README still builds (the wheel's long description
# is then empty); Docker only fails a COPY when none of its sources match.
COPY pyproject.toml setup.cfg README* ./
COPY snsd ./snsd
COPY twisted ./twisted
# pip builds the wheel (in an isolated build environment) and installs only it: no sources, no
# build tools end up in /opt/snsd.  Twisted caches plugin discovery next to the plugin: write that
# cache now, as root, since the runtime user (and a read-only root filesystem) cannot.  Twisted
# rewrites the cache when a plugin file is as new as it or newer, and image layers keep whole
# seconds only: the plugin files get an old fixed time first, so the cache is strictly newer.
RUN /opt/snsd/bin/python -m pip install --no-deps . \
    && find /opt/snsd/lib/python3*/site-packages/twisted/plugins -name '*.py' -exec touch -d @946684800 {} + \
    && /opt/snsd/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
# Keep the runtime image small (the target is under 400 MB; pyarrow is its largest part): drop
# pyarrow's test suite, C++ headers and sources and its Arrow Flight RPC (snsd reads CSV, JSON
# and Parquet), and pip itself (the runtime installs nothing).  The import line fails the build
# if a module snsd uses went with them.
RUN (cd /opt/snsd/lib/python3*/site-packages/pyarrow \
        && rm -rf tests include src _pyarrow_cpp_tests* ./*flight* \
        && find . \( -name '*.pxd' -o -name '*.pyx' -o -name '*.pxi' \) -delete) \
    && /opt/snsd/bin/python -m pip uninstall --yes --quiet pip setuptools \
    && /opt/snsd/bin/python -c "import pyarrow.compute, pyarrow.csv, pyarrow.dataset, pyarrow.fs, pyarrow.json, pyarrow.parquet, snsd.dq"

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/snsd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SNSD_SPOOL_PATH=/var/lib/snsd/spool.sqlite3 \
    SNSD_RESULTS_PATH=/var/lib/snsd/dry_run_results.jsonl \
    SNSD_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
# The same base as the build stage, so the virtualenv's python link points at the same interpreter.
COPY --from=build /opt/snsd /opt/snsd
RUN mkdir -p /var/lib/snsd \
    && chown 10001:10001 /var/lib/snsd
# The spool (SQLite) and dry-run results live here; mount a volume to keep them across restarts.
WORKDIR /var/lib/snsd
VOLUME ["/var/lib/snsd"]
# Numeric, so Kubernetes' runAsNonRoot can check it without an /etc/passwd entry.
USER 10001:10001
EXPOSE 8080
# The admin listener (/metrics, /breaker) stays on the container's loopback (127.0.0.1:9090) unless
# SNSD_ADMIN_PORT says otherwise; deploy/kubernetes/ sets tcp:9090 for Prometheus.
# No curl in slim images: ask /healthz with the Python that is already there (a non-2xx answer
# raises, which exits non-zero too).  Change SNSD_HEALTHCHECK_URL along with --port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SNSD_HEALTHCHECK_URL'], timeout=2)"]
# twistd is PID 1 (exec form, no shell in between), so SIGTERM reaches it and starts the drain.
# --pidfile= : a pidfile left by a killed container would block the next start.
STOPSIGNAL SIGTERM
ENTRYPOINT ["twistd", "-n", "--pidfile=", "snsd"]
CMD ["--port", "8080"]
