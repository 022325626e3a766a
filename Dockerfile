# syntax=docker/dockerfile:1
# snsd: verify SNS deliveries of S3 events and run a job per object.
#
#   docker build -t snsd .
#   docker run --rm -p 8080:8080 -e SNSD_RESULTS_BUCKET=my-results snsd
#
# Stage 1 builds the wheel from the source tree; stage 2 installs only that wheel, so the image
# holds no build tools and no sources beyond what the package ships.

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m pip install --no-cache-dir --disable-pip-version-check build
# README* is a wildcard so a checkout without README still builds (the wheel's long description
# is then empty); Docker only fails a COPY when none of its sources match.
COPY pyproject.toml setup.cfg README* ./
COPY snsd ./snsd
COPY twisted ./twisted
RUN python -m build --wheel --outdir /dist

FROM python:3.11-slim AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    SNSD_SPOOL_PATH=/var/lib/snsd/spool.sqlite3 \
    SNSD_RESULTS_PATH=/var/lib/snsd/dry_run_results.jsonl \
    SNSD_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
COPY --from=build /dist/*.whl /tmp/wheels/
# Twisted caches plugin discovery next to the plugin: write that cache now, while we are root.
RUN python -m pip install --disable-pip-version-check /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && mkdir -p /var/lib/snsd \
    && chown 10001:10001 /var/lib/snsd
# The spool (SQLite) and dry-run results live here; mount a volume to keep them across restarts.
WORKDIR /var/lib/snsd
VOLUME ["/var/lib/snsd"]
# Numeric, so Kubernetes' runAsNonRoot can check it without an /etc/passwd entry.
USER 10001:10001
EXPOSE 8080
# No curl in slim images: ask /healthz with the Python that is already there (a non-2xx answer
# raises, which exits non-zero too).  Change SNSD_HEALTHCHECK_URL along with --port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SNSD_HEALTHCHECK_URL'], timeout=2)"]
# twistd is PID 1 (exec form, no shell in between), so SIGTERM reaches it and starts the drain.
# --pidfile= : a pidfile left by a killed container would block the next start.
STOPSIGNAL SIGTERM
ENTRYPOINT ["twistd", "-n", "--pidfile=", "snsd"]
CMD ["--port", "8080"]
