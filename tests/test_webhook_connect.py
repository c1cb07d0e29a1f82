"""How a webhook delivery connects (service/webhooks/connect.py): the host name is resolved once per connection,
every address checked, and the connection made to those addresses, never to what the name resolves to later;
TLS and the Host header stay the URL's host name's. The backend is driven here with a resolver and an inner
backend of the test's own, and the client over real TLS on loopback."""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import service
from service.webhooks.addresses import AddressRefused
from service.webhooks.connect import CheckedAddressBackend, Resolver, webhook_client
from service.webhooks.delivery import WebhookDeliverer
from service.webhooks.signing import new_secret

PUBLIC = "192.0.0.9"  # a global address (ipaddress.is_global); nothing here connects to it
OTHER_PUBLIC = "2606:4700::1111"


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Connects nowhere: records each connect_tcp, and fails it for the addresses in `failing`."""

    def __init__(self, failing: Iterable[str] = ()) -> None:
        self.connects: list[tuple[str, int, float | None]] = []
        self.failing = set(failing)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port, timeout))
        if host in self.failing:
            raise httpcore.ConnectError(f"nothing answers at {host}")
        return httpcore.AsyncMockStream([])


class Answers:
    """A resolver answering each name from a script, one answer per lookup (the last one repeated)."""

    def __init__(self, answers: dict[str, list[list[str]]] | None = None) -> None:
        self.answers = {name: list(script) for name, script in (answers or {}).items()}
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        script = self.answers.get(host)
        if script is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return script.pop(0) if len(script) > 1 else script[0]


async def test_a_name_rebound_to_loopback_after_its_check_is_connected_to_the_address_checked() -> None:
    dns = Answers({"rebind.test": [[PUBLIC], ["127.0.0.1"]]})
    inner = RecordingBackend()
    backend = CheckedAddressBackend(allow_private=False, resolve=dns.resolve, inner=inner)
    await backend.connect_tcp("rebind.test", 8080, timeout=5)
    assert [(host, port) for host, port, _ in inner.connects] == [(PUBLIC, 8080)]
    # The next connection resolves again: now the answer is refused, and nothing is connected to.
    with pytest.raises(AddressRefused, match=r"^rebind\.test resolves to a non-public address \(127\.0\.0\.1\)$"):
        await backend.connect_tcp("rebind.test", 8080, timeout=5)
    assert dns.lookups == ["rebind.test", "rebind.test"]
    assert [host for host, _, _ in inner.connects] == [PUBLIC]


@pytest.mark.parametrize(
    "private",
    [
        "10.0.0.7",
        "::1",
        "::ffff:169.254.169.254",
        "fd00::1",
        "224.0.0.1",
        # IPv6 forms of a private IPv4 address, which Python 3.11 calls global: NAT64, 6to4, IPv4-compatible.
        "64:ff9b::7f00:1",
        "64:ff9b:1::a00:1",
        "2002:7f00:1::",
        "::127.0.0.1",
        "::ffff:0:7f00:1",  # SIIT's IPv4-translated form
        "64:ff9b:1::808:808",  # NAT64's local-use prefix, whatever the address it carries
        "fec0::1",  # site-local
    ],
)
async def test_a_name_with_any_non_public_address_is_refused_before_any_connect(private: str) -> None:
    dns = Answers({"mixed.test": [[PUBLIC, private, OTHER_PUBLIC]]})
    inner = RecordingBackend()
    backend = CheckedAddressBackend(allow_private=False, resolve=dns.resolve, inner=inner)
    with pytest.raises(AddressRefused, match=r"^mixed\.test resolves to a non-public address "):
        await backend.connect_tcp("mixed.test", 443, timeout=5)
    assert inner.connects == []


@pytest.mark.parametrize("public", ["64:ff9b::808:808", "2002:808:808::1"])
async def test_an_ipv6_form_of_a_public_ipv4_address_is_connected_to(public: str) -> None:
    dns = Answers({"nat64.test": [[public]]})
    inner = RecordingBackend()
    backend = CheckedAddressBackend(allow_private=False, resolve=dns.resolve, inner=inner)
    await backend.connect_tcp("nat64.test", 443, timeout=5)
    assert [host for host, _, _ in inner.connects] == [public]


async def test_each_address_is_tried_with_the_time_left_and_the_next_at_once_when_one_fails() -> None:
    dns = Answers({"two.test": [[OTHER_PUBLIC, PUBLIC]]})
    inner = RecordingBackend(failing=[OTHER_PUBLIC])
    backend = CheckedAddressBackend(allow_private=False, resolve=dns.resolve, inner=inner)
    started = time.monotonic()
    await backend.connect_tcp("two.test", 443, timeout=10)
    assert time.monotonic() - started < 0.2  # not after the attempt delay: the first one had failed
    assert [host for host, _, _ in inner.connects] == [OTHER_PUBLIC, PUBLIC]
    (_, _, first), (_, _, second) = inner.connects
    assert first is not None and second is not None
    assert 9.5 < second <= first <= 10

    inner.failing.add(PUBLIC)
    with pytest.raises(httpcore.ConnectError, match=re.escape(f"nothing answers at {PUBLIC}")):
        await backend.connect_tcp("two.test", 443, timeout=10)


class RacingBackend(RecordingBackend):
    """RecordingBackend, but for the addresses in `holes`, whose connect never hears back (it waits out its time-out,
    as a black-holed address does), and those in `gated`, which connect once `gate` is set (to a stream recording
    its closing). Any other address is connected to for real. Records the attempts cancelled."""

    def __init__(self, *, failing: Iterable[str] = (), holes: Iterable[str] = (), gated: Iterable[str] = ()) -> None:
        super().__init__(failing)
        self.holes = set(holes)
        self.gated = set(gated)
        self.gate = asyncio.Event()
        self.streams: dict[str, ClosingStream] = {}
        self.cancelled: list[str] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        await super().connect_tcp(host, port, timeout)
        try:
            if host in self.holes:
                await asyncio.sleep(3600 if timeout is None else timeout)
                raise httpcore.ConnectTimeout(f"no answer from {host}")
            if host in self.gated:
                await self.gate.wait()
                self.streams[host] = ClosingStream([])
                return self.streams[host]
        except asyncio.CancelledError:
            self.cancelled.append(host)
            raise
        return await httpcore.AnyIOBackend().connect_tcp(host, port, timeout=timeout)


class ClosingStream(httpcore.AsyncMockStream):
    closed = False

    async def aclose(self) -> None:
        self.closed = True


async def test_an_address_that_never_answers_delays_a_connection_by_the_attempt_delay_not_half_the_timeout() -> None:
    """The addresses were tried one after the other, each with a share of the time left: a receiver whose first
    address was black-holed (an IPv6 one where IPv6 does not get through) cost every new connection half the
    attempt's time-out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    dns = Answers({"hooks.test": [["2001:db8::1", "127.0.0.1"]]})
    inner = RacingBackend(holes=["2001:db8::1"])
    backend = CheckedAddressBackend(allow_private=True, resolve=dns.resolve, inner=inner)
    try:
        started = time.monotonic()
        stream = await backend.connect_tcp("hooks.test", port, timeout=5)
        assert 0.2 < time.monotonic() - started < 1
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", port)
        await stream.aclose()
        assert [host for host, _, _ in inner.connects] == ["2001:db8::1", "127.0.0.1"]
        assert inner.cancelled == ["2001:db8::1"]
    finally:
        listener.close()


async def test_the_attempts_that_lose_are_cancelled_and_a_connection_made_with_the_winners_is_closed() -> None:
    dns = Answers({"three.test": [[OTHER_PUBLIC, PUBLIC, "2606:4700::1001"]]})
    inner = RacingBackend(holes=[OTHER_PUBLIC], gated=[PUBLIC, "2606:4700::1001"])
    backend = CheckedAddressBackend(allow_private=False, resolve=dns.resolve, inner=inner)
    connecting = asyncio.create_task(backend.connect_tcp("three.test", 443, timeout=3))
    async with asyncio.timeout(2):
        while len(inner.connects) < 3:  # the third starts 2 attempt delays after the first
            await asyncio.sleep(0.01)
    inner.gate.set()  # both gated ones connect at once
    stream = await connecting
    assert stream is inner.streams[PUBLIC]  # the first of them in order
    assert not inner.streams[PUBLIC].closed and inner.streams["2606:4700::1001"].closed
    assert inner.cancelled == [OTHER_PUBLIC]


async def test_a_connect_stopped_from_outside_leaves_no_attempt_running() -> None:
    """The delivery's own time-out cancels the connect: every attempt under way is cancelled with it."""
    dns = Answers({"holes.test": [[OTHER_PUBLIC, PUBLIC]]})
    inner = RacingBackend(holes=[OTHER_PUBLIC, PUBLIC])
    backend = CheckedAddressBackend(allow_private=False, resolve=dns.resolve, inner=inner)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(backend.connect_tcp("holes.test", 443, timeout=10), timeout=0.5)
    assert sorted(inner.cancelled) == sorted([OTHER_PUBLIC, PUBLIC])


async def test_when_every_address_fails_a_refusal_is_raised_rather_than_another_addresses_time_out() -> None:
    dns = Answers({"down.test": [[PUBLIC, OTHER_PUBLIC]]})
    inner = RacingBackend(failing=[PUBLIC], holes=[OTHER_PUBLIC])
    backend = CheckedAddressBackend(allow_private=False, resolve=dns.resolve, inner=inner)
    started = time.monotonic()
    with pytest.raises(httpcore.ConnectError, match=re.escape(f"nothing answers at {PUBLIC}")):
        await backend.connect_tcp("down.test", 443, timeout=0.5)
    assert 0.4 < time.monotonic() - started < 1.5  # the other one was waited for, to the deadline and no further

    inner.failing.clear()
    inner.holes.add(PUBLIC)
    started = time.monotonic()
    with pytest.raises(httpcore.ConnectTimeout, match=re.escape(f"no answer from {OTHER_PUBLIC}")):
        await backend.connect_tcp("down.test", 443, timeout=0.5)
    assert 0.4 < time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("resolved", "tried"),
    [
        (
            ["2606:4700::1111", "2606:4700::1001", "192.0.0.9", "1.1.1.1"],
            ["2606:4700::1111", "192.0.0.9", "2606:4700::1001", "1.1.1.1"],
        ),
        (
            ["192.0.0.9", "1.1.1.1", "8.8.8.8", "2606:4700::1111"],
            ["192.0.0.9", "2606:4700::1111", "1.1.1.1", "8.8.8.8"],
        ),
    ],
)
async def test_the_address_families_are_tried_in_turn_the_resolvers_first_family_first(
    resolved: list[str], tried: list[str]
) -> None:
    dns = Answers({"both.test": [resolved]})
    inner = RecordingBackend(failing=resolved)
    backend = CheckedAddressBackend(allow_private=False, resolve=dns.resolve, inner=inner)
    with pytest.raises(httpcore.ConnectError, match=re.escape(f"nothing answers at {tried[-1]}")):
        await backend.connect_tcp("both.test", 443, timeout=5)
    assert [host for host, _, _ in inner.connects] == tried


async def test_a_slow_resolver_is_a_connect_timeout_of_the_connect_timeout() -> None:
    async def hanging(host: str, port: int) -> list[str]:
        await asyncio.sleep(30)
        return [PUBLIC]

    inner = RecordingBackend()
    backend = CheckedAddressBackend(allow_private=False, resolve=hanging, inner=inner)
    with pytest.raises(httpcore.ConnectTimeout, match=r"cannot resolve slow\.test within 0\.2 s"):
        await backend.connect_tcp("slow.test", 443, timeout=0.2)
    assert inner.connects == []


async def test_literal_addresses_are_not_resolved_and_private_ones_refused() -> None:
    dns = Answers()
    inner = RecordingBackend()
    backend = CheckedAddressBackend(allow_private=False, resolve=dns.resolve, inner=inner)
    await backend.connect_tcp(PUBLIC, 80)
    await backend.connect_tcp(OTHER_PUBLIC, 80)
    for private in ("127.0.0.1", "::1", "169.254.169.254"):
        with pytest.raises(AddressRefused, match=r"^url points to a non-public address"):
            await backend.connect_tcp(private, 80)
    assert dns.lookups == []
    assert [host for host, _, _ in inner.connects] == [PUBLIC, OTHER_PUBLIC]


async def test_with_private_addresses_allowed_nothing_is_refused_and_the_resolved_address_is_connected_to() -> None:
    dns = Answers({"hooks.internal": [["10.1.2.3", "127.0.0.1"]]})
    inner = RecordingBackend()
    backend = CheckedAddressBackend(allow_private=True, resolve=dns.resolve, inner=inner)
    await backend.connect_tcp("hooks.internal", 80)
    await backend.connect_tcp("127.0.0.1", 80)
    assert [host for host, _, _ in inner.connects] == ["10.1.2.3", "127.0.0.1"]
    assert dns.lookups == ["hooks.internal"]


async def test_a_name_that_does_not_resolve_is_refused_or_with_private_addresses_allowed_a_connect_error() -> None:
    dns = Answers()
    refusing = CheckedAddressBackend(allow_private=False, resolve=dns.resolve, inner=RecordingBackend())
    with pytest.raises(AddressRefused, match=r"^cannot resolve nowhere\.test: Name or service not known$"):
        await refusing.connect_tcp("nowhere.test", 443)
    allowing = CheckedAddressBackend(allow_private=True, resolve=dns.resolve, inner=RecordingBackend())
    with pytest.raises(httpcore.ConnectError, match="Name or service not known"):
        await allowing.connect_tcp("nowhere.test", 443)


# A loop of its own: the test replaces its loop's default executor, and shuts it down at the end; on the session's
# loop every later test's asyncio.to_thread (and loop.getaddrinfo) would fail ("cannot schedule new futures after
# shutdown"), as test_webhooks.py's shutdown test did when run after this file.
@pytest.mark.asyncio(loop_scope="function")
async def test_lookups_run_in_the_resolvers_own_bounded_threads_and_leave_the_default_executor_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resolver that hangs holds the resolver's threads, not the event loop's default executor (here of one
    thread), which asyncio.to_thread callers elsewhere in the service share."""
    release = threading.Event()
    threads: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: object, port: object, *args: object, **kwargs: object) -> object:
        if not str(host).startswith("slow"):
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        threads.append(threading.current_thread().name)
        release.wait(10)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    default = ThreadPoolExecutor(max_workers=1)
    asyncio.get_running_loop().set_default_executor(default)
    resolver = Resolver(threads=2)
    try:
        lookups = [asyncio.create_task(resolver.resolve(f"slow{n}.test", 443)) for n in range(5)]
        await asyncio.sleep(0.3)
        assert len(threads) == 2 and all(name.startswith("webhook-resolver") for name in threads), threads
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), timeout=2) == "free"
        for lookup in lookups[2:]:  # timed out while waiting for a thread: never started
            lookup.cancel()
        await asyncio.gather(*lookups[2:], return_exceptions=True)
        release.set()
        assert [await lookup for lookup in lookups[:2]] == [[PUBLIC], [PUBLIC]]
        await asyncio.sleep(0.1)
        assert len(threads) == 2
    finally:
        release.set()
        resolver.close()
        default.shutdown(wait=False)


async def test_lookups_of_one_host_share_one_thread_even_after_their_attempts_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each attempt's lookup took a thread of its own and held it until the system resolver gave up, long after
    the attempt had timed out: one host whose name server never answers took every resolver thread in a few
    retries, and every other host's deliveries waited for one."""
    release = threading.Event()
    looked_up: list[str] = []

    def getaddrinfo(host: object, port: object, *args: object, **kwargs: object) -> object:
        looked_up.append(str(host))
        if host == "hung.test":
            release.wait(10)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    resolver = Resolver(threads=2)
    try:
        for _ in range(3):  # attempts that time out one after the other, each while the lookup hangs
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(resolver.resolve("hung.test", 443), timeout=0.2)
        together = [asyncio.create_task(resolver.resolve("hung.test", 443)) for _ in range(3)]
        # The other thread is free for another host.
        assert await asyncio.wait_for(resolver.resolve("fine.test", 443), timeout=2) == [PUBLIC]
        assert looked_up == ["hung.test", "fine.test"]
        release.set()
        assert await asyncio.gather(*together) == [[PUBLIC]] * 3
        assert await resolver.resolve("hung.test", 443) == [PUBLIC]  # answered: the next one is a new lookup
        assert looked_up == ["hung.test", "fine.test", "hung.test"]
    finally:
        release.set()
        resolver.close()


_EXIT_WITH_A_LOOKUP_UNDER_WAY = """
import asyncio, socket, time
from service.webhooks.connect import Resolver

def getaddrinfo(host, port, *args, **kwargs):
    time.sleep(30)  # a name server that never answers, until the system resolver gives up
    raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

socket.getaddrinfo = getaddrinfo

async def main():
    resolver = Resolver()
    try:
        await asyncio.wait_for(resolver.resolve("slow.test", 443), timeout=0.2)
    except TimeoutError:
        pass
    resolver.close()

asyncio.run(main())
"""


def test_a_lookup_under_way_does_not_hold_up_the_process_exit() -> None:
    """The service's process ends once it has shut down, whatever lookup the system resolver is still on: a
    ThreadPoolExecutor's threads are joined at interpreter exit, so a SIGTERM'd process lingered until then."""
    root = Path(service.__file__).resolve().parents[1]
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", _EXIT_WITH_A_LOOKUP_UNDER_WAY],
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
        timeout=60,
    )
    assert time.monotonic() - started < 10


async def test_an_attempt_stopped_while_its_host_was_resolved_is_logged_as_such(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lookup that never answers (or waits for a resolver thread others hold) was logged as "no answer within",
    as though the receiver had been reached and were slow."""
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: object, port: object, *args: object, **kwargs: object) -> object:
        if host != "slow.test":
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    settings = SimpleNamespace(webhook_timeout_seconds=0.3, webhook_allow_private_addresses=False)
    deliverer = WebhookDeliverer(cast(Any, settings), cast(Any, None))
    row = SimpleNamespace(
        url="https://slow.test/hook",
        secret=new_secret(),
        event_id="evt_1",
        event_type="response.completed",
        created_at=datetime.datetime.now(datetime.UTC),
        response_id="resp_1",
    )
    try:
        assert await deliverer._send(row) == (None, "cannot resolve slow.test within 0.3 s (WEBHOOK_TIMEOUT_SECONDS)")
    finally:
        release.set()
        await deliverer.aclose()


def _certificate(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for `name`: the CA's file, the certificate's, its key's."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class TlsReceiver:
    """An HTTPS receiver on loopback: records each connection's SNI name and each request's Host header,
    answers 204 and keeps the connection open."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.server_names: list[str | None] = []
        self.hosts: list[str] = []
        self.context.sni_callback = self._server_name

    def _server_name(self, _sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode("latin-1").split("\r\n")
                fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                self.hosts.append(fields.get("Host") or fields.get("host", ""))
                await reader.readexactly(int(fields.get("Content-Length") or fields.get("content-length") or 0))
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        port: int = self.server.sockets[0].getsockname()[1]
        return port


@pytest.fixture
def tls_files(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    yield _certificate(tmp_path, "hooks.test")


async def test_over_tls_the_checked_address_is_connected_to_with_the_urls_host_name_for_sni_host_and_certificate(
    tls_files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # trusted as httpx's default client trusts it
    receiver = TlsReceiver(cert, key)
    port = await receiver.start()
    dns = Answers({"hooks.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    client = webhook_client(timeout=5, allow_private=True, resolve=dns.resolve)
    try:
        for _ in range(2):
            answer = await client.post(f"https://hooks.test:{port}/hook", content=b"{}")
            assert answer.status_code == 204
        assert receiver.server_names == ["hooks.test"]  # one connection, kept alive for the name
        assert receiver.hosts == [f"hooks.test:{port}"] * 2
        assert dns.lookups == ["hooks.test"]
        # The certificate is checked against the URL's name, not the address connected to.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.post(f"https://other.test:{port}/hook", content=b"{}")
        assert receiver.server_names == ["hooks.test", "other.test"]
    finally:
        await client.aclose()
        receiver.server.close()
        await receiver.server.wait_closed()


async def test_a_refused_name_is_an_address_refused_through_the_client_and_nothing_is_connected_to() -> None:
    dns = Answers({"rebind.test": [["127.0.0.1"]]})
    client = webhook_client(timeout=5, allow_private=False, resolve=dns.resolve)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    try:
        port = listener.getsockname()[1]
        with pytest.raises(AddressRefused, match=r"^rebind\.test resolves to a non-public address \(127\.0\.0\.1\)$"):
            await client.post(f"http://rebind.test:{port}/hook", content=b"{}")
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection came
    finally:
        listener.close()
        await client.aclose()
