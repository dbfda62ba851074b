#!/usr/bin/env python3
"""A misbehaving front for a real registry, for tests/registry/run.

Listens on 127.0.0.1:PORT and forwards every request to UPSTREAM (a plain-HTTP
docker-registry), optionally:
  --bearer REALM_HOST       demand a bearer token (Docker's token spec); the token service
                            is this proxy's /token
  --token-user USER:PASS    the token service wants these basic credentials
  --cut DIGEST:N            the first GET of that blob sends its full Content-Length but
                            only N bytes, then closes the connection (later ones are whole)
  --cut-always DIGEST:N     every GET of that blob breaks off at its byte N (a Range
                            request from N on gets headers and no body)
  --corrupt DIGEST          flip one byte of that blob's (or manifest's) body
  --status PATH_PART:CODE   answer CODE to requests whose path contains PATH_PART
  --redirect-blobs          answer blob GETs with 307 to http://localhost:PORT/_r/..., a
                            different origin, served without auth (as object storage is)
Each request is logged to --log as one line: METHOD PATH range=... auth=...
"""
import argparse
import http.client
import http.server
import json
import secrets
import socketserver
import sys
import threading
import base64

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--upstream", required=True)
p.add_argument("--log", required=True)
p.add_argument("--bearer", action="store_true")
p.add_argument("--token-user")
p.add_argument("--cut", action="append", default=[])
p.add_argument("--cut-always", action="append", default=[])
p.add_argument("--corrupt", action="append", default=[])
p.add_argument("--status", action="append", default=[])
p.add_argument("--redirect-blobs", action="store_true")
args = p.parse_args()

lock = threading.Lock()
cut_once = {d: int(n) for d, n in (c.rsplit(":", 1) for c in args.cut)}
cut_always = {d: int(n) for d, n in (c.rsplit(":", 1) for c in args.cut_always)}
statuses = [(s.rsplit(":", 1)[0], int(s.rsplit(":", 1)[1])) for s in args.status]
tokens = set()
up_host, up_port = args.upstream.rsplit(":", 1)


def log(line):
    with lock, open(args.log, "a") as f:
        f.write(line + "\n")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_plain(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.handle_any()

    def do_GET(self):
        self.handle_any()

    def handle_any(self):
        path = self.path
        auth = self.headers.get("Authorization", "")
        log(f"{self.command} {path} range={self.headers.get('Range', '')} auth={auth.split(' ')[0] if auth else ''} host={self.headers.get('Host', '')}")
        if path.startswith("/token"):
            return self.token()
        for part, code in statuses:
            if part in path:
                return self.send_plain(code, b'{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}',
                                       [("Content-Type", "application/json")])
        redirected = path.startswith("/_r/")
        if redirected:
            path = path[3:]
        elif args.bearer and path.startswith("/v2/"):
            tok = auth[7:] if auth.startswith("Bearer ") else ""
            if tok not in tokens:
                repo = path[4:].rsplit("/", 2)[0] if path.count("/") >= 4 else ""
                challenge = f'Bearer realm="http://127.0.0.1:{args.port}/token",service="proxy-test"'
                if repo:
                    challenge += f',scope="repository:{repo}:pull"'
                return self.send_plain(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                                       [("WWW-Authenticate", challenge), ("Content-Type", "application/json")])
        if args.redirect_blobs and not redirected and "/blobs/sha256:" in path and self.command == "GET":
            return self.send_plain(307, b"", [("Location", f"http://localhost:{args.port}/_r{path}")])
        self.forward(path)

    def token(self):
        if args.token_user:
            want = "Basic " + base64.b64encode(args.token_user.encode()).decode()
            if self.headers.get("Authorization") != want:
                return self.send_plain(401, b'{"details":"bad credentials"}', [("Content-Type", "application/json")])
        tok = secrets.token_hex(16)
        with lock:
            tokens.add(tok)
        self.send_plain(200, json.dumps({"token": tok, "expires_in": 300}).encode(), [("Content-Type", "application/json")])

    def forward(self, path):
        conn = http.client.HTTPConnection(up_host, int(up_port), timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization", "connection")}
        conn.request(self.command, path, headers=headers)
        r = conn.getresponse()
        digest = path.rsplit("/", 1)[-1].split("?")[0]  # of a blob or a manifest
        limit = None
        with lock:
            if digest in cut_once and self.command == "GET" and r.status == 200:
                limit = cut_once.pop(digest)
        if digest in cut_always and self.command == "GET":
            # The body breaks off at byte N of the blob, wherever the request starts.
            start = 0
            rng = self.headers.get("Range", "")
            if rng.startswith("bytes=") and rng[6:].split("-")[0].isdigit():
                start = int(rng[6:].split("-")[0])
            limit = max(0, cut_always[digest] - start)
        corrupt = digest in args.corrupt and self.command == "GET"
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("connection", "transfer-encoding"):
                self.send_header(k, v)
        chunked = r.getheader("Content-Length") is None and self.command != "HEAD" and r.status not in (204, 304)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        first = True
        while self.command != "HEAD":
            data = r.read(16384)
            if not data:
                break
            if corrupt and first:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            first = False
            if limit is not None and sent + len(data) > limit:
                data = data[: limit - sent]
                self.wfile.write(data)
                self.wfile.flush()
                self.close_connection = True
                conn.close()
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            sent += len(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        conn.close()


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


Server(("127.0.0.1", args.port), Handler).serve_forever()
