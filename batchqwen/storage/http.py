"""The HTTP connection guard: httpcore's socket backend checking every address a host name resolves to
(on each redirect too) before it connects, and connecting to the address checked. Imported by
``fetch.Storage.http`` when a URL is first read."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from batchqwen.errors import MediaRefused
from batchqwen.storage.locations import address_refusal


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's socket backend, refusing addresses :func:`address_refusal` refuses before connecting."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not self.allow_private:
            for address in addresses:
                refusal = address_refusal(address)
                if refusal is not None:
                    literal = address == host.strip("[]")
                    what = f"{address} is {refusal}" if literal else f"{host} resolves to {address}, {refusal}"
                    raise MediaRefused(f"{what}, which URL media may not reach (pass --allow-private-urls)")
        last: Exception | None = None
        for address in addresses:  # connect to the address checked, not to the name again
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address for {host}")


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport on a connection pool whose sockets go through :class:`GuardedBackend`."""

    def __init__(self, ssl_context: ssl.SSLContext, *, allow_private: bool, connections: int = 16) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        # httpx builds its pool without a way to pass a network backend: build the same pool with one
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=connections,
            max_keepalive_connections=connections,
            network_backend=GuardedBackend(allow_private=allow_private),
        )
