"""A local HTTP server that answers the Hugging Face Hub's API calls for creating a model repository and
committing small files to it (create, validate-yaml, preupload with every file "regular", commit), and
records every request: what `adpa push-to-hub` sends, checked without the hub (none is reachable here)."""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "c0ffee" * 6 + "c0ff"  # 40 hex digits


class FakeHub:
    def __init__(self):
        self.requests: list[dict] = []
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool, "files": {path: bytes}}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append({"method": "POST", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                status, answer = hub.answer(self.path.split("?")[0], body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str, body: bytes) -> tuple[int, dict]:
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            private = bool(req.get("private")) or req.get("visibility") == "private"
            self.repos.setdefault(repo, {"private": private, "files": {}})
            return 200, {"url": f"{self.url}/{repo}", "name": repo}
        if path == "/api/validate-yaml":
            return 200, {}
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
        if not m or m.group(1) not in self.repos:
            return 404, {"error": f"no route or repository for {path}"}
        repo, what = m.group(1), m.group(2)
        if what == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                self.repos[repo]["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{COMMIT}", "commitOid": COMMIT, "pullRequestUrl": None}
