"""A tiny OpenAI-compatible server: the inference capacity the agent leases.

Standard library only. It answers ``GET /v1/models``, ``POST
/v1/chat/completions`` (a computed reply: the last user message's words,
reversed, with token counts) and ``GET /healthz`` (readiness), on the port its
lease granted (``AICONTRACT_PORT_HTTP``). It takes ``--startup`` seconds to
"load its model" before it listens, and with ``--slow-after N`` it answers
every chat request after the N-th ``--slow-ms`` late — a server that degrades,
so its lease breaks a latency objective and is renegotiated.

Run by the agent through its lease (examples/agent/agent.py); by hand:
``AICONTRACT_PORT_HTTP=8000 python examples/agent/server.py``.
"""

from __future__ import annotations

import argparse
import http.server
import itertools
import json
import os
import threading
import time
from typing import Any

MODEL = "tiny-reverser"


class Handler(http.server.BaseHTTPRequestHandler):
    """One request; the server's settings are on ``self.server``."""

    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"status": "ready", "port": self.server.server_port})
        elif self.path == "/v1/models":
            model = {"id": MODEL, "object": "model", "created": 0, "owned_by": "aicontract"}
            self._send(200, {"object": "list", "data": [model]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        length = int(self.headers.get("Content-Length", "0"))
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
            messages = request["messages"]
        except (ValueError, KeyError, TypeError):
            self._send(400, {"error": {"message": "a JSON body with messages", "type": "invalid"}})
            return
        served = self.server.next_request()
        if self.server.slow_after is not None and served > self.server.slow_after:
            time.sleep(self.server.slow_ms / 1000)  # degraded: far over a 100 ms p99
        prompt = next(
            (m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        words = str(prompt).split()
        reply = " ".join(reversed(words)) or "(nothing to reverse)"
        self._send(
            200,
            {
                "id": f"chatcmpl-{self.server.server_port}-{served}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model", MODEL),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": len(words),
                    "completion_tokens": len(reply.split()),
                    "total_tokens": len(words) + len(reply.split()),
                },
                # Which lease's server answered: the agent shows it.
                "system_fingerprint": f"port-{self.server.server_port}",
            },
        )

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the agent prints what matters


class Server(http.server.ThreadingHTTPServer):
    """A threading HTTP server that counts chat requests."""

    daemon_threads = True

    def __init__(self, port: int, slow_after: int | None, slow_ms: float) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.slow_after, self.slow_ms = slow_after, slow_ms
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def next_request(self) -> int:
        """The number of this chat request (1, 2, ...)."""
        with self._lock:
            return next(self._count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--startup", type=float, default=0.5, help="seconds before it listens")
    parser.add_argument("--slow-after", type=int, default=None, help="chat requests served fast")
    parser.add_argument("--slow-ms", type=float, default=300.0, help="delay once slow (ms)")
    parser.add_argument("--tag", default="", help="ignored; lets a test find its processes")
    args = parser.parse_args()
    time.sleep(args.startup)  # loading the model
    server = Server(int(os.environ["AICONTRACT_PORT_HTTP"]), args.slow_after, args.slow_ms)
    server.serve_forever()


if __name__ == "__main__":
    main()
