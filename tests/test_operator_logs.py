"""`serve` as an operator runs it: one JSON log line per request with the documented keys (uvicorn's lines in the
same format), request ids in every line of a request, metrics summed over two workers on METRICS_PORT without a
credential, and no secret in any line of a DEBUG run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from tests.cli_support import ROOT, cli_env
from tests.fake_openrouter import FakeOpenRouter, Reply, free_port

ADMIN_KEY = "admin-operator-secret-1234"
OPENROUTER_KEY = "sk-or-operator-secret-5678"
REQUEST_KEYS = {"time", "request_id", "method", "route", "path", "status", "duration_ms", "tenant"}


def _wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.communicate()[0]}")
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve was not ready in time")


def _serve(settings: Settings, fake_upstream: FakeOpenRouter, **env: str) -> tuple[subprocess.Popen[str], str]:
    """`serve` on a free port with the operator's keys, its output (the log) on a pipe; returns it and its URL."""
    port = free_port()
    assert settings.database_url is not None
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        cwd=ROOT,
        env=cli_env(
            DATABASE_URL=settings.database_url,
            PORT=str(port),
            ADMIN_API_KEY=ADMIN_KEY,
            OPENROUTER_API_KEY=OPENROUTER_KEY,
            OPENROUTER_BASE_URL=fake_upstream.base_url,
            AUTO_MIGRATE="false",
            **env,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def _metric(exposition: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_json_request_lines_request_ids_metrics_over_two_workers_and_no_secret_at_debug(
    base_settings: Settings, fake_upstream: FakeOpenRouter
) -> None:
    metrics_port = free_port()
    proc, url = _serve(base_settings, fake_upstream, METRICS_PORT=str(metrics_port), WORKERS="2", LOG_LEVEL="DEBUG")
    secrets = [ADMIN_KEY, OPENROUTER_KEY]
    try:
        _wait_ready(url, proc)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        created = httpx.post(f"{url}/admin/api-keys", json={"tenant": "ops", "name": "t"}, headers=admin).json()
        tenant_key = created["key"]
        secrets.append(tenant_key)
        tenant = {"Authorization": f"Bearer {tenant_key}"}
        wrong_key = "sk-cs-not-a-real-key-0000000000"
        secrets.append(wrong_key)
        # The upstream quotes our key back in an error: it is redacted before anything is logged.
        fake_upstream.enqueue(
            Reply(kind="json", status=400, body={"error": {"message": f"bad key {OPENROUTER_KEY}", "code": 400}})
        )
        refused = httpx.post(f"{url}/v1/responses", json={"model": "m", "input": "x"}, headers=tenant)
        assert refused.status_code == 400
        # OpenRouter refusing the service's own key, then its account out of credits: every turn fails until an
        # operator acts, so each is a warning, and the metric says which status it was.
        for status in (401, 402):
            quoted = {"error": {"message": f"No auth credentials found for {OPENROUTER_KEY}", "code": status}}
            fake_upstream.enqueue(Reply(kind="json", status=status, body=quoted))
            answer = httpx.post(f"{url}/v1/responses", json={"model": "m", "input": "x"}, headers=tenant)
            assert answer.status_code == {401: 502, 402: 402}[status], answer.text
        # An answer that is not JSON: its line names the kind of upstream error, as for every other kind.
        fake_upstream.enqueue(Reply(kind="json", body=b"not json{"))
        unreadable = httpx.post(
            f"{url}/v1/responses",
            json={"model": "m", "input": "x"},
            headers={**tenant, "X-Request-Id": "unreadable"},
        )
        assert unreadable.status_code == 502
        turns = []
        for n in range(6):
            answer = httpx.post(
                f"{url}/v1/responses",
                json={"model": "openai/gpt-4o-mini", "input": f"hi {n}"},
                headers={**tenant, "X-Request-Id": f"turn-{n}"},
            )
            assert answer.status_code == 200
            assert answer.headers["x-request-id"] == f"turn-{n}"
            turns.append(answer.json()["id"])
        unauthorized = httpx.get(f"{url}/v1/conversations/conv_x", headers={"Authorization": f"Bearer {wrong_key}"})
        assert unauthorized.status_code == 401
        assert httpx.get(f"{url}/metrics", headers=tenant).status_code == 403
        assert httpx.get(f"{url}/metrics").status_code == 401
        httpx.delete(f"{url}/admin/api-keys/{created['id']}", headers=admin)

        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.status_code == 200
        # Two workers answered; the parent's scrape adds up both.
        assert _metric(scraped.text, "convstore_turns_total", outcome="completed") == 6
        assert _metric(scraped.text, "convstore_http_requests_total", route="/v1/responses", status="200") == 6
        assert _metric(scraped.text, "convstore_tokens_total", type="input", tenant="ops") == 60
        for status in ("400", "401", "402"):
            assert _metric(scraped.text, "convstore_upstream_errors_total", kind="http", status=status) == 1
        assert _metric(scraped.text, "convstore_upstream_errors_total", kind="protocol", status="none") == 1
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=60)

    for secret in secrets:
        assert secret not in output, f"a secret ({secret[:6]}...) reached the log"
    lines = [line for line in output.splitlines() if line.strip()]
    records: list[dict[str, Any]] = []
    for line in lines:
        if line.startswith(("Upstream:", "Database:", "Serving on")):
            continue  # the start-up banner, printed before logging starts
        try:
            records.append(json.loads(line))  # one format: every other line is JSON
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's own lines, same format
    requests = [r for r in records if r["logger"] == "service.access"]
    for n, response_id in enumerate(turns):
        (line,) = [r for r in requests if r.get("request_id") == f"turn-{n}"]
        assert line.keys() >= REQUEST_KEYS
        assert line["method"] == "POST" and line["route"] == "/v1/responses" and line["status"] == 200
        assert line["tenant"] == "ops" and line["response_id"] == response_id
        assert line["upstream_status"] == 200 and line["upstream_attempts"] == 1
        assert line["input_tokens"] == 10 and line["output_tokens"] == 5
        assert line["upstream_latency_ms"] >= line["upstream_ttfb_ms"] > 0
    (unreadable_line,) = [r for r in requests if r.get("request_id") == "unreadable"]
    assert unreadable_line["status"] == 502 and unreadable_line["error_code"] == "upstream_error"
    assert unreadable_line["upstream_error"] == "protocol" and unreadable_line["upstream_status"] == 200
    (denied,) = [r for r in requests if r["path"] == "/v1/conversations/conv_x"]
    assert denied["status"] == 401 and denied["route"] == "/v1/conversations/{conversation_id}"
    assert denied["tenant"] is None and denied["error_code"] == "invalid_api_key"
    refused_account = [r["message"] for r in records if r["logger"] == "service.upstream" and r["level"] == "WARNING"]
    assert "OpenRouter refused the service's key: check OPENROUTER_API_KEY (HTTP 401)" in refused_account
    assert (
        "OpenRouter refused the service's account for lack of credits: top it up, or lower max_output_tokens (HTTP 402)"
        in refused_account
    )
    # Every line logged while a request ran carries that request's id: the refused turn logged a warning.
    (failed_turn,) = [r for r in requests if r.get("upstream_status") == 400]
    during = [r for r in records if r.get("request_id") == failed_turn["request_id"]]
    assert len(during) >= 1


def test_shared_background_work_a_request_starts_does_not_carry_its_request_id(
    base_settings: Settings, fake_upstream: FakeOpenRouter
) -> None:
    """The model catalog is read when the first turn needs it, in a task every later turn shares: its lines (the
    read, and any later refresh or failure) belong to no request, and carried the first turn's id."""
    proc, url = _serve(base_settings, fake_upstream, LOG_LEVEL="INFO")
    try:
        _wait_ready(url, proc)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        key = httpx.post(f"{url}/admin/api-keys", json={"tenant": "ops", "name": "t"}, headers=admin).json()["key"]
        turn = httpx.post(
            f"{url}/v1/responses",
            json={"model": "openai/gpt-4o-mini", "input": "hi"},
            headers={"Authorization": f"Bearer {key}", "X-Request-Id": "first-turn"},
            timeout=30,
        )
        assert turn.status_code == 200, turn.text
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    (read,) = [line for line in lines if line["message"].startswith("model catalog read")]
    assert "request_id" not in read, read
    assert [line["status"] for line in lines if line.get("request_id") == "first-turn" and "status" in line] == [200]


def test_a_refused_openrouter_key_is_a_warning_once_a_minute_not_one_per_turn(
    base_settings: Settings, fake_upstream: FakeOpenRouter
) -> None:
    """Every turn fails while the key is refused: one warning says so, not one per turn (a busy service would write
    hundreds a second)."""
    proc, url = _serve(base_settings, fake_upstream, LOG_LEVEL="INFO")
    try:
        _wait_ready(url, proc)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        key = httpx.post(f"{url}/admin/api-keys", json={"tenant": "ops", "name": "t"}, headers=admin).json()["key"]
        refused = {"error": {"message": "No auth credentials found", "code": 401}}
        for _ in range(4):
            fake_upstream.enqueue(Reply(kind="json", status=401, body=refused))
            answer = httpx.post(
                f"{url}/v1/responses", json={"model": "m", "input": "x"}, headers={"Authorization": f"Bearer {key}"}
            )
            assert answer.status_code == 502, answer.text
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    warned = [line["message"] for line in lines if line["logger"] == "service.upstream" and line["level"] == "WARNING"]
    assert warned == ["OpenRouter refused the service's key: check OPENROUTER_API_KEY (HTTP 401)"]
