"""Wiring: builds the daemon's services from its settings, and owns the start and stop order.

    SNSDaemon (MultiService), children in start order
      ├── spool             SpoolService: opens the SQLite spool (a failure ends the start)
      ├── breaker           CircuitBreaker: state machine, cooldown timer
      ├── pool              WorkerPool: the sized thread pool jobs run on
      ├── job               ClosingService: the job's worker processes, closed on stop
      ├── sink              ClosingService: the results sink, closed on stop
      ├── dispatcher        Dispatcher: spool -> breaker -> pool -> sink -> spool
      ├── signature-checks  SignatureChecks: RSA checks in a thread, a reactor turn at a time
      ├── pruning           TimerService: forgets accepted MessageIds older than --dedup-ttl
      ├── deadlines         TimerService: 408 to connections whose request is late (site.Connections)
      ├── http              Listener(Site(SNSEndpoint + /healthz, /readyz))
      └── admin-http        Listener(Site(OpsRoutes)) on --admin-port (none with --admin-on-main-port)

``MultiService`` would stop its children all at once; a graceful drain needs an order:
refuse new work, let running jobs finish (bounded), stop listening, close the spool, stop
the pool.  That order is :meth:`SNSDaemon._stop`'s one list, and nowhere else.
"""

from __future__ import annotations

import gc
import os

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError

from snsd.admission import Admission, BreakerPolicy, Readiness
from snsd.breaker import CircuitBreaker
from snsd.config import Role, Settings
from snsd.dispatcher import BATCH_WAIT, Dispatcher
from snsd.exitsignal import exit_cleanly_after_sigterm
from snsd.logs import Logger
from snsd.ops import OpsRoutes, main_port_resource
from snsd.pool import WorkerPool
from snsd.services import ClosingService, Listener, SpoolService
from snsd.sinks import make_sink
from snsd.site import Connections, make_site
from snsd.spool import Recovery, SQLiteSpool
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

# Open connections on the admin listener.
ADMIN_MAX_CONNECTIONS = 32

# How often accepted MessageIds older than --dedup-ttl are forgotten by the spool.
PRUNE_INTERVAL = 300.0
# --role listener/worker: threads for the queue's blocking calls: a worker's two long polls, its deletes
# and heartbeats; a listener's three SendMessageBatch calls in flight.
SQS_IO_THREADS = 6
# How often a worker reads its queue's ApproximateNumberOfMessages (one request each).
QUEUE_DEPTH_INTERVAL = 15.0
# SQS keeps a message at most 14 days: the most an SNS envelope can have waited in it.
SQS_MAX_AGE = 14 * 24 * 3600.0


class SNSDaemon(MultiService):
    def __init__(
        self,
        *,
        settings: Settings,
        reactor,
        clock,
        endpoint: SNSEndpoint,
        dispatcher: Dispatcher,
        spool: SQLiteSpool,
        pool,
        breaker: CircuitBreaker,
        http: Listener,
        admin_http: Listener | None,
        checks: SignatureChecks | None,
        sink,
        job,
        dedup,
        connections: tuple[Connections, ...] = (),
        freeze_gc: bool = True,
        extras: tuple[Service, ...] = (),
    ):
        super().__init__()
        self._reactor = reactor
        self.settings = settings
        self.endpoint = endpoint
        self.dispatcher = dispatcher
        self.spool = spool
        self.pool = pool
        self.breaker = breaker
        self.http = http
        self.admin_http = admin_http
        self.checks = checks
        self.sink = sink
        self.dedup = dedup
        self._freeze_gc = freeze_gc
        # A worker keeps nothing locally (the queue holds its records): no spool, no pruning.
        self.spool_service = SpoolService(spool, settings.dedup_ttl) if spool is not None else None
        self.extras = extras
        self.job_service = ClosingService("job", getattr(job, "close", None))
        self.sink_service = ClosingService("sink", sink.close)
        # The first prune waits for the spool to open (see _prune); later ones every PRUNE_INTERVAL.
        self.pruning = TimerService(PRUNE_INTERVAL, self._prune)
        self.pruning.clock = clock
        self.pruning.setName("pruning")
        self.deadlines = TimerService(Connections.SWEEP_INTERVAL, _sweep_all, connections)
        self.deadlines.clock = clock
        self.deadlines.setName("deadlines")
        children = (breaker, pool, self.job_service, self.sink_service, *extras, dispatcher)
        children = ((self.spool_service,) if spool is not None else ()) + children
        children += (checks,) if checks is not None else ()
        children += (self.pruning,) if spool is not None else ()
        children += (self.deadlines, http)
        children += (admin_http,) if admin_http is not None else ()
        for service in children:
            service.setServiceParent(self)

    def privilegedStartService(self):
        # twistd binds before anything starts (and before it drops privileges).  A port it cannot
        # have ends the start here, with nothing else running, and twistd exits 1: a daemon that
        # ran on without listening would look healthy to its supervisor and take nothing.
        for listener in self._listeners():
            try:
                listener.privilegedStartService()
            except CannotListenError as e:
                log.critical("cannot listen on {port}: {error}", port=listener.description, error=e.socketError)
                for bound in self._listeners():
                    bound.stopService()
                raise
        Service.privilegedStartService(self)

    def _listeners(self) -> tuple[Listener, ...]:
        return (self.http,) if self.admin_http is None else (self.http, self.admin_http)

    def startService(self):
        if self.http.port is None:  # started without twistd, which binds first
            self.privilegedStartService()
        # The spool opens first of the children, before any thread starts: a spool that cannot be
        # opened ends the start.
        MultiService.startService(self)
        self._announce()
        # With a port of 0 the kernel picks one: say which, so scripts and tests can find it.
        address = self.http.port.getHost()
        log.info("listening on {host}:{port}", host=getattr(address, "host", address), port=getattr(address, "port", 0))
        if self.admin_http is not None:
            address = self.admin_http.port.getHost()
            log.info(
                "admin routes on {host}:{port}",
                host=getattr(address, "host", address),
                port=getattr(address, "port", 0),
            )
        else:
            log.warn("--admin-on-main-port: /breaker and /metrics are open on the main port (development only)")
        if self.spool_service is None:
            self._recovered(Recovery(pending=0, recent_message_ids=()))
            return
        opened = self.spool_service.opened
        opened.addCallback(self._recovered)
        opened.addErrback(lambda f: log.failure("could not open the spool {path}", f, path=self.spool.path))

    def _recovered(self, recovery):
        self.dedup.load(recovery.recent_message_ids)
        self.dispatcher.start(recovery)
        if self._freeze_gc:
            # Everything built so far (Twisted, boto3, pyarrow, the app) lives as long as the
            # process.  Frozen, the cyclic GC stops rescanning it (docs/performance.md).
            gc.freeze()
        if self.spool is None:
            log.info("ready: taking work from {queue}", queue=self.settings.queue)
        else:
            log.info("ready: {pending} records pending in {spool}", pending=recovery.pending, spool=self.spool.path)

    def _prune(self) -> Deferred | None:
        if not self.dispatcher.ready:  # the spool is not open yet (the TimerService's first call)
            return None
        # A TimerService whose call fails stops for good: one locked or full disk would end pruning,
        # and the messages table would grow for the rest of the process's life.
        return self.spool.prune().addErrback(
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
        timeout = self.settings.drain_timeout
        # The dispatcher's drain (below, in this same turn) is what refuses new POSTs from now on.
        if self.spool is not None:
            yield self._step("stopping the spool pruning", self.pruning.stopService)
        log.info(
            "draining: waiting up to {timeout}s for {running} running jobs; {pending} pending stay spooled",
            timeout=timeout,
            running=self.dispatcher.jobs_running,
            pending=self.dispatcher.pending,
        )
        finished = yield self.dispatcher.drain(timeout)
        in_memory = self.spool is not None and self.spool.in_memory
        if not finished and self.spool is None:
            log.warn(
                "drain timed out with {running} jobs running; their messages were made visible again",
                running=self.dispatcher.jobs_running,
            )
        elif not finished:
            log.warn(
                "drain timed out with {running} jobs running; "
                + (
                    "the in-memory spool cannot keep them: dead letters below"
                    if in_memory
                    else "they stay spooled and run again at next start"
                ),
                running=self.dispatcher.jobs_running,
            )
        if in_memory:
            # Nothing survives this process: log every record still owed a result.
            yield self._step(
                "logging the in-memory spool's records", lambda: self.dispatcher.dead_letter_unstarted("drain_timeout")
            )

        def stop_pool():
            # Jobs still running after a timed-out drain are left to their (daemon) threads.
            self.pool.stop(join=finished)
            return self.pool.stopService()

        # The one stop order; each child is stopped once, here.
        for what, stop in (
            ("closing the HTTP port", self.http.stopService),
            ("closing the admin port", self.admin_http.stopService if self.admin_http is not None else None),
            ("stopping the request deadlines", self.deadlines.stopService),
            ("stopping the signature checks", self.checks.stopService if self.checks is not None else None),
            ("closing the spool", self.spool_service.stopService if self.spool_service is not None else None),
            ("stopping the worker pool", stop_pool),
            ("stopping the job processes", self.job_service.stopService),
            ("closing the results sink", self.sink_service.stopService),
            ("stopping the dispatcher", self.dispatcher.stopService),
            *((f"stopping the {extra.name}", _without_join(extra)) for extra in self.extras),
            ("stopping the breaker", self.breaker.stopService),
        ):
            if stop is not None:
                yield self._step(what, stop)
        Service.stopService(self)
        # twistd re-raises the signal that stopped it (exit status 143); a completed drain is a
        # clean, intended exit, so report it as 0 to supervisors.
        exit_cleanly_after_sigterm(self._reactor)
        log.info("stopped")

    def _announce(self) -> None:
        s = self.settings
        log.info(
            "snsd {role} on {port}: {workers} workers, breaker mode {mode}, spool {spool}, results to {sink}",
            role=s.role.value,
            port=s.port,
            workers=s.workers,
            mode=s.breaker_mode.value,
            spool=s.spool if self.spool is not None else "none (the queue)",
            sink=self.sink.describe(),
        )
        if not s.verify_signatures:
            log.warn("signature verification is OFF: any POST is trusted. Use only for local experiments.")
        if s.trusted_host:
            log.warn(
                "trusting emulator hosts {hosts} for certificates and subscription URLs (http allowed)",
                hosts=", ".join(s.trusted_host),
            )
        if not s.topic_arn:
            log.warn("no --topic-arn given: messages from every topic are accepted")
        if s.spool == ":memory:" and self.spool is not None:
            log.warn("--spool :memory: keeps accepted records in memory only; a crash loses them")


def _sweep_all(connections: tuple[Connections, ...]) -> None:
    for each in connections:
        try:
            each.sweep()
        except Exception:
            # A TimerService whose call raises stops for good: log, and sweep again next time.
            log.failure("sweeping late requests failed")


def job_for(settings: Settings):
    """The job to run per record: the built-in data-quality job in worker processes (unless
    ``--job-processes 0``), anything else as loaded.  Called at startup, never while parsing."""
    if settings.builtin_job and settings.job_processes > 0:
        from snsd.dq.processes import ProcessPoolJob

        # The rule book the options validated, not the path: the children must not re-read the file.
        return ProcessPoolJob(settings.job.rulebook, settings.job_processes, nice=settings.job_nice)
    return settings.job


def build_daemon(
    reactor,
    settings: Settings,
    *,
    clock=None,
    http_client=None,
    pool_factory=WorkerPool,
    spool_factory=SQLiteSpool,
    queue_factory=None,
    offload_signatures: bool = True,
    batch_wait: float = BATCH_WAIT,
    freeze_gc: bool = True,
) -> SNSDaemon:
    """The daemon, wired from ``settings``.

    ``reactor`` listens and runs threads; ``clock`` (the reactor by default) is every timer's
    time; ``http_client`` (treq's API; by default treq, through ``HTTPS_PROXY`` when set) fetches
    certificates and confirms subscriptions;
    ``pool_factory(reactor, workers, nice=...)`` makes the job pool (a Service with ``submit``);
    ``spool_factory(reactor, path, clock=...)`` the spool;
    ``queue_factory(url, io)`` the SQS queue of ``--role listener/worker`` (``io``: a pool from
    ``pool_factory`` for its blocking calls).  Tests pass in-memory ones of each."""
    clock = clock or reactor
    if http_client is None:
        http_client = make_http_client(reactor, os.environ)
    role = settings.role
    breaker = CircuitBreaker(
        clock,
        max_failures=settings.breaker_max_failures,
        cooldown=settings.breaker_cooldown,
        max_cooldown=settings.breaker_max_cooldown,
        half_open_successes=settings.breaker_half_open_successes,
    )
    host_trust = HostTrust(settings.trusted_host)
    checks = SignatureChecks(reactor, clock=clock) if offload_signatures else None
    certificates = CertificateStore(
        http_client,
        clock,
        host_trust,
        preloaded=load_certificate_dir(settings.cert_dir) if settings.cert_dir else None,
    )
    topics = TopicAllowList(settings.topic_arn)

    def verifier_for(max_age: float) -> MessageVerifier:
        return MessageVerifier(
            certificates,
            host_trust,
            topics,
            clock,
            max_age=max_age,
            verify_signatures=settings.verify_signatures,
            checks=checks,
        )

    verifier = verifier_for(settings.max_age)
    # A listener runs no jobs: one idle thread keeps /readyz's pool check meaningful.
    pool = pool_factory(reactor, 1 if role is Role.LISTENER else settings.workers, nice=settings.job_nice)
    spool = spool_factory(reactor, settings.spool, clock=clock) if role is not Role.WORKER else None
    policy = BreakerPolicy(breaker, settings.breaker_mode)
    extras: tuple = ()
    if role is Role.ALL:
        sink = make_sink(settings)
        job = job_for(settings)
        dispatcher = Dispatcher(
            spool,
            pool,
            breaker,
            job,
            sink,
            clock,
            workers=settings.workers,
            policy=policy,
            max_pending=settings.max_pending,
            batch_wait=batch_wait,
        )
    else:
        from snsd.sqs.forwarder import Forwarder
        from snsd.sqs.queue import SQSQueue
        from snsd.sqs.worker import QueueDepth, QueueWorker

        # The queue's blocking boto3 calls get threads of their own (snsd/sqs/queue.py), never the job pool's.
        # Niced like the job threads: under CPU contention the reactor answering SNS comes first.
        io = pool_factory(reactor, SQS_IO_THREADS, nice=settings.job_nice)
        io.setName("sqs-io")
        queue = (queue_factory or SQSQueue)(settings.queue, io)
        extras = (io,)
        if role is Role.LISTENER:
            sink, job = QueueTarget(settings.queue), None
            dispatcher = Forwarder(spool, queue, clock, max_pending=settings.max_pending)
        else:
            sink = make_sink(settings)
            job = job_for(settings)
            dispatcher = QueueWorker(
                queue,
                pool,
                breaker,
                job,
                sink,
                clock,
                # A message may wait in the queue for days: its signed timestamp's age means nothing there.
                verifier_for(SQS_MAX_AGE),
                workers=settings.workers,
                visibility=settings.visibility_timeout,
            )
            depth = TimerService(QUEUE_DEPTH_INTERVAL, QueueDepth(queue))
            depth.clock = clock
            depth.setName("queue-depth")
            extras += (depth,)
    if role is Role.WORKER:
        from snsd.sqs.worker import NotAListener

        admission = NotAListener(dispatcher)
        dedup = NoDedup()
    else:
        dedup = AcceptedIds(DedupCache(clock, ttl=settings.dedup_ttl), spool, max_age=settings.max_age)
        admission = Admission(
            dispatcher,
            dedup,
            policy,
            SubscriptionConfirmer(http_client, host_trust, clock=clock),
            clock,
            ack=settings.ack,
        )
    endpoint = SNSEndpoint(
        verifier=verifier,
        admission=admission,
        clock=clock,
        max_body=settings.max_body,
        basic_auth=settings.basic_auth,
        allow_raw_delivery=settings.allow_raw_delivery,
    )
    ops = OpsRoutes(breaker=breaker, readiness=Readiness(pool, dispatcher), basic_auth=settings.basic_auth)
    main = main_port_resource(endpoint, ops, admin_on_main_port=settings.admin_on_main_port)
    connections = Connections(
        clock,
        deadline=settings.request_deadline,
        max_total=settings.max_connections,
        max_per_peer=settings.max_connections_per_peer,
    )
    site = make_site(main, settings.max_body, connections, clock=clock)
    http = Listener("http", serverFromString(reactor, settings.port), site, settings.port)
    admin_http = None
    if not settings.admin_on_main_port:
        # Loopback operators and Prometheus: a small cap of its own, outside --max-connections.
        admin_connections = Connections(clock, deadline=settings.request_deadline, max_total=ADMIN_MAX_CONNECTIONS)
        admin_site = make_site(ops.resource(), connections=admin_connections, clock=clock)
        admin_http = Listener(
            "admin-http", serverFromString(reactor, settings.admin_port), admin_site, settings.admin_port
        )
    return SNSDaemon(
        settings=settings,
        reactor=reactor,
        clock=clock,
        endpoint=endpoint,
        dispatcher=dispatcher,
        spool=spool,
        pool=pool,
        breaker=breaker,
        http=http,
        admin_http=admin_http,
        connections=(connections,) if admin_http is None else (connections, admin_connections),
        checks=checks,
        sink=sink,
        job=job,
        dedup=dedup,
        freeze_gc=freeze_gc,
        extras=extras,
    )


def _without_join(service):
    """Stops ``service``; a thread pool's threads are not waited for: one may sit in a 20 s long
    poll whose messages, if any, simply come back after their visibility timeout."""

    def stop():
        if hasattr(service, "stop"):
            service.stop(join=False)
        return service.stopService()

    return stop


class QueueTarget:
    """A listener's stand-in for the results sink: its records go to the queue, not to results."""

    def __init__(self, url: str):
        self.url = url

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"the SQS queue {self.url} (workers write them)"


class NoDedup:
    """A worker takes no SNS POSTs, so it remembers no MessageIds."""

    def load(self, recent_message_ids) -> None:
        pass
