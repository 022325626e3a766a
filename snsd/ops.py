"""The operator's HTTP routes: health and readiness, the breaker, metrics; and which port serves them.

``/healthz`` and ``/readyz`` change nothing and probes need them where the traffic is: the main
port serves them, open, and so does the admin listener.  ``POST /breaker/open`` stops all work and
``/metrics`` tells how the daemon is doing: they, and the rest of the breaker routes, are served
only by the admin listener (``--admin-port``, loopback by default), unless ``--admin-on-main-port``
(development, ``make run``) puts them on the main port too.  ``--basic-auth`` applies to them
wherever they are served.
"""

from __future__ import annotations

from klein import Klein
from twisted.web.resource import Resource

from snsd.logs import Logger
from snsd.web import Refused, answer_error, json_answer, peer_of, require_basic_auth

log = Logger()

HEALTH_PATHS = frozenset({b"/healthz", b"/readyz"})
ADMIN_PATHS = frozenset({b"/breaker", b"/breaker/reset", b"/breaker/open", b"/metrics"})


class OpsRoutes:
    app = Klein()

    def __init__(self, *, breaker, readiness, basic_auth: str | None = None):
        self.breaker = breaker
        self.readiness = readiness
        self._basic_auth = basic_auth.encode("utf-8") if basic_auth else None

    def resource(self):
        return self.app.resource()

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request):
        return json_answer(request, 200, {"status": "alive"})

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request):
        checks = self.readiness.checks()
        ready = self.readiness.ready(checks)
        return json_answer(request, 200 if ready else 503, {"status": "ready" if ready else "unready", **checks})

    @app.route("/breaker", methods=["GET"])
    def breaker_state(self, request):
        require_basic_auth(request, self._basic_auth)
        return json_answer(request, 200, self.breaker.snapshot())

    @app.route("/breaker/reset", methods=["POST", "GET"])
    def breaker_reset(self, request):
        require_basic_auth(request, self._basic_auth)
        self.breaker.reset()
        log.info("breaker reset by {peer}", peer=peer_of(request))
        return json_answer(request, 200, self.breaker.snapshot())

    @app.route("/breaker/open", methods=["POST"])
    def breaker_open(self, request):
        require_basic_auth(request, self._basic_auth)
        self.breaker.force_open()
        log.info("breaker forced open by {peer}", peer=peer_of(request))
        return json_answer(request, 200, self.breaker.snapshot())

    @app.route("/metrics", methods=["GET"])
    def metrics_route(self, request):
        require_basic_auth(request, self._basic_auth)
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        request.setHeader("Content-Type", CONTENT_TYPE_LATEST)
        return generate_latest()

    @app.handle_errors(Refused)
    def refused(self, request, failure):
        refused = failure.value
        return json_answer(request, refused.status, refused.body, refused.headers)

    @app.handle_errors(Exception)
    def unexpected(self, request, failure):
        return answer_error(request, failure)


class ByPath(Resource):
    """Sends a request whose path is one of ``paths`` to ``chosen``, and every other to ``rest``.

    A leaf: the Klein resources behind it route on the whole path themselves."""

    isLeaf = True

    def __init__(self, paths: frozenset[bytes], chosen, rest):
        super().__init__()
        self.paths = paths
        self.chosen = chosen
        self.rest = rest

    def render(self, request):
        return (self.chosen if request.path in self.paths else self.rest).render(request)


def main_port_resource(endpoint, ops: OpsRoutes, admin_on_main_port: bool = False):
    """The SNS endpoint, with the health routes (and the admin routes, for development)."""
    paths = HEALTH_PATHS | ADMIN_PATHS if admin_on_main_port else HEALTH_PATHS
    return ByPath(paths, ops.resource(), endpoint.resource())
