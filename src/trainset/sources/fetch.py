"""HTTP GET that only talks to addresses it has checked.

A URL list is untrusted input: a line (or a redirect it leads to) may point at a cloud metadata
service, a router or a service on the build machine. So every hop is checked before anything is
sent:

- only ``http`` and ``https``; no user:password in the URL;
- the host is resolved here and every address it resolves to must be globally routable
  (not private, loopback, link-local, multicast, reserved or unspecified, including those
  embedded in IPv4-mapped, 6to4 and Teredo IPv6 addresses), unless the host name or the
  address is on the allowlist; a host that resolves to both public and refused addresses is
  refused as a whole;
- the socket is opened to one of the addresses just checked (never by resolving the name
  again), with the name kept for the ``Host`` header and for TLS (SNI and certificate check),
  so a DNS answer that changes between the check and the connect cannot redirect it;
- redirects are followed here, hop by hop, each hop checked the same way.

Proxies from the environment are not used: a proxy would do its own resolving.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import Message
from typing import Iterable
from urllib.parse import quote, urljoin, urlsplit

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SCHEMES = {"http": 80, "https": 443}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworkDisabled(RuntimeError):
    """A download was asked for while networking is off in params."""


class Refused(Exception):
    """A URL or address this fetcher will not contact; retrying cannot change that."""


class FetchError(Exception):
    """A request that did not complete; ``retryable`` says whether another try may succeed."""

    def __init__(self, reason: str, retryable: bool = True):
        super().__init__(reason)
        self.retryable = retryable


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for the TCP connect, and for each read once connected."""

    connect: float = 10.0
    read: float = 30.0


@dataclass(frozen=True)
class Allowlist:
    """Hosts and networks that may be reached even though they are not public."""

    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "Allowlist":
        """Entries are host names (``nas.local``), ``*.``-wildcards, addresses or CIDRs."""
        hosts, suffixes, networks = set(), [], []
        for raw in entries:
            if not isinstance(raw, str) or not raw.strip():
                raise ValueError(f"allowlist entry {raw!r} must be a host name, address or CIDR")
            entry = raw.strip().lower()
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                suffixes.append(entry[1:])
            elif "/" in entry or " " in entry:
                raise ValueError(f"allowlist entry {raw!r} is neither a host name nor a CIDR")
            else:
                hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks))

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.hosts or any(host.endswith(s) for s in self.suffixes)

    def ip_allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries, which a router may deliver to."""
    if ip.version != 6:
        return []
    found = [ip.ipv4_mapped, ip.sixtofour]
    if ip.teredo:
        found.extend(ip.teredo)
    return [a for a in found if a is not None]


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be contacted (``"loopback"``, ``"private"``...), or None if public."""
    for inner in _embedded_ipv4(ip):
        problem = address_problem(inner)
        if problem:
            return problem
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("not globally routable", not ip.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def split_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of an acceptable URL, else :class:`Refused`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise Refused(f"scheme {scheme or '(none)'!r} is not allowed; only http and https are")
    if not parts.hostname:
        raise Refused("URL has no host")
    if parts.username is not None or parts.password is not None:
        raise Refused("URL carries a user name or password; credentials are never sent")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    # spaces and non-ASCII (as some servers put in redirects) are escaped as browsers do
    target = quote(target, safe="!#$%&'()*+,/:;=?@[]~")
    return scheme, parts.hostname, port or SCHEMES[scheme], target


def resolve(host: str, port: int, allow: Allowlist) -> list[str]:
    """The addresses to connect to for ``host``, each checked; :class:`Refused` if any is unsafe."""
    try:
        addrs = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise FetchError(f"cannot resolve host {host!r}: {exc}") from None
        addrs = list(dict.fromkeys(info[4][0] for info in infos))
    if not addrs:
        raise FetchError(f"host {host!r} resolves to no address")
    if allow.host_allowed(host):
        return addrs
    for addr in addrs:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
        problem = address_problem(ip)
        if problem and not allow.ip_allowed(ip):
            shown = host if host == addr else f"{host} resolves to {addr}, which"
            raise Refused(f"{shown} is a {problem} address and is not on the allowlist")
    return addrs


class RateLimiter:
    """Per-host request spacing shared by all workers: a token bucket that holds one token
    and refills at ``rate`` per second, so no burst can exceed the rate a site was promised."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, now))
            self._next[host] = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


def _connect_pinned(addrs: list[str], port: int, timeouts: Timeouts) -> socket.socket:
    """A socket to the first checked address that answers."""
    last: OSError | None = None
    for addr in addrs:
        try:
            sock = socket.create_connection((addr, port), timeout=timeouts.connect)
        except OSError as exc:
            last = exc
            continue
        sock.settimeout(timeouts.read)
        return sock
    raise last or OSError("no address to connect to")


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, addrs: list[str], timeouts: Timeouts):
        super().__init__(host, port, timeout=timeouts.read)
        self.pinned, self.timeouts = addrs, timeouts

    def connect(self) -> None:
        self.sock = _connect_pinned(self.pinned, self.port, self.timeouts)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, addrs: list[str], timeouts: Timeouts, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeouts.read, context=context)
        self.pinned, self.timeouts, self.tls = addrs, timeouts, context

    def connect(self) -> None:
        sock = _connect_pinned(self.pinned, self.port, self.timeouts)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Certificate-checking TLS; ``ca_file`` adds a private CA (a company proxy, a test server)."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


class Fetched:
    """An open response after redirects; close it (or use ``with``) to free the connection."""

    def __init__(self, url: str, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, redirects: int):
        self.url, self.conn, self.response, self.redirects = url, conn, response, redirects

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def headers(self) -> Message:
        return self.response.msg

    def read(self, size: int) -> bytes:
        return self.response.read(size)

    def close(self) -> None:
        self.response.close()
        self.conn.close()

    def __enter__(self) -> "Fetched":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def describe(exc: BaseException) -> str:
    """An exception from the socket or HTTP layer in plain words."""
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, http.client.IncompleteRead):
        return f"body cut short after {len(exc.partial)} bytes"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server closed the connection without answering"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _request(url: str, headers: dict[str, str], allow: Allowlist, timeouts: Timeouts,
             limiter: RateLimiter, context: ssl.SSLContext | None):
    scheme, host, port, target = split_url(url)
    addrs = resolve(host, port, allow)
    limiter.wait(host.lower())
    if scheme == "https":
        conn: http.client.HTTPConnection = _PinnedHTTPS(host, port, addrs, timeouts, context or tls_context())
    else:
        conn = _PinnedHTTP(host, port, addrs, timeouts)
    try:
        conn.request("GET", target, headers=headers)
        return conn, conn.getresponse()
    except ssl.SSLCertVerificationError as exc:
        conn.close()
        raise FetchError(f"TLS certificate rejected: {exc.verify_message}", retryable=False) from None
    except http.client.InvalidURL as exc:
        conn.close()
        raise FetchError(f"malformed URL: {exc}", retryable=False) from None
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise FetchError(describe(exc)) from None
    except BaseException:
        conn.close()
        raise


def open_url(url: str, *, headers: dict[str, str], allow: Allowlist, timeouts: Timeouts,
             limiter: RateLimiter, max_redirects: int = 5, context: ssl.SSLContext | None = None) -> Fetched:
    """GET ``url``, following up to ``max_redirects`` redirects, each hop checked before contact.

    Raises :class:`Refused` for a URL or address that may not be contacted and
    :class:`FetchError` when the request fails.
    """
    for hop in range(max_redirects + 1):
        try:
            conn, response = _request(url, headers, allow, timeouts, limiter, context)
        except Refused as exc:
            if hop:
                raise Refused(f"redirected to {url}, refused: {exc}") from None
            raise
        location = response.getheader("Location")
        if response.status not in REDIRECT_STATUSES or not location:
            return Fetched(url, conn, response, hop)
        response.close()
        conn.close()
        url = urljoin(url, location.strip())
    raise FetchError(f"more than {max_redirects} redirects", retryable=False)
