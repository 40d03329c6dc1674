"""Which network addresses an image download may reach: a guard against server-side request forgery.

An answer may name any URL as its image (OpenAI's `data[].url`, OpenRouter's `image_url.url`).
Fetched blindly, an answer (a compromised or malicious API, a proxy in between) could make the
client request `http://127.0.0.1:8888/api/...` or the cloud metadata service at
`169.254.169.254` from inside the user's network. The rule:

* when the API itself is on a loopback or private address (the emulator, a proxy on this
  machine or the office network: `api_is_private()`), every address is allowed: the answer
  comes from inside already;
* otherwise an image is fetched only from public (globally reachable) addresses:
  `address_problem()` says why an address is not one.

It is enforced where the connection is made, not by reading the URL:

* names: `GuardedResolver` resolves once and refuses the name unless every address it
  resolves to is public; aiohttp connects to exactly the addresses it returned, so a DNS
  server answering differently the second time (DNS rebinding) is never asked a second time;
* IP literals, which aiohttp connects to without its resolver: `check_host()` before each
  request (also numeric forms such as `127.1` or `2130706433`, which the system would read as
  127.0.0.1);
* every socket the download connector opens (aiohttp >= 3.12): `guarded_socket()` checks the
  address it is about to connect to, a backstop for anything the two above could miss;
* redirects: the client follows them itself, and every hop goes through the same checks.

The download session is a separate one (`DownloadSession`): the API's own connections are
not affected, and a caller's `session=` (whose connector could reach anything) is never used
for downloads while the API is public.
"""
from __future__ import annotations

import inspect
import ipaddress
import socket
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

__all__ = ["AddressRefused", "address_problem", "host_address", "check_host", "api_is_private",
           "GuardedResolver", "guarded_socket", "DownloadSession", "refusal_in", "base_resolver"]


def _nets(*cidrs: str) -> Tuple[Any, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


#: IPv4 special-purpose ranges (IANA's registry) that are not the public internet, with what to call them
_V4: Sequence[Tuple[Tuple[Any, ...], str]] = [
    (_nets("0.0.0.0/8"), "an unspecified ('this network') address"),
    (_nets("127.0.0.0/8"), "a loopback address"),
    (_nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), "a private address"),
    (_nets("169.254.0.0/16"), "a link-local address"),
    (_nets("100.64.0.0/10"), "a shared (carrier-grade NAT) address"),
    (_nets("224.0.0.0/4"), "a multicast address"),
    (_nets("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"), "a documentation address"),
    (_nets("198.18.0.0/15"), "a benchmarking address"),
    (_nets("192.0.0.0/24", "192.88.99.0/24"), "a special-purpose address"),
    (_nets("240.0.0.0/4"), "a reserved address"),
]

_MAPPED, _COMPAT, _NAT64, _SIXTOFOUR = _nets("::ffff:0:0/96", "::/96", "64:ff9b::/96", "2002::/16")
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
#: IPv6 ranges that are not the public internet (checked after the ones that embed an IPv4 address)
_V6: Sequence[Tuple[Tuple[Any, ...], str]] = [
    (_nets("fe80::/10"), "a link-local address"),
    (_nets("fc00::/7"), "a unique-local (private) address"),
    (_nets("fec0::/10"), "a site-local address"),
    (_nets("ff00::/8"), "a multicast address"),
    (_nets("64:ff9b:1::/48"), "a local-use NAT64 address"),
    (_nets("100::/64"), "a discard-only address"),
    (_nets("2001::/32"), "a Teredo tunnel address"),
    (_nets("2001:db8::/32", "3fff::/20"), "a documentation address"),
    (_nets("2001::/23"), "a special-purpose address"),
]


def address_problem(ip: IPAddress) -> Optional[str]:
    """None when `ip` is a public (globally reachable) address; otherwise what it is, e.g.
    "a loopback address". An IPv6 address that carries an IPv4 one (IPv4-mapped ::ffff:a.b.c.d,
    NAT64 64:ff9b::/96, 6to4 2002::/16) is judged by the IPv4 address inside it."""
    if isinstance(ip, ipaddress.IPv4Address):
        for nets, what in _V4:
            if any(ip in n for n in nets):
                return what
        return None if ip.is_global else "a non-public address"
    if ip == ipaddress.IPv6Address("::"):
        return "an unspecified address"
    if ip == ipaddress.IPv6Address("::1"):
        return "a loopback address"
    embedded: Optional[ipaddress.IPv4Address] = None
    if ip in _MAPPED or ip in _NAT64 or ip in _COMPAT:
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    elif ip in _SIXTOFOUR:
        embedded = ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    if embedded is not None:
        inner = address_problem(embedded)
        if inner is not None:
            return f"{inner} ({embedded}) inside an IPv6 address"
        if ip in _COMPAT:   # ::a.b.c.d, deprecated since 2006: nothing public answers there
            return "a deprecated IPv4-compatible IPv6 address"
        return None
    for nets, what in _V6:
        if any(ip in n for n in nets):
            return what
    if ip not in _GLOBAL_UNICAST:
        return "a reserved address"
    return None if ip.is_global else "a non-public address"


class AddressRefused(OSError):
    """A download would connect to a non-public address. An OSError so that aiohttp carries it
    out of its resolver and connector (as `ClientConnectorError.os_error`): `refusal_in()`
    finds it there. `how` is "literal" (the URL names the address), "resolved" (the URL's host
    name resolves to it) or "connect" (the socket about to connect to it was stopped)."""

    def __init__(self, host: str, address: str, reason: str, how: str):
        super().__init__(f"{host}: {reason} ({address})")
        self.host, self.address, self.reason, self.how = host, address, reason, how

    def describe(self, redirected_to: Optional[str] = None) -> str:
        """Why, as the tail of a sentence about a download: "it is on a loopback address
        (127.0.0.1)", "its host x.example resolves to ...", "it redirected to URL, which is on
        ...", "it redirected to URL, whose host x.example resolves to ..."."""
        if self.how == "resolved":
            owner = f"it redirected to {redirected_to}, whose" if redirected_to else "its"
            return f"{owner} host {self.host} resolves to {self.reason} ({self.address})"
        subject = f"it redirected to {redirected_to}, which" if redirected_to else "it"
        verb = "is on" if self.how == "literal" else "connects to"
        return f"{subject} {verb} {self.reason} ({self.address})"


def _parse(text: str) -> Optional[IPAddress]:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _looks_numeric(host: str) -> bool:
    """aiohttp's own test for "an IP address, do not resolve" (helpers.is_ip_address)."""
    return ":" in host or host.replace(".", "").isdigit()


def host_address(host: str) -> Optional[IPAddress]:
    """The address a URL host names literally (None for a name)."""
    return _parse(host) if host else None


def check_host(host: Optional[str]) -> None:
    """Raise AddressRefused when the URL host `host` is an IP literal that is not public, or a
    numeric form that is not a standard address (`127.1`, `2130706433`, `0x7f.1` is a name and
    goes to the resolver). Names pass: the resolver checks what they resolve to."""
    if not host:
        raise AddressRefused("", "no host", "a URL without a host", "literal")
    ip = host_address(host)
    if ip is not None:
        problem = address_problem(ip)
        if problem is not None:
            raise AddressRefused(host, str(ip), problem, "literal")
    elif _looks_numeric(host):
        raise AddressRefused(host, host, "a numeric host that is not a standard IP address", "literal")


def base_resolver() -> AbstractResolver:
    """The resolver the guard asks (aiohttp's default: the system's getaddrinfo in a thread,
    or aiodns when installed). The tests replace it with a fixed table."""
    return aiohttp.DefaultResolver()


class GuardedResolver(AbstractResolver):
    """Resolves through `base_resolver()` and refuses a name unless every address is public.
    A name that resolves to a public and a private address is refused too: which one a
    connection would reach is not the URL's choice to make."""

    def __init__(self, inner: Optional[AbstractResolver] = None):
        self._inner = inner if inner is not None else base_resolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> List[Dict[str, Any]]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = str(result.get("host", ""))
            ip = _parse(address.split("%", 1)[0])
            problem = "an address that cannot be read" if ip is None else address_problem(ip)
            if problem is not None:
                raise AddressRefused(host, address, problem, "resolved")
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket(addr_info: Tuple[Any, ...]) -> socket.socket:
    """aiohttp's socket factory for the download connector: the last check, on the very address
    the socket is about to connect to."""
    family, type_, proto, _, sockaddr = addr_info
    ip = _parse(str(sockaddr[0]).split("%", 1)[0])
    problem = "an address that cannot be read" if ip is None else address_problem(ip)
    if problem is not None:
        raise AddressRefused(str(sockaddr[0]), str(sockaddr[0]), problem, "connect")
    return socket.socket(family=family, type=type_, proto=proto)


#: aiohttp >= 3.12 lets a connector make its sockets (`socket_factory`)
_HAS_SOCKET_FACTORY = "socket_factory" in inspect.signature(aiohttp.TCPConnector.__init__).parameters


class DownloadSession:
    """An aiohttp session whose connections reach public addresses only (GuardedResolver, plus
    guarded_socket where aiohttp supports it), without proxies from the environment and without
    a cookie jar (an image host has no business tracking one download to the next)."""

    def __init__(self, *, limit_per_host: int, headers: Optional[Dict[str, str]] = None):
        self.resolver = GuardedResolver()
        kwargs: Dict[str, Any] = {"limit": 0, "limit_per_host": limit_per_host, "resolver": self.resolver,
                                  "enable_cleanup_closed": False}
        if _HAS_SOCKET_FACTORY:
            kwargs["socket_factory"] = guarded_socket
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(**kwargs), headers=headers,
                                             trust_env=False, cookie_jar=aiohttp.DummyCookieJar())

    async def close(self) -> None:
        await self.session.close()
        await self.resolver.close()   # the connector closes only a resolver it made itself


def refusal_in(exc: BaseException) -> Optional[AddressRefused]:
    """The AddressRefused behind `exc` (aiohttp wraps it as ClientConnectorError.os_error)."""
    seen = 0
    e: Optional[BaseException] = exc
    while e is not None and seen < 6:
        if isinstance(e, AddressRefused):
            return e
        inner = getattr(e, "os_error", None)
        if isinstance(inner, AddressRefused):
            return inner
        e = e.__cause__ or e.__context__
        seen += 1
    return None


async def api_is_private(base_url: str) -> bool:
    """True when the API at `base_url` is on a loopback or private address: an IP literal that
    is not public, `localhost` (and *.localhost), or a name that resolves to non-public
    addresses only. A name that does not resolve counts as public (the strict answer)."""
    host = (urlsplit(base_url).hostname or "").rstrip(".").lower()
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = host_address(host)
    if ip is not None:
        return address_problem(ip) is not None
    if _looks_numeric(host):
        return False
    resolver = base_resolver()
    try:
        results = await resolver.resolve(host, 0, socket.AF_UNSPEC)
    except OSError:
        return False
    finally:
        await resolver.close()
    addresses = [_parse(str(r.get("host", "")).split("%", 1)[0]) for r in results]
    return bool(addresses) and all(ip is not None and address_problem(ip) is not None for ip in addresses)
