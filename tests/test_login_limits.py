"""Failed logins are limited per (account, address) and per address, across processes, and
a login's argon2 work never stalls the process's other requests."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from tests.conftest import make_settings
from tests.flows import DEFAULT_PASSWORD, TestUser, register_user
from tests.private_redis import private_redis
from tests.servers import run_api, start_serve
from tests.stores import Store, reset_store

LIMIT = 10
WINDOW_SECONDS = 15 * 60


def from_address(address: str) -> dict[str, str]:
    # The tests' client is on loopback, which the default FORWARDED_ALLOW_IPS trusts.
    return {"X-Forwarded-For": address}


async def attempt(
    client: httpx.AsyncClient, email: str, password: str, address: str = "198.51.100.7"
) -> httpx.Response:
    return await client.post(
        "/auth/login", json={"email": email, "password": password}, headers=from_address(address)
    )


def assert_too_many_attempts(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["detail"] == "too_many_attempts"
    assert 0 < int(response.headers["Retry-After"]) <= WINDOW_SECONDS


async def test_past_ten_failures_a_pair_is_refused_even_with_the_right_password(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    for _ in range(LIMIT):
        response = await attempt(client, user.email, "wrong-password")
        assert response.status_code == 401, response.text
    assert_too_many_attempts(await attempt(client, user.email, DEFAULT_PASSWORD))
    assert_too_many_attempts(await attempt(client, user.email.upper(), DEFAULT_PASSWORD))
    # The account itself is not locked: the same password from another address logs in.
    response = await attempt(client, user.email, DEFAULT_PASSWORD, address="203.0.113.9")
    assert response.status_code == 200, response.text


async def test_an_unknown_email_counts_and_answers_like_a_wrong_password(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(LIMIT):
        response = await attempt(client, "nobody@example.com", DEFAULT_PASSWORD)
        assert response.status_code == 401
        assert response.json()["detail"] == "invalid_credentials"
    assert_too_many_attempts(await attempt(client, "nobody@example.com", DEFAULT_PASSWORD))


async def test_an_address_failing_across_many_accounts_is_limited(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    for n in range(LIMIT):
        response = await attempt(client, f"guess-{n}@example.com", "wrong-password")
        assert response.status_code == 401
    # A first attempt at this account, with its right password, from that address:
    assert_too_many_attempts(await attempt(client, user.email, DEFAULT_PASSWORD))
    response = await attempt(client, user.email, DEFAULT_PASSWORD, address="203.0.113.9")
    assert response.status_code == 200


async def test_parallel_guesses_get_no_more_answers_than_the_limit(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    # All of them pass the check before argon2 at once; the failures counted while they
    # were verified must still stop all but ten, whatever the password.
    guesses = [attempt(client, user.email, f"wrong-{n}") for n in range(3 * LIMIT)]
    guesses.append(attempt(client, user.email, DEFAULT_PASSWORD))
    statuses = Counter(r.status_code for r in await asyncio.gather(*guesses))
    assert statuses[401] <= LIMIT, statuses
    assert statuses[200] + statuses[401] <= LIMIT + 1, statuses
    assert set(statuses) <= {200, 401, 429}, statuses


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(store: Store) -> None:
    await reset_store(store)
    settings = make_settings(store, forwarded_allow_ips="192.0.2.1")
    async with (
        run_api(settings) as api,
        httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as client,
    ):
        user = await register_user(client)
        for n in range(LIMIT):  # a new forwarded address each time: all are loopback here
            response = await attempt(client, user.email, "wrong", address=f"198.51.100.{n}")
            assert response.status_code == 401
        response = await attempt(client, user.email, DEFAULT_PASSWORD, address="203.0.113.9")
        assert_too_many_attempts(response)


async def test_a_login_does_not_stall_other_requests(
    client: httpx.AsyncClient, user: TestUser
) -> None:
    # Eight logins are eight argon2 verifications of ~100 ms each. Cheap requests sent one
    # after another meanwhile must keep being answered, many per verification. On the event
    # loop, each verification blocks the process whole: a probe gets through only between
    # two of them (measured: 2-6 probes in all, against 130-770 off it).
    logins_count = 8
    me = [client.get("/me", headers=user.headers) for _ in range(logins_count + 2)]
    assert {r.status_code for r in await asyncio.gather(*me)} == {200}  # a warm pool
    logins = [
        asyncio.create_task(attempt(client, user.email, DEFAULT_PASSWORD, address=f"192.0.2.{n}"))
        for n in range(logins_count)
    ]
    probes = 0
    while not all(login.done() for login in logins):
        assert (await client.get("/me", headers=user.headers)).status_code == 200
        probes += 1
    assert probes >= 3 * logins_count
    assert [login.result().status_code for login in logins] == [200] * logins_count


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_the_limit_holds_across_processes(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    await reset_store(store)
    first = start_serve(settings, tmp_path / "first.log")
    second = start_serve(settings, tmp_path / "second.log")
    try:
        async with (
            httpx.AsyncClient(base_url=f"{first.base_url}/api/v1") as one,
            httpx.AsyncClient(base_url=f"{second.base_url}/api/v1") as other,
        ):
            user = await register_user(one)
            for _ in range(LIMIT):
                assert (await attempt(one, user.email, "wrong")).status_code == 401
            assert_too_many_attempts(await attempt(other, user.email, DEFAULT_PASSWORD))
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
async def test_logins_fail_closed_when_redis_is_unreachable(store: Store, tmp_path: Path) -> None:
    await reset_store(store)
    with private_redis(tmp_path) as redis_server:
        settings = make_settings(store, redis_url=redis_server.url)
        async with (
            run_api(settings) as api,
            httpx.AsyncClient(base_url=f"{api.base_url}/api/v1") as client,
        ):
            user = await register_user(client)
            assert (await attempt(client, user.email, DEFAULT_PASSWORD)).status_code == 200
            redis_server.stop()
            response = await attempt(client, user.email, DEFAULT_PASSWORD)
            assert response.status_code == 503, response.text
            assert response.json()["detail"] == "rate_limiter_unavailable"
            redis_server.start()
            assert (await attempt(client, user.email, DEFAULT_PASSWORD)).status_code == 200
