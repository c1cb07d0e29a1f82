"""How deliveries connect: to an address that was checked, never to one the name resolves to later.

A host name is resolved once per new connection, every address it gave is checked (unless
WEBHOOK_ALLOW_PRIVATE_ADDRESSES), and the connection is made to those addresses, so a name whose answer changes
between a check and a connect (DNS rebinding) cannot lead a delivery to the service's own network. Everything
above the TCP connect is httpx's as before: the Host header, TLS SNI and certificate verification are for the
URL's host name, and keep-alive connections are pooled by host name (a pooled one goes on to its checked address).
A name's addresses are connected to as Happy Eyeballs does (RFC 8305): the families interleaved, a new attempt
every 250 ms or as soon as one fails, the first connection made kept, so one address that never answers (an
unreachable IPv6 one, say) costs a new connection 250 ms, not a share of the attempt's time-out.

Resolution runs in a few threads of its own: a slow resolver holds those (each lookup until the system resolver
gives up, past the attempt's WEBHOOK_TIMEOUT_SECONDS), never what the event loop resolves names in (the default
executor under asyncio, libuv's four threads under uvloop, as served), which the rest of the service shares: the
upstream client's lookups, asyncio.to_thread."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import itertools
import queue
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

from service.webhooks.addresses import AddressRefused, check_literal, check_resolved

# Lookups under way at once, all deliveries of a process together; the next ones wait for a thread (and a
# waiting one whose attempt timed out is dropped unstarted). Each thread mostly waits on the network, and one
# host holds at most one of them (Resolver.resolve): it takes as many hosts whose name servers never answer to
# hold up the others.
RESOLVER_THREADS = 8
# httpx's default limits (httpx.AsyncHTTPTransport's), kept: at most MAX_IN_FLIGHT sends run at once anyway.
MAX_CONNECTIONS = 100
MAX_KEEPALIVE_CONNECTIONS = 20
KEEPALIVE_EXPIRY_SECONDS = 5.0
# RFC 8305's Connection Attempt Delay: how long an attempt has to itself before the next address is tried too.
CONNECT_ATTEMPT_DELAY_SECONDS = 0.25

Resolve = Callable[[str, int], Awaitable[list[str]]]

# The host an attempt was still resolving when it was stopped (its WEBHOOK_TIMEOUT_SECONDS ran out), set in the
# attempt's own task: the delivery log then says so, rather than blaming a receiver that was never reached (a
# lookup waits for a free resolver thread, and one that never answers holds a thread past its attempt).
stopped_resolving: ContextVar[str | None] = ContextVar("webhook_stopped_resolving", default=None)


class Resolver:
    """getaddrinfo in a bounded number of threads of its own; the addresses a name resolves to, in the system's
    order (its preference, RFC 6724), once each. Raises OSError (or UnicodeError for a name IDNA refuses).

    Lookups of one host at once share one: a host whose name server never answers holds one thread, however many
    of its deliveries are attempted meanwhile (each attempt ends at its time-out; the lookup runs on until the
    system resolver gives up, and the next attempts wait for it rather than take another thread each).

    The threads are daemon threads, started as lookups come: a lookup the system resolver is slow to answer (up to
    its own timeouts, past any attempt's) must not hold up the process's exit, as a ThreadPoolExecutor's threads
    would (the interpreter joins those at exit, so a SIGTERM'd process lingered until the lookup gave up)."""

    def __init__(self, threads: int = RESOLVER_THREADS) -> None:
        self._size = threads
        self._threads: list[threading.Thread] = []
        self._queue: queue.SimpleQueue[_Lookup | None] = queue.SimpleQueue()
        self._under_way: dict[tuple[str, int], _Lookup] = {}
        self._closed = False

    async def resolve(self, host: str, port: int) -> list[str]:
        if self._closed:
            raise RuntimeError("the webhooks' resolver is closed")
        key = (host, port)
        lookup = self._under_way.get(key)
        if lookup is None:
            lookup = self._start(key)
        lookup.waiters += 1
        try:
            infos = await asyncio.shield(lookup.answer)
        finally:
            lookup.waiters -= 1
            if not lookup.waiters and not lookup.started and not lookup.answer.done():
                lookup.answer.cancel()  # no attempt waits for it any more: its thread skips it
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def _start(self, key: tuple[str, int]) -> _Lookup:
        lookup = _Lookup(key[0], key[1], asyncio.get_running_loop().create_future())
        self._under_way[key] = lookup

        def ended(answer: asyncio.Future[list[Any]]) -> None:
            if self._under_way.get(key) is lookup:
                del self._under_way[key]
            if not answer.cancelled():
                answer.exception()  # retrieved: an answer no attempt waited for any more is not an error to log

        lookup.answer.add_done_callback(ended)
        if len(self._threads) < self._size:
            thread = threading.Thread(target=self._work, name=f"webhook-resolver_{len(self._threads)}", daemon=True)
            self._threads.append(thread)
            thread.start()
        self._queue.put(lookup)
        return lookup

    def _work(self) -> None:
        while (lookup := self._queue.get()) is not None:
            if lookup.answer.cancelled():  # every attempt waiting for it ended before a thread was free
                continue
            lookup.started = True
            try:
                infos = socket.getaddrinfo(lookup.host, lookup.port, type=socket.SOCK_STREAM)
            except Exception as exc:  # handed to the attempts awaiting it, which report it
                settle = functools.partial(_fail, lookup.answer, exc)
            else:
                settle = functools.partial(_succeed, lookup.answer, infos)
            with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile: no one waits any more
                lookup.answer.get_loop().call_soon_threadsafe(settle)

    def close(self) -> None:
        """Lookups not started are dropped; one under way ends in its thread, unwaited for (even at exit)."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)


@dataclasses.dataclass
class _Lookup:
    host: str
    port: int
    answer: asyncio.Future[list[Any]]  # settled on its own loop, from the thread that looked the host up
    waiters: int = 0  # attempts awaiting the answer now
    started: bool = False  # a thread took it (set by that thread)


def _succeed(answer: asyncio.Future[list[Any]], infos: list[Any]) -> None:
    if not answer.done():
        answer.set_result(infos)


def _fail(answer: asyncio.Future[list[Any]], exc: Exception) -> None:
    if not answer.done():
        answer.set_exception(exc)


def _interleaved(addresses: list[str]) -> list[str]:
    """The families taken in turn, the first address's family first, each in the resolver's order."""
    families: dict[bool, list[str]] = {}
    for address in addresses:
        families.setdefault(":" in address, []).append(address)
    return [address for turn in itertools.zip_longest(*families.values()) for address in turn if address is not None]


async def _first_connected(
    addresses: list[str], connect: Callable[[str], Coroutine[Any, Any, httpcore.AsyncNetworkStream]], delay: float
) -> httpcore.AsyncNetworkStream:
    """The first connection made, the addresses tried in order: each one `delay` after the one before, or as soon
    as an attempt fails. When it returns or raises, no attempt is left running: the others are cancelled, and any
    other connection made meanwhile is closed. When all fail, the last failure is raised, but a connect error (an
    answer: refused, unreachable) rather than another address's time-out."""
    waiting = list(addresses)
    started: list[asyncio.Task[httpcore.AsyncNetworkStream]] = []
    running: set[asyncio.Task[httpcore.AsyncNetworkStream]] = set()
    winner: httpcore.AsyncNetworkStream | None = None
    kept = None  # the stream returned, set last: any other connection made (the winner too, on an error) is closed
    failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
    try:
        while winner is None and (waiting or running):
            if waiting:
                started.append(asyncio.create_task(connect(waiting.pop(0))))
                running.add(started[-1])
            done, running = await asyncio.wait(
                running, timeout=delay if waiting else None, return_when=asyncio.FIRST_COMPLETED
            )
            for attempt in sorted(done, key=started.index):
                try:
                    stream = attempt.result()
                except httpcore.ConnectTimeout as exc:
                    failure = failure if isinstance(failure, httpcore.ConnectError) else exc
                except httpcore.ConnectError as exc:
                    failure = exc
                else:
                    winner = winner or stream
        if winner is None:
            assert failure is not None
            raise failure
        kept = winner
        return winner
    finally:
        for attempt in started:
            attempt.cancel()
        await asyncio.wait(started)
        for attempt in started:
            if not attempt.cancelled() and attempt.exception() is None and attempt.result() is not kept:
                await attempt.result().aclose()


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class CheckedAddressBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend for webhooks: connect_tcp(host) resolves the host itself, refuses it
    (AddressRefused, as a delivery's check always did) when any address is non-public, else connects to those
    addresses as Happy Eyeballs does (_first_connected), each attempt bounded by the time left. With allow_private
    nothing is refused, but the addresses are still resolved here (in the resolver's threads) and connected to as
    such."""

    def __init__(
        self, *, allow_private: bool, resolve: Resolve, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self._allow_private = allow_private
        self._resolve = resolve
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def _addresses(self, host: str, port: int) -> list[str]:
        literal = _literal(host)
        if literal is not None:
            if not self._allow_private:
                check_literal(literal)
            return [host]
        try:
            addresses = await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            reason = (exc.strerror if isinstance(exc, OSError) else None) or exc
            if self._allow_private:  # nothing to refuse: the connect error httpx would have raised
                raise httpcore.ConnectError(str(exc)) from exc
            raise AddressRefused(f"cannot resolve {host}: {reason}") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        if not self._allow_private:
            check_resolved(host, addresses)
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature: the connect timeout it passes)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                addresses = await self._addresses(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"cannot resolve {host} within {timeout:g} s") from None
        except asyncio.CancelledError:
            stopped_resolving.set(host)
            raise

        async def attempt(address: str) -> httpcore.AsyncNetworkStream:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            return await self._inner.connect_tcp(
                address, port, timeout=left, local_address=local_address, socket_options=socket_options
            )

        return await _first_connected(_interleaved(addresses), attempt, CONNECT_ATTEMPT_DELAY_SECONDS)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def webhook_client(*, timeout: float, allow_private: bool, resolve: Resolve) -> httpx.AsyncClient:
    """httpx's client with its usual transport, but for the connection pool: httpx.AsyncHTTPTransport takes no
    network backend, so the pool it builds is replaced with httpcore's same pool (the transport's own SSL context,
    http/1.1, httpx's default limits) on CheckedAddressBackend. The transport's request and error mapping stay
    httpx's. Environment proxies (HTTP(S)_PROXY, ALL_PROXY) are not used: a proxy would resolve the name itself,
    past the check. SSL_CERT_FILE and SSL_CERT_DIR are honoured, as by httpx's default client."""
    ssl_context = httpx.create_ssl_context()
    transport = httpx.AsyncHTTPTransport(verify=ssl_context)
    # httpx's private attribute (0.28, 0.29): should a release rename it, starting fails here rather than the
    # transport going on with its own pool, unchecked (mypy --strict would flag it too).
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("httpx.AsyncHTTPTransport no longer keeps its connection pool in _pool")
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=MAX_CONNECTIONS,
        max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
        network_backend=CheckedAddressBackend(allow_private=allow_private, resolve=resolve),
    )
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)
