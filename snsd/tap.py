"""The ``twistd snsd`` plugin: options and service wiring, nothing else."""

from __future__ import annotations

from snsd.config import SNSDOptions as Options

__all__ = ["Options", "makeService"]


def makeService(options: Options):
    from twisted.internet import reactor

    from snsd.daemon import build_daemon
    from snsd.logs import configure_logging

    configure_logging(options.settings.log_format)
    return build_daemon(reactor, options.settings)
