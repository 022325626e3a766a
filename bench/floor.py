"""The floor: a bare Klein route that reads the body, parses the JSON and answers 200.

The ceiling any Klein listener on this interpreter can reach; snsd's ingest is measured
against it.  Like snsd, it writes no access-log line per request.

By default it runs on Twisted's default Site, which parses the Content-Type of every POST with
the ``email`` package (about 70 microseconds here) in case it is a form; snsd turns that off.
``--no-form-parsing`` turns it off here too, for the stricter comparison bench/load.py also prints.
``--reuse-port`` binds with SO_REUSEPORT, so several floors can share one port and the kernel
spreads the connections over them (bench/ceiling.py: the floor in more than one process).

    python bench/floor.py --port 0 [--no-form-parsing]   # prints "listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import json
import socket

from klein import Klein
from twisted.internet import reactor
from twisted.web.server import Site

app = Klein()


@app.route("/", methods=["POST"])
def receive(request):
    fields = json.loads(request.content.read())
    request.setHeader("Content-Type", "application/json")
    return json.dumps({"status": "ok", "type": fields.get("Type")}).encode()


class QuietSite(Site):
    def log(self, request):
        pass


def listen_shared(port_number: int, site):
    """Listen on a port other processes may listen on too: Twisted's listenTCP cannot set
    SO_REUSEPORT, so bind the socket here and hand it to the reactor."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port_number))
    sock.listen(128)
    sock.setblocking(False)
    port = reactor.adoptStreamPort(sock.fileno(), socket.AF_INET, site)
    sock.close()  # the reactor holds its own duplicate of the descriptor
    return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-form-parsing", action="store_true", help="Site(parsePOSTFormSubmission=False), as snsd")
    parser.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT, to share --port")
    args = parser.parse_args()
    site = QuietSite(app.resource(), parsePOSTFormSubmission=not args.no_form_parsing)
    if args.reuse_port:
        port = listen_shared(args.port, site)
    else:
        port = reactor.listenTCP(args.port, site, interface="127.0.0.1")
    print(f"listening on 127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
