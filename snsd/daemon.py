"""Wiring: builds the daemon's services from its settings, and owns the shutdown order.

    SNSDaemon (MultiService)
      ├── breaker           CircuitBreaker: state machine, cooldown timer
      ├── pool              WorkerPool: the sized thread pool jobs run on
      ├── dispatcher        Dispatcher: spool -> breaker -> pool -> sink -> spool
      ├── signature-checks  SignatureChecks: RSA checks in a thread, a reactor turn at a time
      └── http              StreamServerEndpointService(Site(SNSEndpoint))

``MultiService`` would stop its children all at once; a graceful drain needs an order:
refuse new work, let running jobs finish (bounded), stop listening, close the spool, stop
the pool.  That order lives in :meth:`SNSDaemon.stopService` and nowhere else.
"""

from __future__ import annotations

import gc
import os
import signal

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from snsd.admission import Admission, BreakerPolicy, Readiness
from snsd.breaker import CircuitBreaker
from snsd.dispatcher import Dispatcher
from snsd.pool import WorkerPool
from snsd.sinks import make_sink
from snsd.site import make_site
from snsd.spool import SpoolVersionError, SQLiteSpool
from snsd.trust.certs import CertificateStore, load_certificate_dir
from snsd.trust.confirm import SubscriptionConfirmer
from snsd.trust.dedup import AcceptedIds, DedupCache
from snsd.trust.hosts import HostTrust
from snsd.trust.offload import SignatureChecks
from snsd.trust.proxy import make_http_client
from snsd.trust.topics import TopicAllowList
from snsd.trust.verifier import MessageVerifier
from snsd.web import SNSEndpoint

log = Logger()

# How often accepted MessageIds older than --dedup-ttl are forgotten by the spool.
PRUNE_INTERVAL = 300.0


class SNSDaemon(MultiService):
    def __init__(
        self,
        *,
        endpoint: SNSEndpoint,
        dispatcher: Dispatcher,
        spool: SQLiteSpool,
        pool: WorkerPool,
        breaker: CircuitBreaker,
        http: StreamServerEndpointService,
        checks: SignatureChecks,
        sink,
        dedup,
        settings: dict,
        reactor,
    ):
        super().__init__()
        self._reactor = reactor
        self._pruning: LoopingCall | None = None
        self.endpoint = endpoint
        self.dispatcher = dispatcher
        self.spool = spool
        self.pool = pool
        self.breaker = breaker
        self.http = http
        self.checks = checks
        self.sink = sink
        self.dedup = dedup
        self.settings = settings
        for service in (breaker, pool, dispatcher, checks, http):
            service.setServiceParent(self)

    def privilegedStartService(self):
        # twistd binds before anything starts (and before it drops privileges).  A port it cannot
        # have ends the start here, with nothing else running, and twistd exits 1: a daemon that
        # ran on without listening would look healthy to its supervisor and take nothing.
        try:
            MultiService.privilegedStartService(self)
        except CannotListenError as e:
            log.critical("cannot listen on {port}: {error}", port=self.settings["port"], error=e.socketError)
            raise

    def startService(self):
        if self.http._waitingForPort is None:  # started without twistd, which binds first
            self.privilegedStartService()
        # Before any thread starts, for the same reason: a spool that cannot be opened ends the start.
        try:
            opened = self.spool.open(dedup_ttl=self.settings["dedup-ttl"])
        except SpoolVersionError as e:
            # A later release's file, left as it is: the line says all there is to say.
            log.critical("cannot open the spool {path}: {error}", path=self.spool.path, error=e)
            raise SystemExit(1) from None
        except Exception as e:
            log.critical("cannot open the spool {path}: {error}", path=self.spool.path, error=e)
            raise
        MultiService.startService(self)
        self._announce()
        # With a port of 0 the kernel picks one: say which, so scripts and tests can find it.
        self.http._waitingForPort.addCallback(self._listening)
        opened.addCallback(self._recovered)
        opened.addErrback(lambda f: log.failure("could not open the spool {path}", f, path=self.spool.path))

    def _listening(self, port):
        if port is None:  # the listen failed, and privilegedStartService said so
            return None
        address = port.getHost()
        log.info("listening on {host}:{port}", host=getattr(address, "host", address), port=getattr(address, "port", 0))
        return port

    def _recovered(self, recovery):
        self.dedup.load(recovery.recent_message_ids)
        self.dispatcher.start(recovery)
        self._pruning = LoopingCall(self._prune)
        self._pruning.clock = self._reactor
        self._pruning.start(PRUNE_INTERVAL, now=False).addErrback(lambda f: log.failure("pruning the spool failed", f))
        # Everything built so far (Twisted, boto3, pyarrow, the app) lives as long as the process.
        # Frozen, the cyclic GC stops rescanning it: full collections under load took 27-45 ms of
        # reactor time each, about once a second, and were the tail of the ingest latency.
        gc.freeze()
        log.info("ready: {pending} records pending in {spool}", pending=recovery.pending, spool=self.spool.path)

    def _prune(self) -> Deferred:
        # A LoopingCall whose call fails stops for good: one locked or full disk would end pruning,
        # and the messages table would grow for the rest of the process's life.
        return self.spool.prune(self.settings["dedup-ttl"]).addErrback(
            lambda f: log.failure("pruning the spool failed; trying again in {interval:g}s", f, interval=PRUNE_INTERVAL)
        )

    def stopService(self):
        return self._stop().addErrback(lambda f: log.failure("error while stopping", f))

    @staticmethod
    def _step(what: str, action) -> Deferred:
        """One teardown step: if it fails, say so and go on, so every later step still runs."""
        return maybeDeferred(action).addErrback(lambda f: log.failure("error while {what}", f, what=what))

    @inlineCallbacks
    def _stop(self):
        timeout = self.settings["drain-timeout"]
        # The dispatcher's drain (below, in this same turn) is what refuses new POSTs from now on.
        if self._pruning is not None and self._pruning.running:
            self._pruning.stop()
        log.info(
            "draining: waiting up to {timeout}s for {running} running jobs; {pending} pending stay spooled",
            timeout=timeout,
            running=self.dispatcher.jobs_running,
            pending=self.dispatcher.pending,
        )
        finished = yield self.dispatcher.drain(timeout)
        if not finished:
            log.warn(
                "drain timed out with {running} jobs running; "
                + (
                    "the in-memory spool cannot keep them: dead letters below"
                    if self.spool.in_memory
                    else "they stay spooled and run again at next start"
                ),
                running=self.dispatcher.jobs_running,
            )
        if self.spool.in_memory:
            # Nothing survives this process: log every record still owed a result.
            yield self._step(
                "logging the in-memory spool's records", lambda: self.dispatcher.dead_letter_unstarted("drain_timeout")
            )
        yield self._step("closing the HTTP port", self.http.stopService)
        yield self._step("stopping the signature checks", self.checks.stopService)
        yield self._step("closing the spool", self.spool.close)
        yield self._step("stopping the worker pool", lambda: self.pool.stop(join=finished))
        close_job = getattr(self.dispatcher.job, "close", None)
        if close_job is not None:
            yield self._step("stopping the job processes", close_job)
        yield self._step("closing the results sink", self.sink.close)
        # The children are stopped here, in this order; MultiService.stopService would stop
        # them all again, at once.
        for service in (self.pool, self.dispatcher, self.breaker):
            service.stopService()
        Service.stopService(self)
        # twistd re-raises the signal that stopped it (exit status 143); a completed drain is a
        # clean, intended exit, so report it as 0 to supervisors.
        if getattr(self._reactor, "_exitSignal", None) == signal.SIGTERM:
            self._reactor._exitSignal = None
        log.info("stopped")

    def _announce(self) -> None:
        s = self.settings
        log.info(
            "snsd on {port}: {workers} workers, breaker mode {mode}, spool {spool}, results to {sink}",
            port=s["port"],
            workers=s["workers"],
            mode=s["breaker-mode"],
            spool=s["spool"],
            sink=self.sink.describe(),
        )
        if not s["verify-signatures"]:
            log.warn("signature verification is OFF: any POST is trusted. Use only for local experiments.")
        if s["trusted-host"]:
            log.warn(
                "trusting emulator hosts {hosts} for certificates and subscription URLs (http allowed)",
                hosts=", ".join(s["trusted-host"]),
            )
        if not s["topic-arn"]:
            log.warn("no --topic-arn given: messages from every topic are accepted")
        if s["spool"] == ":memory:":
            log.warn("--spool :memory: keeps accepted records in memory only; a crash loses them")


def build_daemon(reactor, settings: dict, http_client=None, clock=None) -> SNSDaemon:
    """``http_client`` (treq's API) makes the certificate and SubscribeURL requests: by default
    treq, through ``HTTPS_PROXY`` when set.  ``clock`` defaults to the reactor."""
    clock = reactor if clock is None else clock
    if http_client is None:
        http_client = make_http_client(reactor, os.environ)
    breaker = CircuitBreaker(
        clock,
        max_failures=settings["breaker-max-failures"],
        cooldown=settings["breaker-cooldown"],
        max_cooldown=settings["breaker-max-cooldown"],
        half_open_successes=settings["breaker-half-open-successes"],
    )
    pool = WorkerPool(reactor, settings["workers"], nice=settings["job-nice"])
    spool = SQLiteSpool(reactor, settings["spool"])
    sink = make_sink(settings)
    policy = BreakerPolicy(breaker, settings["breaker-mode"])
    dispatcher = Dispatcher(
        spool,
        pool,
        breaker,
        settings["job"],
        sink,
        clock,
        workers=settings["workers"],
        policy=policy,
        max_pending=settings["max-pending"],
    )
    host_trust = HostTrust(settings["trusted-host"])
    checks = SignatureChecks(reactor)
    verifier = MessageVerifier(
        CertificateStore(
            http_client,
            clock,
            host_trust,
            preloaded=load_certificate_dir(settings["cert-dir"]) if settings["cert-dir"] else None,
        ),
        host_trust,
        TopicAllowList(settings["topic-arn"]),
        clock,
        max_age=settings["max-age"],
        verify_signatures=settings["verify-signatures"],
        checks=checks,
    )
    dedup = AcceptedIds(DedupCache(clock, ttl=settings["dedup-ttl"]), spool, max_age=settings["max-age"])
    admission = Admission(
        dispatcher,
        dedup,
        policy,
        SubscriptionConfirmer(http_client, host_trust, clock=clock),
        clock,
        ack=settings["ack"],
    )
    endpoint = SNSEndpoint(
        verifier=verifier,
        admission=admission,
        readiness=Readiness(pool, dispatcher),
        breaker=breaker,
        clock=clock,
        max_body=settings["max-body"],
        basic_auth=settings["basic-auth"],
        allow_raw_delivery=settings["allow-raw-delivery"],
    )
    http = StreamServerEndpointService(serverFromString(reactor, settings["port"]), make_site(endpoint))
    http._raiseSynchronously = True  # as twisted.application.strports.service does: see privilegedStartService
    http.setName("http")
    return SNSDaemon(
        endpoint=endpoint,
        dispatcher=dispatcher,
        spool=spool,
        pool=pool,
        breaker=breaker,
        http=http,
        checks=checks,
        sink=sink,
        dedup=dedup,
        settings=settings,
        reactor=reactor,
    )
