"""Small services that give the daemon's parts a lifecycle: start with the daemon, stop in its order.

The spool, the results sink and the job's worker processes are plain objects with ``open`` or
``close``; these adapters make them children of the daemon's ``MultiService`` like every other
part, so one ordered list in :class:`snsd.daemon.SNSDaemon` starts and stops them all.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

from snsd.logs import Logger
from snsd.spool import SpoolVersionError

log = Logger()


class SpoolService(Service):
    """Opens the spool when started (a spool that cannot be opened ends the start), closes it when stopped.

    ``opened`` fires with the spool's :class:`~snsd.spool.Recovery` once it is open."""

    name = "spool"

    def __init__(self, spool, dedup_ttl: float):
        self.spool = spool
        self.dedup_ttl = dedup_ttl
        self.opened: Deferred | None = None

    def startService(self):
        try:
            self.opened = self.spool.open(dedup_ttl=self.dedup_ttl)
        except SpoolVersionError as e:
            # A later release's file, left as it is: the line says all there is to say.
            log.critical("cannot open the spool {path}: {error}", path=self.spool.path, error=e)
            raise SystemExit(1) from None
        except Exception as e:
            log.critical("cannot open the spool {path}: {error}", path=self.spool.path, error=e)
            raise
        Service.startService(self)

    def stopService(self):
        Service.stopService(self)
        return self.spool.close()


class ClosingService(Service):
    """Calls ``close`` when stopped: the results sink, the job's worker processes."""

    def __init__(self, name: str, close: Callable[[], object] | None):
        self.name = name
        self._close = close

    def stopService(self):
        Service.stopService(self)
        return maybeDeferred(self._close) if self._close is not None else succeed(None)


class Listener(Service):
    """Listens on a server endpoint and keeps the port it got, so that it can say where and stop it.

    It binds in ``privilegedStartService``, as twistd expects (before privileges are dropped),
    and a port it cannot have raises there: the daemon's start ends with nothing else running.
    Twisted's ``StreamServerEndpointService`` only does that with a private switch
    (``_raiseSynchronously``) and keeps the port in a private attribute; this is the same few
    lines on the public ``IStreamServerEndpoint.listen``.
    """

    def __init__(self, name: str, endpoint, factory, description: str):
        self.name = name
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.port = None  # the IListeningPort, once bound

    def privilegedStartService(self):
        Service.privilegedStartService(self)
        if self.port is not None:
            return
        outcome: list = []
        self.endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:  # an endpoint that binds later (none of the stream endpoints snsd documents)
            raise RuntimeError(f"{self.description}: the endpoint did not bind at once")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        self.port = outcome[0]

    def startService(self):
        if self.port is None:  # started without twistd, which binds first
            self.privilegedStartService()
        Service.startService(self)

    def stopService(self):
        Service.stopService(self)
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else succeed(None)
