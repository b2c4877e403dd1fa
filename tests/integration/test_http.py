"""What every service answers the same way: problems, request ids, limits, health, metrics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from shared.config import PlatformConfig
from shared.service import POOL, Service, create_app


@pytest.fixture
async def client(notes: Service, config: PlatformConfig) -> AsyncIterator[TestClient]:
    small = PlatformConfig(**{**config.__dict__, "max_body_bytes": 1024})
    async with TestClient(TestServer(create_app(notes, small))) as client:
        yield client


async def problem(response: object) -> dict[str, object]:
    assert response.headers["Content-Type"].startswith("application/problem+json")  # type: ignore[attr-defined]
    body: dict[str, object] = await response.json(content_type=None)  # type: ignore[attr-defined]
    return body


async def test_bad_json_is_a_400_problem(client: TestClient) -> None:
    response = await client.post("/notes", data=b"{nope")
    assert response.status == 400
    body = await problem(response)
    assert body["status"] == 400
    assert "not valid JSON" in str(body["detail"])


async def test_a_body_of_the_wrong_shape_is_a_422_problem(client: TestClient) -> None:
    response = await client.post("/notes", json={"key": 7})
    assert response.status == 422
    assert "Expected `str`" in str((await problem(response))["detail"])


async def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    missing = await client.get("/nowhere")
    assert missing.status == 404
    assert (await problem(missing))["title"] == "Not Found"
    wrong = await client.delete("/notes")
    assert wrong.status == 405
    assert "POST" in wrong.headers["Allow"]
    await problem(wrong)


async def test_a_body_over_the_limit_is_refused_with_413(client: TestClient) -> None:
    response = await client.post("/notes", data=b"x" * 4096)
    assert response.status == 413
    await problem(response)


async def test_the_callers_request_id_is_echoed_and_a_bad_one_replaced(client: TestClient) -> None:
    kept = await client.get("/healthz", headers={"X-Request-Id": "gate-17.req-42"})
    assert kept.headers["X-Request-Id"] == "gate-17.req-42"
    replaced = await client.get("/healthz", headers={"X-Request-Id": "bad id\u00e9" * 20})
    assert replaced.headers["X-Request-Id"] != "bad id"
    assert len(replaced.headers["X-Request-Id"]) == 36


async def test_ready_when_database_redis_and_migrations_are(client: TestClient) -> None:
    response = await client.get("/readyz")
    assert response.status == 200
    assert (await client.get("/healthz")).status == 200


async def test_not_ready_while_migrations_are_missing(
    client: TestClient, config: PlatformConfig, notes: Service
) -> None:
    async with client.app[POOL].acquire() as conn:
        await conn.execute(
            "DELETE FROM public.cardless_migrations WHERE schema_name = $1 "
            "AND component <> 'platform'",
            notes.schema,
        )
    response = await client.get("/readyz")
    assert response.status == 503
    body = await problem(response)
    assert "1 migration(s) not applied" in str(body["checks"])


async def test_metrics_label_requests_by_route_template_not_path(client: TestClient) -> None:
    await client.get("/notes/123456")
    text = await (await client.get("/metrics")).text()
    assert 'route="/notes/{id}"' in text
    assert "123456" not in text
    assert "bus_published_total" in text or "bus_pending_entries" in text


async def test_not_ready_once_the_event_bus_has_stopped(client: TestClient, notes: Service) -> None:
    bus_task = next(t for t in asyncio.all_tasks() if t.get_name() == f"{notes.name}-bus")
    bus_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await bus_task
    response = await client.get("/readyz")
    assert response.status == 503
    assert "event bus stopped" in str((await problem(response))["checks"])
