"""Where data lives, and what a manifest from elsewhere may name.

A location is a local path (``~`` expanded, ``file://`` accepted) or a :class:`Remote`: ``s3://bucket/key``,
``gs://bucket/key``, ``https://…`` or ``http://…``. Everything here is pure: no I/O, no DNS.

Trust (see ``docs/storage.md``):

* A manifest read from a bucket or a URL (:class:`Base` with ``remote`` set) may name remote media only:
  a local path in it (``/etc/passwd``, ``~/.aws/credentials``, ``file://…``) is refused (:class:`MediaRefused`,
  that row's error) unless ``--allow-local-media``; relative paths resolve against the manifest's own
  remote folder, so they stay remote.
* URL media never go to loopback, link-local, private or otherwise non-global addresses unless
  ``--allow-private-urls``: :func:`check_address` is applied to every address a name resolves to, on every
  connection (redirects included), by :mod:`batchqwen.storage.fetch`.

Messages name a URL by :func:`display_url`: no user name, password, query string (a signed URL's
signature) or fragment.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from batchqwen.errors import MediaRefused, UsageError

REMOTE_SCHEMES: tuple[str, ...] = ("s3", "gs", "http", "https")
OBJECT_SCHEMES: tuple[str, ...] = ("s3", "gs")  # buckets, read through pyarrow's filesystems


def _scheme(text: str) -> str:
    """The URL scheme of ``text`` in lower case, or "" for a plain path (``C:\\x`` is a path, not a scheme)."""
    head, sep, _ = text.partition("://")
    if not sep or not head.isascii() or not head.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return ""
    return head.lower()


def display_url(url: str) -> str:
    """``url`` as messages show it: without credentials, query string (signatures) or fragment. A bucket
    URI is shown as written (its key may hold ``?`` or ``#``), without anything before an ``@``."""
    if _scheme(url) in OBJECT_SCHEMES:
        scheme, _, rest = url.partition("://")
        authority, slash, key = rest.partition("/")
        return f"{scheme.lower()}://{authority.rpartition('@')[2]}{slash}{key}"
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port else "")
    shown = urllib.parse.urlunsplit((parts.scheme.lower(), netloc, parts.path, "", ""))
    return shown + ("?…" if parts.query else "")


@dataclass(frozen=True)
class Remote:
    """A file in object storage or behind a URL. ``url`` is kept as given (a signed query string works);
    ``str()`` is the display form, safe for messages and results."""

    url: str

    @property
    def scheme(self) -> str:
        return _scheme(self.url)

    @property
    def host(self) -> str:
        """The bucket of ``s3://``/``gs://``, the host name of a URL."""
        if self.is_object:
            return self.url.partition("://")[2].partition("/")[0]
        return urllib.parse.urlsplit(self.url).hostname or ""

    @property
    def key(self) -> str:
        """The object key as written (``s3://b/dir/a b.wav`` -> ``dir/a b.wav``: bucket URIs are not
        percent-encoded), or a URL's path, decoded, without its leading slash."""
        if self.is_object:
            return self.url.partition("://")[2].partition("/")[2]
        return urllib.parse.unquote(urllib.parse.urlsplit(self.url).path).lstrip("/")

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    @property
    def is_object(self) -> bool:
        return self.scheme in OBJECT_SCHEMES

    @property
    def fs_path(self) -> str:
        """``bucket/key`` as pyarrow's filesystems name an object."""
        return f"{self.host}/{self.key}"

    def child(self, relative: str) -> Remote:
        """``relative`` (a POSIX path) resolved against this location's folder, staying remote."""
        if self.is_object:
            folder = posixpath.dirname(self.key)
            key = posixpath.normpath(posixpath.join(folder, relative)).lstrip("/")
            if key.startswith("../") or key == "..":
                key = key.lstrip("./")  # above the bucket's root there is nothing: stay in the bucket
            return Remote(f"{self.scheme}://{self.host}/{key}")
        return Remote(urllib.parse.urljoin(self.url, urllib.parse.quote(relative, safe="/%:@&=+$,;~!*'()?")))

    def join(self, name: str) -> Remote:
        """The file ``name`` inside this location taken as a folder (``s3://b/out`` + ``audio/a.wav``)."""
        base = self.url.rstrip("/")
        return Remote(f"{base}/{name.lstrip('/')}")

    def __str__(self) -> str:
        return display_url(self.url)


def parse_location(text: str) -> Path | Remote:
    """A command-line location: a remote URL, a ``file://`` URL or a local path (``~`` expanded)."""
    text = text.strip()
    scheme = _scheme(text)
    if scheme in REMOTE_SCHEMES:
        remote = Remote(text)
        if not remote.host:
            raise UsageError(f"{display_url(text)}: no {'bucket' if remote.is_object else 'host'} in the URL")
        return remote
    if scheme == "file":
        return _file_url_path(text)
    if scheme:
        raise UsageError(
            f"{display_url(text)}: unsupported scheme {scheme!r}; use a path, file://, s3://, gs://, https://"
        )
    return Path(os.path.expanduser(text))


def _file_url_path(text: str) -> Path:
    parts = urllib.parse.urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(f"{display_url(text)}: a file:// URL names a file on this machine (no host)")
    return Path(urllib.request.url2pathname(parts.path))


@dataclass(frozen=True)
class Base:
    """Where a manifest's relative media paths resolve, and whether it may name local files.

    ``folder`` is a local manifest's folder; ``remote`` a remote manifest's own URL (its folder is the base).
    """

    folder: Path | None = None
    remote: Remote | None = None
    allow_local_media: bool = False

    @property
    def trusted(self) -> bool:
        """A local manifest is the user's own; a remote one is trusted with local files only by the flag."""
        return self.remote is None or self.allow_local_media


def base_for(manifest: Path, origin: str | None = None, *, allow_local_media: bool = False) -> Base:
    """The :class:`Base` of a manifest at ``manifest`` on disk, downloaded from ``origin`` when given."""
    if origin is None:
        return Base(folder=manifest.absolute().parent)
    return Base(folder=manifest.absolute().parent, remote=Remote(origin), allow_local_media=allow_local_media)


def resolve_media(given: str, base: Base) -> Path | Remote:
    """A media cell as a location: a URL stays remote; a path resolves against the manifest's folder.

    Raises MediaRefused for a local file named by a manifest from a bucket or URL (without the flag).
    """
    scheme = _scheme(given)
    if scheme in REMOTE_SCHEMES:
        return Remote(given)
    if scheme and scheme != "file":
        raise MediaRefused(f"{display_url(given)}: unsupported scheme {scheme!r} (use s3://, gs://, https://, http://)")
    local = scheme == "file" or given.startswith("~") or os.path.isabs(given)
    if base.remote is not None and not local:
        return base.remote.child(given)  # relative to a remote manifest: its own folder in the bucket
    if not base.trusted:
        shown = display_url(given) if scheme else given
        raise MediaRefused(
            f"local file {shown} refused: the manifest comes from {base.remote}, and a manifest from a bucket "
            "or URL may name remote media only (pass --allow-local-media to allow local files)"
        )
    if scheme == "file":
        try:
            return _file_url_path(given)
        except UsageError as exc:
            raise MediaRefused(str(exc)) from None
    path = Path(os.path.expanduser(given))
    if path.is_absolute():
        return path
    assert base.folder is not None
    return base.folder / path


def address_refusal(address: str) -> str | None:
    """Why a connection to IP ``address`` is refused without ``--allow-private-urls`` ("a loopback address",
    ...); None for a global address.

    Loopback, link-local (the cloud metadata address 169.254.169.254), private, shared, reserved,
    documentation and multicast ranges are refused; IPv4 mapped into IPv6 is judged as IPv4.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_global and not ip.is_multicast:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local (cloud metadata) address"
    if ip.is_private:
        return "a private address"
    return "a non-public address"


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True
