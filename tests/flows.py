"""The steps a user and an agent take, over HTTP, for tests to build on."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_PASSWORD = "correct-horse-battery"


@dataclass
class TestUser:
    __test__ = False
    id: str
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class AgentHandle:
    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def path(self, suffix: str) -> str:
        return f"/agents/{self.id}/{suffix}"


@dataclass
class Trader:
    user: TestUser
    connection_id: str
    agent: AgentHandle

    @property
    def headers(self) -> dict[str, str]:
        return self.user.headers


async def register_user(client: httpx.AsyncClient, email: str | None = None) -> TestUser:
    email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
    response = await client.post(
        "/auth/register", json={"email": email, "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return TestUser(body["user"]["id"], email, body["access_token"])


async def add_connection(client: httpx.AsyncClient, user: TestUser, **fields: Any) -> str:
    body = {"server": "Demo-Server", "login": 5001234, "password": "mt5-secret-pw", **fields}
    response = await client.post("/broker-connections", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    connection_id: str = response.json()["id"]
    return connection_id


async def provision_agent(
    client: httpx.AsyncClient, user: TestUser, connection_id: str
) -> AgentHandle:
    response = await client.post(f"/broker-connections/{connection_id}/agent", headers=user.headers)
    assert response.status_code == 201, response.text
    body = response.json()
    return AgentHandle(body["agent_id"], body["agent_token"])


async def complete_onboarding(client: httpx.AsyncClient, user: TestUser) -> None:
    response = await client.post(
        "/onboarding/complete", json={"accept_risk_disclosure": True}, headers=user.headers
    )
    assert response.status_code == 200, response.text


async def heartbeat(client: httpx.AsyncClient, agent: AgentHandle) -> None:
    response = await client.post(agent.path("heartbeat"), json={}, headers=agent.headers)
    assert response.status_code == 200, response.text


async def onboard_trader(client: httpx.AsyncClient, *, with_heartbeat: bool = True) -> Trader:
    user = await register_user(client)
    connection_id = await add_connection(client, user)
    agent = await provision_agent(client, user, connection_id)
    await complete_onboarding(client, user)
    if with_heartbeat:
        await heartbeat(client, agent)
    return Trader(user, connection_id, agent)
