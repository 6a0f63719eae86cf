"""Servers for the storage tests, all on 127.0.0.1, all real: an S3-compatible store and an HTTPS server.

* :class:`S3Server`: moto's S3 server application (the same WSGI app ``moto_server`` runs) under
  werkzeug, wrapped by a counter of the requests and the response bytes per object. Access control is
  moto's own IAM enforcement: a user whose policy denies ``s3:GetObject`` under ``forbidden/`` gets a real
  403 AccessDenied from the server; every request must be signed with that user's keys.
* :class:`MediaServer`: ``http.server`` behind TLS with a certificate from a ``trustme`` CA; byte ranges,
  and per-path faults: ``/slow-once/…`` stalls the first answer past the client's timeout, ``/drop-once/…``
  closes the connection mid-body the first time, ``/redirect?to=URL`` redirects, anything absent is 404.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import requests

BUCKET = "media"
DENIED_PREFIX = "forbidden/"

#: hooks that see Python's audit events (file opens, socket connects) while a test has one in it
AUDIT: list[Callable[[str, tuple[Any, ...]], None]] = []


def _dispatch(event: str, args: tuple[Any, ...]) -> None:
    for hook in list(AUDIT):
        hook(event, args)


sys.addaudithook(_dispatch)  # audit hooks cannot be removed: one dispatcher, hooks added per test


class _Counting:
    """WSGI middleware: requests and response body bytes per (method, path), and in total."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.methods: Counter[str] = Counter()
        #: (method, path fragment) -> requests to answer 503 SlowDown (a store's hiccup)
        self.fail_next: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes.clear()
            self.methods.clear()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        path = urllib.parse.unquote(environ.get("PATH_INFO", ""))
        if path == "/__counts":  # for a server in another process (the benchmark): totals, then reset
            with self.lock:
                body = json.dumps({"requests": sum(self.requests.values()), "bytes": sum(self.bytes.values())})
            self.reset()
            start_response("200 OK", [("Content-Type", "application/json")])
            yield body.encode()
            return
        method = environ.get("REQUEST_METHOD", "")
        with self.lock:
            self.requests[path] += 1
            self.methods[method] += 1
            failing = next((k for k, n in self.fail_next.items() if n > 0 and k[0] == method and k[1] in path), None)
            if failing:
                self.fail_next[failing] -= 1
        if failing:
            start_response("503 Slow Down", [("Content-Type", "application/xml")])
            yield b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            return
        for chunk in self.app(environ, start_response):
            with self.lock:
                self.bytes[path] += len(chunk)
            yield chunk


class S3Server:
    """moto's S3 on 127.0.0.1 with IAM enforced: ``keys`` are the only credentials it accepts."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        class Quiet(MotoRequestHandler):  # type: ignore[misc]
            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass

        self.counting = _Counting(DomainDispatcherApplication(create_backend_app))
        self.server = make_server("127.0.0.1", 0, self.counting, threaded=True, request_handler=Quiet)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self._client: Any = None
        self.keys = self._enforce_iam()

    def client(self, keys: dict[str, str] | None = None) -> Any:
        import boto3

        if keys is None and getattr(self, "_client", None) is not None:
            return self._client
        made = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=(keys or self.keys)["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=(keys or self.keys)["AWS_SECRET_ACCESS_KEY"],
        )
        if keys is None:
            self._client = made
        return made

    def _enforce_iam(self) -> dict[str, str]:
        import boto3

        root = {"AWS_ACCESS_KEY_ID": "AKIAROOTSETUP0000000", "AWS_SECRET_ACCESS_KEY": "setup-only"}
        iam = boto3.session.Session().client(
            "iam",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=root["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=root["AWS_SECRET_ACCESS_KEY"],
        )
        iam.create_user(UserName="batch")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["*"]},
                {"Effect": "Deny", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{BUCKET}/{DENIED_PREFIX}*"]},
            ],
        }
        iam.put_user_policy(UserName="batch", PolicyName="media", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="batch")["AccessKey"]
        # from now on moto checks every request's signature and the user's policy
        requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
        keys = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        self.client(keys).create_bucket(Bucket=BUCKET)
        return keys

    def put(self, key: str, data: bytes, bucket: str = BUCKET) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def seed(self, objects: dict[str, bytes], bucket: str = BUCKET) -> None:
        """Many objects straight into the server's store (fast setup; reads still go over HTTP)."""
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        for key, data in objects.items():
            backend.put_object(bucket, key, data)

    def get(self, key: str, bucket: str = BUCKET) -> bytes:
        body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def keys_under(self, prefix: str, bucket: str = BUCKET) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def counts(self) -> dict[str, int]:
        """Requests and bytes since the last call (also from another process: GET /__counts)."""
        answer: dict[str, int] = requests.get(f"{self.endpoint}/__counts", timeout=10).json()
        return answer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            requests.post(f"{self.endpoint}/moto-api/reset-auth", data=b"inf", timeout=5)
        self.server.shutdown()
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------------------------- HTTPS


class MediaServer:
    """An HTTPS file server (a trustme CA signs its certificate) with byte ranges and switchable faults."""

    def __init__(self, files: dict[str, bytes], *, ca_folder: Path, stall_seconds: float = 3.0) -> None:
        import trustme

        self.files = files
        self.stall_seconds = stall_seconds
        self.hits: Counter[str] = Counter()
        self.faulted: set[str] = set()
        self.ca = trustme.CA()
        self.ca_file = ca_folder / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        certificate = self.ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        certificate.configure_cert(context)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.answer(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.base = f"https://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        path = parts.path
        self.hits[path] += 1
        if path == "/redirect":
            target = urllib.parse.parse_qs(parts.query)["to"][0]
            handler.send_response(302)
            handler.send_header("Location", target)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        name = path.rsplit("/", 1)[-1]
        data = self.files.get(name)
        if data is None:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        first_time = path not in self.faulted
        if path.startswith("/slow-once/") and first_time:
            self.faulted.add(path)
            time.sleep(self.stall_seconds)  # past the client's timeout: it gives up and tries again
        start, end = 0, len(data) - 1
        header = handler.headers.get("Range")
        status = 200
        if header and header.startswith("bytes="):
            first, _, last = header[6:].partition("-")
            start, end = int(first), min(int(last) if last else end, len(data) - 1)
            status = 206
        body = data[start : end + 1]
        with contextlib.suppress(OSError):
            handler.send_response(status)
            handler.send_header("Content-Length", str(len(body)))
            handler.send_header("Accept-Ranges", "bytes")
            if status == 206:
                handler.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            handler.end_headers()
            if path.startswith("/drop-once/") and first_time:
                self.faulted.add(path)
                handler.wfile.write(body[: len(body) // 3])
                handler.wfile.flush()
                handler.connection.shutdown(socket.SHUT_RDWR)  # cut mid-body
                handler.close_connection = True
                return
            handler.wfile.write(body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def serve_s3() -> None:
    """``python tests/storage_servers.py``: an S3Server in this process; prints endpoint and keys as JSON."""
    server = S3Server()
    print(json.dumps({"endpoint": server.endpoint, **server.keys}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    server.close()


if __name__ == "__main__":
    serve_s3()
