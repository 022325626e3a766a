"""The floor: a bare Klein route that reads the body, parses the JSON and answers 200.

The ceiling any Klein listener on this interpreter can reach; snsd's ingest is measured
against it.  Like snsd, it writes no access-log line per request.

By default it runs on Twisted's default Site, which parses the Content-Type of every POST with
the ``email`` package (about 70 microseconds here) in case it is a form; snsd turns that off.
``--no-form-parsing`` turns it off here too, for the stricter comparison bench/load.py also prints.

    python bench/floor.py --port 0 [--no-form-parsing]   # prints "listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import json

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-form-parsing", action="store_true", help="Site(parsePOSTFormSubmission=False), as snsd")
    args = parser.parse_args()
    site = QuietSite(app.resource(), parsePOSTFormSubmission=not args.no_form_parsing)
    port = reactor.listenTCP(args.port, site, interface="127.0.0.1")
    print(f"listening on 127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
