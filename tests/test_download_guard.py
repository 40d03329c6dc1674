"""Image URLs from answers are fetched only from public addresses, unless the API itself is on a
loopback or private address (the emulator): a guard against server-side request forgery.

* `address_problem()` over a table of addresses (loopback, private, link-local with the cloud
  metadata address, CGNAT, unspecified, multicast, reserved, IPv6 unique-local and link-local,
  private IPv4 inside IPv4-mapped, NAT64, 6to4 and IPv4-compatible IPv6) and public ones;
* the resolver with a fixed DNS table (a name resolving to a private address, to public and
  private ones), the socket backstop, the literal-host check (`127.1`, `2130706433`), the
  "is the API private?" decision;
* over HTTP on 127.0.0.1: a test stands in for "the internet" by counting one loopback address,
  127.0.0.2, as public (the `internet` fixture changes `address_problem` for that one address,
  the same decision the guard itself uses; 127.0.0.1 stays loopback). The API on 127.0.0.2 is
  then public, and its answers name http://127.0.0.1:<port>/internal-admin, the metadata
  service, a name the fake DNS maps to 127.0.0.1, a name that rebinds, and redirect chains from
  an allowed host to a private one. The internal server serves a valid PNG on every path, so a
  download that got through would succeed: each refusal is asserted with its error text, one
  attempt, no retry, and no request at all on the internal server.
* the API on 127.0.0.1 (private, as the emulator is): the same URLs download.
"""
from __future__ import annotations

import asyncio
import socket
import time
from typing import Dict, List, Optional

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from _image_helpers import make_png
from _reliab_helpers import LeakWatch, Recorder, TinyServer
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest, netguard
from jupyter_imagegen.netguard import AddressRefused, address_problem, api_is_private, check_host

TOKEN = "sk-test-guard-0123456789abcdef"
PUBLIC_STAND_IN = "127.0.0.2"
PNG = make_png()

# -- the decision ------------------------------------------------------------------------------

REFUSED = [
    ("127.0.0.1", "a loopback address"),
    ("127.255.255.254", "a loopback address"),
    ("::1", "a loopback address"),
    ("10.0.0.1", "a private address"),
    ("10.255.255.255", "a private address"),
    ("172.16.0.1", "a private address"),
    ("172.31.255.254", "a private address"),
    ("192.168.1.10", "a private address"),
    ("169.254.169.254", "a link-local address"),          # the cloud metadata service
    ("169.254.0.1", "a link-local address"),
    ("100.64.0.1", "a shared (carrier-grade NAT) address"),
    ("100.127.255.254", "a shared (carrier-grade NAT) address"),
    ("0.0.0.0", "an unspecified ('this network') address"),
    ("0.1.2.3", "an unspecified ('this network') address"),
    ("224.0.0.1", "a multicast address"),
    ("239.255.255.250", "a multicast address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    ("192.0.2.1", "a documentation address"),
    ("198.18.0.1", "a benchmarking address"),
    ("192.0.0.8", "a special-purpose address"),
    ("::", "an unspecified address"),
    ("fd00::1", "a unique-local (private) address"),
    ("fc00::1", "a unique-local (private) address"),
    ("fe80::1", "a link-local address"),
    ("fec0::1", "a site-local address"),
    ("ff02::1", "a multicast address"),
    ("::ffff:127.0.0.1", "a loopback address (127.0.0.1) inside an IPv6 address"),
    ("::ffff:169.254.169.254", "a link-local address (169.254.169.254) inside an IPv6 address"),
    ("::ffff:10.1.2.3", "a private address (10.1.2.3) inside an IPv6 address"),
    ("64:ff9b::a9fe:a9fe", "a link-local address (169.254.169.254) inside an IPv6 address"),
    ("64:ff9b::7f00:1", "a loopback address (127.0.0.1) inside an IPv6 address"),
    ("2002:7f00:1::", "a loopback address (127.0.0.1) inside an IPv6 address"),
    ("2002:a9fe:a9fe::1", "a link-local address (169.254.169.254) inside an IPv6 address"),
    ("::7f00:1", "a loopback address (127.0.0.1) inside an IPv6 address"),
    ("::808:808", "a deprecated IPv4-compatible IPv6 address"),
    ("64:ff9b:1::a9fe:a9fe", "a local-use NAT64 address"),
    ("100::1", "a discard-only address"),
    ("2001::1", "a Teredo tunnel address"),
    ("2001:db8::1", "a documentation address"),
    ("2001:2::1", "a special-purpose address"),
    ("4000::1", "a reserved address"),
]

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "11.0.0.1", "172.32.0.1", "172.15.255.255",
          "192.169.0.1", "169.255.0.1", "100.128.0.1", "100.63.255.255", "2606:4700::1111",
          "2001:4860:4860::8888", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8", "64:ff9b::808:808",
          "2002:808:808::1"]


@pytest.mark.parametrize("address, reason", REFUSED, ids=[a for a, _ in REFUSED])
def test_non_public_addresses_are_refused(address, reason):
    import ipaddress
    assert address_problem(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address):
    import ipaddress
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("host, address", [
    ("169.254.169.254", "169.254.169.254"), ("::1", "::1"), ("[::1]", "::1"), ("10.0.0.1", "10.0.0.1"),
    ("::ffff:7f00:1", "::ffff:7f00:1"),
    # numeric forms the system reads as 127.0.0.1 but that are no standard address: refused as such
    ("127.1", "127.1"), ("2130706433", "2130706433"), ("0177.0.0.1", "0177.0.0.1"), ("127.0.0.1.", "127.0.0.1."),
])
def test_literal_hosts_are_checked_directly(host, address):
    with pytest.raises(AddressRefused) as info:
        check_host(host)
    assert info.value.address == address and info.value.how == "literal"


@pytest.mark.parametrize("host", ["8.8.8.8", "2606:4700::1111", "images.example.com", "0x7f.1", "localhost"])
def test_names_and_public_literals_pass_the_literal_check(host):
    check_host(host)     # names are the resolver's to check


async def test_the_real_resolver_refuses_names_that_reach_this_machine():
    """The default resolver (the system's, no network needed for these): `localhost` and the
    hex form `0x7f.1`, which aiohttp does not take for an IP literal, resolve to 127.0.0.1."""
    resolver = netguard.GuardedResolver()
    try:
        for name in ("localhost", "0x7f.1"):
            with pytest.raises(AddressRefused) as info:
                await resolver.resolve(name, 80)
            assert info.value.how == "resolved" and info.value.address.startswith("127.")
    finally:
        await resolver.close()


class FakeDNS(AbstractResolver):
    """A fixed DNS table: name -> addresses, or a function giving the addresses of each lookup."""

    def __init__(self, table: Dict[str, object]):
        self.table = table
        self.lookups: List[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        self.lookups.append(host)
        answer = self.table.get(host)
        if callable(answer):
            answer = answer()
        if not answer:
            raise OSError(socket.EAI_NONAME, f"{host}: name not known")
        return [{"hostname": host, "host": a, "port": port, "proto": 0, "flags": socket.AI_NUMERICHOST,
                 "family": socket.AF_INET6 if ":" in a else socket.AF_INET} for a in answer]

    async def close(self) -> None:
        pass


TABLE = {"cdn.example": ["93.184.216.34"], "sneaky.example": ["127.0.0.1"],
         "metadata.example": ["169.254.169.254"], "mixed.example": ["93.184.216.34", "10.0.0.7"],
         "v6-ula.example": ["2606:4700::1111", "fd12::3"], "v6.example": ["2606:4700::1111"]}


@pytest.mark.parametrize("name, address, reason", [
    ("sneaky.example", "127.0.0.1", "a loopback address"),
    ("metadata.example", "169.254.169.254", "a link-local address"),
    ("mixed.example", "10.0.0.7", "a private address"),        # one private answer refuses the name
    ("v6-ula.example", "fd12::3", "a unique-local (private) address"),
])
async def test_the_resolver_refuses_names_with_a_non_public_address(name, address, reason):
    resolver = netguard.GuardedResolver(FakeDNS(TABLE))
    with pytest.raises(AddressRefused) as info:
        await resolver.resolve(name, 443)
    e = info.value
    assert (e.host, e.address, e.reason, e.how) == (name, address, reason, "resolved")
    assert e.describe() == f"its host {name} resolves to {reason} ({address})"


async def test_the_resolver_passes_public_answers_through_unchanged():
    dns = FakeDNS(TABLE)
    resolver = netguard.GuardedResolver(dns)
    got = await resolver.resolve("cdn.example", 443)
    assert [(r["host"], r["port"]) for r in got] == [("93.184.216.34", 443)]
    assert [r["host"] for r in await resolver.resolve("v6.example", 80)] == ["2606:4700::1111"]
    with pytest.raises(OSError):
        await resolver.resolve("nowhere.example", 80)     # a lookup failure stays a lookup failure
    assert dns.lookups == ["cdn.example", "v6.example", "nowhere.example"]


def test_the_socket_backstop_checks_the_address_it_connects_to():
    for sockaddr in [("127.0.0.1", 80), ("169.254.169.254", 80)]:
        with pytest.raises(AddressRefused) as info:
            netguard.guarded_socket((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        assert info.value.how == "connect" and info.value.address == sockaddr[0]
    with pytest.raises(AddressRefused):
        netguard.guarded_socket((socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("::1", 80, 0, 0)))
    sock = netguard.guarded_socket((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("8.8.8.8", 443)))
    try:
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
    finally:
        sock.close()


@pytest.mark.parametrize("base_url, private", [
    ("http://127.0.0.1:8000/v1", True), ("http://localhost:8000/v1", True), ("http://LOCALHOST./v1", True),
    ("http://emu.localhost/v1", True), ("http://[::1]:8000/v1", True), ("http://10.0.0.5/v1", True),
    ("http://192.168.1.20:4000/v1", True), ("http://100.100.1.2/v1", True),
    ("http://internal.example/v1", True),            # resolves to private addresses only
    ("https://api.example.com/v1", False), ("https://8.8.8.8/v1", False),
    ("https://split.example/v1", False),              # a public and a private address: public
    ("https://nowhere.example/v1", False),            # does not resolve: the strict answer
    ("http://127.1/v1", False),                       # no standard address: the strict answer
])
async def test_whether_the_api_is_private(monkeypatch, base_url, private):
    dns = FakeDNS({"internal.example": ["10.1.2.3", "fd00::5"], "api.example.com": ["93.184.216.34"],
                   "split.example": ["93.184.216.34", "10.0.0.1"]})
    monkeypatch.setattr(netguard, "base_resolver", lambda: dns)
    assert await api_is_private(base_url) is private


# -- over HTTP ---------------------------------------------------------------------------------

@pytest.fixture
def internet(monkeypatch):
    """127.0.0.2 counts as a public address (the stand-in for the internet: the API and its
    image host); everything else is judged as always. Names resolve through a fixed table."""
    real = netguard.address_problem

    def problem(ip):
        return None if str(ip) == PUBLIC_STAND_IN else real(ip)

    monkeypatch.setattr(netguard, "address_problem", problem)
    table: Dict[str, object] = {"cdn.example": [PUBLIC_STAND_IN], "sneaky.example": ["127.0.0.1"],
                                "mixed.example": [PUBLIC_STAND_IN, "127.0.0.1"]}
    dns = FakeDNS(table)
    monkeypatch.setattr(netguard, "base_resolver", lambda: dns)
    return dns


async def _png(request):
    return web.Response(body=PNG, content_type="image/png")


class World:
    """The API (with its image host) on `host`, an internal service on 127.0.0.1 that serves a
    valid PNG on every path (a download that got through would succeed), redirects on the API."""

    def __init__(self, api_host: str):
        self.answer_url = ""
        self.redirects: Dict[str, str] = {}
        self.api = TinyServer({"/v1/images/generations": self._generations, "/img.png": _png,
                               "/hop/{name}": self._hop}, host=api_host)
        self.internal = TinyServer({"/{tail:.*}": _png})

    async def _generations(self, request):
        url = self.answer_url.format(api=self.api.url, internal=self.internal.url, iport=self.internal.port,
                                     aport=self.api.port)
        return web.json_response({"created": 1, "data": [{"url": url}]})

    async def _hop(self, request):
        target = self.redirects[request.match_info["name"]]
        raise web.HTTPFound(target.format(api=self.api.url, internal=self.internal.url, iport=self.internal.port,
                                          aport=self.api.port))

    async def __aenter__(self) -> "World":
        await self.api.__aenter__()
        await self.internal.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.internal.__aexit__(*exc)
        await self.api.__aexit__(*exc)

    def client(self, **kw) -> ImageClient:
        cfg = ImageConfig(api_type="openai_images", base_url=self.api.url + "/v1", token=TOKEN,
                          backoff_base=0.01, max_attempts=3, download_timeout=5, **kw)
        return ImageClient(cfg)

    def downloads(self) -> List[dict]:
        return [h for h in self.api.hits if not h["path"].startswith("/v1/")]


@pytest.fixture
async def public_api(internet):
    async with World(PUBLIC_STAND_IN) as world:
        yield world


@pytest.fixture
async def private_api():
    async with World("127.0.0.1") as world:
        yield world


async def _generate(world: World, answer_url: str, rec: Optional[Recorder] = None):
    world.answer_url = answer_url
    async with world.client() as client:
        t0 = time.monotonic()
        resp = await client.generate(ImageRequest("a lighthouse"), on_event=rec)
        return resp, time.monotonic() - t0


def _no_key_on_downloads(world: World) -> None:
    for h in world.downloads() + world.internal.hits:
        assert "Authorization" not in h["headers"] and TOKEN not in str(h["headers"]), h


async def test_control_a_public_image_host_downloads(public_api):
    """The stand-in internet works: an image on the public host (by address and by name) arrives
    through the guarded download session, without the key."""
    for answer in ("{api}/img.png", "http://cdn.example:{aport}/img.png"):
        resp, _ = await _generate(public_api, answer)
        assert resp.success, resp.error
        assert resp.artifacts[0].data == PNG
    assert [h["path"] for h in public_api.downloads()] == ["/img.png", "/img.png"]
    assert public_api.internal.hits == []
    _no_key_on_downloads(public_api)


def _refusal(world: World, url: str, where: str) -> str:
    return (f"refused to download the image from {url}: {where}, and images are fetched only from public "
            f"addresses while the API ({world.api.url}) is public")


@pytest.mark.parametrize("answer, shown, where", [
    ("http://127.0.0.1:{iport}/internal-admin?token=abc", "http://127.0.0.1:{iport}/internal-admin",
     "it is on a loopback address (127.0.0.1)"),
    ("http://[::ffff:127.0.0.1]:{iport}/internal-admin", "http://[::ffff:127.0.0.1]:{iport}/internal-admin",
     "it is on a loopback address (127.0.0.1) inside an IPv6 address (::ffff:7f00:1)"),
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/",
     "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
     "it is on a link-local address (169.254.169.254)"),
    ("http://sneaky.example:{iport}/internal-admin", "http://sneaky.example:{iport}/internal-admin",
     "its host sneaky.example resolves to a loopback address (127.0.0.1)"),
    ("http://mixed.example:{iport}/internal-admin", "http://mixed.example:{iport}/internal-admin",
     "its host mixed.example resolves to a loopback address (127.0.0.1)"),
    ("http://127.1:{iport}/internal-admin", "http://127.1:{iport}/internal-admin",
     "it is on a numeric host that is not a standard IP address (127.1)"),
], ids=["loopback", "ipv4-mapped", "metadata", "name-to-loopback", "mixed-name", "short-numeric"])
async def test_answers_naming_internal_addresses_are_refused(public_api, answer, shown, where):
    rec = Recorder()
    resp, took = await _generate(public_api, answer, rec)
    fmt = dict(iport=public_api.internal.port)
    assert not resp.success and not resp.artifacts
    assert resp.error == _refusal(public_api, shown.format(**fmt), where), resp.error
    assert resp.exception.code == "download_refused" and resp.exception.status is None
    assert resp.attempts == 1 and "api_retry" not in rec.types(), "a refusal is not retried"
    assert public_api.internal.hits == [], "the internal service received a request"
    assert took < 2.0, f"took {took:.1f} s: a refused address must not be tried"


@pytest.mark.parametrize("chain, last, where", [
    ({"a": "{api}/hop/b", "b": "{internal}/internal-admin"}, "{internal}/internal-admin",
     "which is on a loopback address (127.0.0.1)"),
    ({"a": "/hop/b", "b": "http://169.254.169.254/latest/meta-data"}, "http://169.254.169.254/latest/meta-data",
     "which is on a link-local address (169.254.169.254)"),
    ({"a": "http://cdn.example:{aport}/hop/b", "b": "http://sneaky.example:{iport}/internal-admin"},
     "http://sneaky.example:{iport}/internal-admin",
     "whose host sneaky.example resolves to a loopback address (127.0.0.1)"),
], ids=["to-loopback", "to-metadata", "to-name-of-loopback"])
async def test_every_redirect_hop_is_checked(public_api, chain, last, where):
    """A public image host that redirects (twice) into the internal network: the first hops are
    followed, the private one is refused before anything connects to it."""
    public_api.redirects = chain
    resp, _ = await _generate(public_api, "{api}/hop/a")
    fmt = dict(api=public_api.api.url, internal=public_api.internal.url, iport=public_api.internal.port,
               aport=public_api.api.port)
    assert not resp.success
    assert resp.error == _refusal(public_api, f"{public_api.api.url}/hop/a",
                                  f"it redirected to {last.format(**fmt)}, {where}"), resp.error
    assert [h["path"] for h in public_api.downloads()] == ["/hop/a", "/hop/b"]
    assert public_api.internal.hits == []
    _no_key_on_downloads(public_api)


async def test_a_redirect_chain_between_public_hosts_is_followed(public_api):
    public_api.redirects = {"a": "http://cdn.example:{aport}/hop/b", "b": "/img.png"}
    resp, _ = await _generate(public_api, "{api}/hop/a")
    assert resp.success, resp.error
    assert [h["path"] for h in public_api.downloads()] == ["/hop/a", "/hop/b", "/img.png"]
    _no_key_on_downloads(public_api)


async def _same_port_pair():
    """A PNG server on 127.0.0.2 and another on 127.0.0.1, on the same port number."""
    for _ in range(20):
        public_host = await TinyServer({"/{tail:.*}": _png}, host=PUBLIC_STAND_IN).__aenter__()
        try:
            internal = await TinyServer({"/{tail:.*}": _png}, port=public_host.port).__aenter__()
        except OSError:         # that port is taken on 127.0.0.1: another pair
            await public_host.__aexit__(None, None, None)
            continue
        return public_host, internal
    pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")


async def test_dns_rebinding_cannot_switch_a_checked_name_to_loopback(internet):
    """`rebind.example` answers 127.0.0.2 (public) on its first lookup and 127.0.0.1 on every
    later one; both addresses serve a PNG on the same port. Had the client checked the name
    with one lookup and connected after another, the internal server would be hit."""
    public_host, internal = await _same_port_pair()
    try:
        answers = iter([[PUBLIC_STAND_IN]])
        internet.table["rebind.example"] = lambda: next(answers, ["127.0.0.1"])
        async with World(PUBLIC_STAND_IN) as world:
            world.answer_url = f"http://rebind.example:{public_host.port}/img.png"
            async with world.client() as client:
                first = await client.generate(ImageRequest("a lighthouse"))
                client._get_download_session().connector.clear_dns_cache()   # a new lookup for a new connection
                second = await client.generate(ImageRequest("a lighthouse"))
        assert first.success, first.error
        assert len(public_host.hits) == 1 + second.success
        # the second download reuses the connection to the checked address, or is refused
        assert second.success or "resolves to a loopback address (127.0.0.1)" in second.error, second.error
        assert internal.hits == [], "the rebound name reached 127.0.0.1"
    finally:
        await internal.__aexit__(None, None, None)
        await public_host.__aexit__(None, None, None)


@pytest.mark.skipif(not netguard._HAS_SOCKET_FACTORY, reason="aiohttp < 3.12 has no socket_factory")
async def test_the_socket_backstop_stops_what_the_url_check_misses(public_api, monkeypatch):
    """Were the literal check wrong (here: switched off), the connector's own socket check
    still refuses to connect to 127.0.0.1."""
    monkeypatch.setattr(netguard, "check_host", lambda host: None)
    resp, _ = await _generate(public_api, "{internal}/internal-admin")
    assert not resp.success
    assert resp.error == _refusal(public_api, f"{public_api.internal.url}/internal-admin",
                                  "it connects to a loopback address (127.0.0.1)"), resp.error
    assert resp.attempts == 1
    assert public_api.internal.hits == []


async def test_the_download_session_is_separate_and_closed(public_api):
    """Downloads while the API is public go through the client's own guarded session (even with
    a caller's `session=`), which close() closes."""
    import aiohttp
    public_api.answer_url = "{api}/img.png"
    with LeakWatch(asyncio.get_running_loop()) as watch:
        async with aiohttp.ClientSession() as mine:
            client = ImageClient(ImageConfig(api_type="openai_images", base_url=public_api.api.url + "/v1",
                                             token=TOKEN), session=mine)
            resp = await client.generate(ImageRequest("a lighthouse"))
            assert resp.success, resp.error
            guarded = client._get_download_session()
            assert guarded is not mine and not guarded.closed
            await client.close()
            assert guarded.closed and not client._downloads
            assert not mine.closed        # the caller's session is the caller's to close
    assert not watch.unclosed(), watch.unclosed()


async def test_blocking_calls_close_their_download_session(public_api):
    """generate_sync runs on the background loop: close_sync closes the guarded session there."""
    public_api.answer_url = "{api}/img.png"
    client = public_api.client()
    resp = await asyncio.to_thread(client.generate_sync, ImageRequest("a lighthouse"))
    assert resp.success, resp.error
    (guarded,) = client._downloads.values()
    await asyncio.to_thread(client.close_sync)
    assert guarded.session.closed and not client._downloads


# -- the API on a private address: everything may be fetched --------------------------------

async def test_a_private_api_may_name_private_image_urls(private_api):
    """The emulator's case: the API is on 127.0.0.1, so are its images (and a redirect there)."""
    resp, _ = await _generate(private_api, "{internal}/internal-admin.png")
    assert resp.success, resp.error
    private_api.redirects = {"a": "{internal}/files/1.png"}
    resp, _ = await _generate(private_api, "{api}/hop/a")
    assert resp.success, resp.error
    assert [h["path"] for h in private_api.internal.hits] == ["/internal-admin.png", "/files/1.png"]
    _no_key_on_downloads(private_api)


async def test_the_emulator_url_results_still_download(emulator):
    """The emulator on 127.0.0.1 is a private API: its file URLs download through the API's own
    session; no guarded session is made."""
    emulator.add_faults("url")
    cfg = ImageConfig(api_type="openai_images", base_url=emulator.base_url_for("openai_images"), token=TOKEN)
    async with ImageClient(cfg) as client:
        resp = await client.generate(ImageRequest("a kite"))
        assert not client._downloads
    assert resp.success, resp.error
    assert resp.artifacts[0].source_url.startswith(emulator.url + "/files/")
