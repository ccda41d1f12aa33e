"""Shared fixtures (``fake_api``: the Kubernetes API double of :mod:`helpers`); the repository root on sys.path."""
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from helpers import FakeCluster  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture
def fake_api():
    cluster = FakeCluster()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _do(self):
            u = urlparse(self.path)
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n)) if n else None
            status, out = cluster.handle(self.command, unquote(u.path), parse_qs(u.query), body)
            data = out.encode() if isinstance(out, str) else json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(out, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _do

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    cluster.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield cluster
    srv.shutdown()
    srv.server_close()
