"""Measuring primitives: request bodies, paired latency (service vs. the direct call, interleaved so machine
noise hits both alike), closed-loop throughput, SSE checking, and memory sampling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
import psutil

from bench.fake_upstream import delta_text
from bench.http_client import Client, Reply
from bench.stack import HOST

USER_TEXT = "Please summarise what we discussed so far in two sentences, and suggest one next step."
NEW_ITEM = msgspec.json.encode(
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": USER_TEXT}]}
)
UPSTREAM_PATH = "/api/v1/responses"


def turn_body(model: str, conversation_id: str | None, *, stream: bool = False) -> bytes:
    body: dict[str, object] = {"model": model, "input": USER_TEXT}
    if conversation_id is not None:
        body["conversation"] = conversation_id
    if stream:
        body["stream"] = True
    return msgspec.json.encode(body)


def direct_body(model: str, history: Sequence[str], *, stream: bool = False) -> bytes:
    """What the service sends upstream for a turn on that history: the same bytes, sent by us directly."""
    head = msgspec.json.encode({"model": model, "store": False, "stream": stream})
    return head[:-1] + b',"input":[' + ",".join([*history, NEW_ITEM.decode()]).encode() + b"]}"


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


@dataclass
class Samples:
    service: list[float] = field(default_factory=list)
    direct: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def added(self, q: float) -> float:
        """Added milliseconds at percentile q: the service's percentile minus the direct call's."""
        return (percentile(self.service, q) - percentile(self.direct, q)) * 1000

    def note_error(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what[:300]


def describe(reply: Reply) -> str:
    return f"HTTP {reply.status}: {reply.body[:200].decode('utf-8', 'replace')}"


def service_client(port: int, secret: str) -> Client:
    return Client(HOST, port, {"authorization": f"Bearer {secret}"})


def upstream_client(port: int) -> Client:
    return Client(HOST, port, {"authorization": "Bearer bench"})


@dataclass(frozen=True)
class Lane:
    """One kind of request in an interleaved measurement: `bodies(i)` gives its i-th request body."""

    name: str
    client: Client
    path: str
    bodies: Callable[[int], bytes]


async def interleaved(
    lanes: Sequence[Lane], *, count: int, warmup: int, first_byte: bool = False
) -> tuple[dict[str, list[float]], Samples]:
    """One request at a time, cycling through the lanes and rotating which goes first, so that machine noise
    falls on every lane alike. Returns seconds per lane, and a Samples holding the error count."""
    seconds: dict[str, list[float]] = {lane.name: [] for lane in lanes}
    errors = Samples()
    drain: Callable[[bytes], None] | None = (lambda _: None) if first_byte else None
    for i in range(warmup + count):
        shift = i % len(lanes)
        for lane in [*lanes[shift:], *lanes[:shift]]:
            try:
                reply = await lane.client.request("POST", lane.path, lane.bodies(i), on_chunk=drain)
            except Exception as exc:
                errors.note_error(f"{lane.name}: {type(exc).__name__} {exc}")
                continue
            if reply.status != 200:
                errors.note_error(f"{lane.name}: {describe(reply)}")
                continue
            if i >= warmup:
                seconds[lane.name].append(reply.first_byte_seconds if first_byte else reply.seconds)
    return seconds, errors


async def paired_latency(
    service: Client,
    upstream: Client,
    service_bodies: Callable[[int], bytes],
    upstream_body: bytes,
    *,
    count: int,
    warmup: int,
    first_byte: bool = False,
) -> Samples:
    """The service against the direct call. `service_bodies(i)` gives the i-th service request (each on its own
    conversation so the history stays at its size)."""
    lanes = [
        Lane("service", service, "/v1/responses", service_bodies),
        Lane("direct", upstream, UPSTREAM_PATH, lambda _: upstream_body),
    ]
    seconds, samples = await interleaved(lanes, count=count, warmup=warmup, first_byte=first_byte)
    samples.service, samples.direct = seconds["service"], seconds["direct"]
    return samples


@dataclass
class Throughput:
    completed: int = 0
    all_completed: int = 0  # including the warm-up, to divide CPU measured over the whole run
    errors: int = 0
    first_error: str = ""
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    client_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


async def closed_loop(
    clients: Sequence[Client], path: str, bodies: Callable[[int, int], bytes], *, duration: float, warmup: float
) -> Throughput:
    """Each client sends its next request as soon as the previous one answered; requests that start after the
    warm-up and end before the deadline count. `bodies(client_index, n)` gives client i's n-th request."""
    result = Throughput()
    cpu_before = time.process_time()
    start = time.perf_counter()
    measure_from = start + warmup
    deadline = measure_from + duration

    async def run(index: int, client: Client) -> None:
        n = 0
        while True:
            now = time.perf_counter()
            if now >= deadline:
                return
            try:
                reply = await client.request("POST", path, bodies(index, n))
            except Exception as exc:
                result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__} {exc}"
                continue
            finally:
                n += 1
            if reply.status != 200:
                result.errors += 1
                result.first_error = result.first_error or describe(reply)
                continue
            result.all_completed += 1
            if now >= measure_from and time.perf_counter() <= deadline:
                result.completed += 1
                result.latencies.append(reply.seconds)

    await asyncio.gather(*(run(i, c) for i, c in enumerate(clients)))
    result.seconds = duration
    result.client_cpu = time.process_time() - cpu_before
    return result


class _Event(msgspec.Struct):
    type: str = ""
    sequence_number: int = -1
    delta: str | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


@dataclass
class StreamCheck:
    """What a client saw of one SSE stream, checked against the fake upstream's numbered deltas."""

    status: int = 0
    events: int = 0
    deltas: list[str] = field(default_factory=list)
    ordered: bool = True
    completed: bool = False
    last_type: str = ""
    ttfb: float = 0.0
    seconds: float = 0.0
    error: str = ""
    head: bytes = b""  # the first bytes, to show what an error answer said
    _buffer: bytes = b""
    _last_sequence: int = -1

    def feed(self, chunk: bytes) -> None:
        if len(self.head) < 300:
            self.head += chunk[: 300 - len(self.head)]
        self._buffer += chunk
        *blocks, self._buffer = self._buffer.split(b"\n\n")
        for block in blocks:
            for line in block.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                try:
                    event = _decode_event(data)
                except msgspec.DecodeError:
                    self.error = self.error or f"undecodable event {data[:80]!r}"
                    continue
                self.events += 1
                self.last_type = event.type
                if event.sequence_number >= 0:
                    self.ordered &= event.sequence_number > self._last_sequence
                    self._last_sequence = event.sequence_number
                if event.type == "response.output_text.delta" and event.delta is not None:
                    self.deltas.append(event.delta)
                elif event.type == "response.completed":
                    self.completed = True

    def intact(self, expected_deltas: int) -> bool:
        return (
            self.status == 200
            and self.completed
            and self.ordered
            and self.deltas == [delta_text(i) for i in range(expected_deltas)]
        )


async def one_stream(client: Client, path: str, body: bytes, timeout: float = 120.0) -> StreamCheck:
    check = StreamCheck()
    try:
        reply = await client.request("POST", path, body, on_chunk=check.feed, timeout=timeout)
    except Exception as exc:
        check.error = f"{type(exc).__name__} {exc}"
        return check
    finally:
        client.close()
    check.status = reply.status
    check.ttfb = reply.first_byte_seconds
    check.seconds = reply.seconds
    if reply.status != 200:
        check.error = f"HTTP {reply.status}: {check.head.decode('utf-8', 'replace')}"
    return check


class MemorySampler:
    """Samples the resident memory (MiB) of processes every `interval` seconds in a background task."""

    def __init__(self, processes: Callable[[], list[psutil.Process]], interval: float) -> None:
        self._processes = processes
        self._interval = interval
        self.samples: list[tuple[float, list[float]]] = []
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> list[float]:
        values = []
        for process in self._processes():
            try:
                values.append(process.memory_info().rss / 2**20)
            except psutil.Error:
                continue
        return values

    async def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), self.sample()))
            await asyncio.sleep(self._interval)

    def __enter__(self) -> MemorySampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def peak_total(self) -> float:
        return max((sum(values) for _, values in self.samples), default=float("nan"))


def postgres_cpu_seconds() -> float:
    """CPU used so far by every PostgreSQL process on this machine (backends and background workers alike): the
    suite runs its server on loopback, so this is the database's share of a scenario."""
    total = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] != "postgres":
            continue
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue  # a backend that ended meanwhile
        total += times.user + times.system
    return total
