"""A stub OpenAI-compatible server on loopback (http.server) for the bench client tests."""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STEP_S = 0.004


class StubHandler(BaseHTTPRequestHandler):
    """/v1/completions: one SSE chunk per token (plus an empty keep-alive chunk), or JSON."""

    protocol_version = "HTTP/1.1"
    seen: list = []  # request bodies
    peers: list = []  # (client address, request headers) of each request

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        type(self).peers.append((self.client_address, dict(self.headers)))
        if self.path != "/v1/completions":
            return self._send(404, b'{"error": {"message": "not found"}}')
        if body.get("max_tokens", 0) > 100:
            return self._send(400, b'{"error": {"message": "max_tokens too large"}}')
        n = body["max_tokens"]
        if not body.get("stream"):
            time.sleep(STEP_S * n)
            data = {"choices": [{"text": "x" * n, "index": 0}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": n}}
            return self._send(200, json.dumps(data).encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b'data: {"choices": [{"text": "", "index": 0}]}\n\n')  # no text: not a token
        for i in range(n):
            time.sleep(STEP_S)
            chunk = {"choices": [{"text": f"t{i}", "index": 0}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _send(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def stub_server():
    """The stub's base URL while it runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
