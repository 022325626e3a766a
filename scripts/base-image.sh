#!/usr/bin/env bash
# Make a local stand-in for python:3.11-slim from Debian's own packages, for machines that reach
# Debian's mirror but no image registry.  Prints the image tag on its last line:
#
#   docker build --network host --build-arg PYTHON_IMAGE="$(scripts/base-image.sh)" -t snsd .
#
# Debian bookworm ships Python 3.11, the version snsd needs.  The image trusts this machine's CA
# bundle (the one pip uses, see `pip config list`): where TLS is inspected on the way to PyPI, pip
# inside the build fails with CERTIFICATE_VERIFY_FAILED otherwise.  Build once: the tarball and the
# tag are named after a hash of everything that goes in (release, packages, CA bundle), kept in
# $SNSD_CACHE (default ~/.cache/snsd), so later runs (and later machines with the same cache)
# only `docker import` or nothing at all.  Needs root (debootstrap), debootstrap and a docker daemon.
set -euo pipefail

RELEASE=${SNSD_BASE_RELEASE:-bookworm}
MIRROR=${SNSD_BASE_MIRROR:-http://deb.debian.org/debian}
# python-is-python3: `python` on PATH, as in the python:3.11-slim image the Dockerfile defaults to.
PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
CACHE=${SNSD_CACHE:-$HOME/.cache/snsd}

ca_bundle() {
    # pip's own setting first (PIP_CERT or `pip config`), then the system's default bundle.
    local cert=${PIP_CERT:-}
    if [ -z "$cert" ] && command -v pip >/dev/null 2>&1; then
        cert=$(pip config get global.cert 2>/dev/null || true)
    fi
    for candidate in "$cert" /etc/ssl/certs/ca-certificates.crt; do
        if [ -n "$candidate" ] && [ -f "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    echo "snsd: no CA bundle found (set PIP_CERT)" >&2
    return 1
}

CA=$(ca_bundle)
KEY=$( (echo "$RELEASE $MIRROR $PACKAGES v1"; cat "$CA") | sha256sum | cut -c1-12)
TAG=snsd-base:$RELEASE-$KEY
TARBALL=$CACHE/base-$RELEASE-$KEY.tar.gz

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "snsd: base image $TAG already present" >&2
    echo "$TAG"
    exit 0
fi

mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null 2>&1 || {
        echo "snsd: installing debootstrap" >&2
        # DPkg::Lock::Timeout: wait for another apt (a second test run, unattended upgrades).
        apt-get -o DPkg::Lock::Timeout=600 update -q >&2 \
            && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q debootstrap >&2
    }
    # Private names until the final mv: two runs at once each build their own, the last mv wins.
    ROOTFS=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    PARTIAL=$(mktemp "$TARBALL.XXXXXX")
    trap 'rm -rf "$ROOTFS" "$PARTIAL"' EXIT
    started=$(date +%s)
    echo "snsd: debootstrap $RELEASE (minbase + $PACKAGES) into $ROOTFS" >&2
    debootstrap --variant=minbase --include="$PACKAGES" "$RELEASE" "$ROOTFS" "$MIRROR" >&2
    # Trust what this machine trusts (the inspecting proxy's CA included); python, pip and
    # OpenSSL all read this file in Debian.
    cp "$CA" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    # What an image does not need: package lists and caches, documentation, man pages.
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/usr/share/doc/* \
        "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/tmp/*
    tar --numeric-owner -C "$ROOTFS" -czf "$PARTIAL" .
    chmod 644 "$PARTIAL"
    mv "$PARTIAL" "$TARBALL"
    echo "snsd: base rootfs built in $(($(date +%s) - started)) s: $TARBALL" >&2
fi

# The settings python:3.11-slim has and code may rely on.
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$TARBALL" "$TAG" >&2
echo "$TAG"
