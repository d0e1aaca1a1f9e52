"""A workload for tests: sleeps ``argv[1]`` seconds (its start-up), then serves HTTP.

It binds the port its lease granted (``AICONTRACT_PORT_HTTP``) and answers every
GET with 200 and its own port, so a client can tell which lease answered.
Standard library only: it runs in the test interpreter's Python, nothing else.
"""

from __future__ import annotations

import http.server
import os
import sys
import time


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = os.environ["AICONTRACT_PORT_HTTP"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the test reads answers, not logs


def main() -> None:
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)
    port = int(os.environ["AICONTRACT_PORT_HTTP"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
