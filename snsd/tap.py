"""The ``twistd snsd`` plugin: options and service wiring, nothing else."""

from __future__ import annotations

from snsd.config import SNSDOptions as Options

__all__ = ["Options", "makeService"]


def makeService(options: Options):
    from twisted.internet import reactor

    from snsd.daemon import build_daemon
    from snsd.logs import TwistdLogging

    # Under twistd, ``options.parent`` is twistd's own parsed options (--logfile, --syslog, -n).
    top = TwistdLogging(options.settings.log_format, twistd_options=getattr(options, "parent", None))
    build_daemon(reactor, options.settings).setServiceParent(top)
    return top
