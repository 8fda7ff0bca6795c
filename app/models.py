"""The ORM models: users, broker connections, agents, jobs and API keys."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    make_transient_to_detached,
    mapped_column,
    relationship,
)

from mt5gate_protocol.jobs import JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    onboarding_completed: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    connections: Mapped[list[BrokerConnection]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )


class BrokerConnection(Base):
    __tablename__ = "broker_connections"
    __table_args__ = (Index("ix_broker_connections_user_created", "user_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    server: Mapped[str] = mapped_column(String(128))
    login: Mapped[int] = mapped_column(BigInteger)
    password_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    label: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship(back_populates="connections")
    agent: Mapped[Agent | None] = relationship(
        back_populates="connection",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )


class Agent(Base):
    __tablename__ = "mt5_agents"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    connection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("broker_connections.id", ondelete="CASCADE"), unique=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64))
    is_price_source: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[str | None] = mapped_column(String(64))
    terminal_connected: Mapped[bool | None] = mapped_column(Boolean)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column()
    # The agent link open now (WS /ws/agents/{id}; the newest wins), and when the last one
    # closed: an agent whose link closed after its last heartbeat is offline at once.
    link_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    link_closed_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    connection: Mapped[BrokerConnection] = relationship(back_populates="agent")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_agent_status_created", "agent_id", "status", "created_at"),
        Index("ix_jobs_user_type_created", "user_id", "job_type", "created_at"),
        Index("uq_jobs_user_client_order_id", "user_id", "client_order_id", unique=True),
        Index("ix_jobs_status_claimed", "status", "claimed_at"),
        Index("ix_jobs_agent_ticket", "agent_id", "ticket"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    agent_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("mt5_agents.id", ondelete="SET NULL")
    )
    job_type: Mapped[str] = mapped_column(String(32))
    input_data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING.value)
    # None is SQL NULL, not the JSON value null, however the row is written.
    output_data: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    client_order_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()
    # An order's broker ticket (the fill's position, or the placed pending order), copied
    # from its result so that a ticket the broker reports finds its order.
    ticket: Mapped[int | None] = mapped_column(BigInteger)
    # What mt5gate learned of a placed order after its job ended: a later status
    # (`cancelled` through the API; the account events add `filled`, `expired`) and the
    # fields a modification changed (price, stop_limit_price, sl, tp, expiration).
    order_status: Mapped[str | None] = mapped_column(String(16))
    order_changes: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))


class ApiKey(Base):
    """A user's long-lived key for programs; only its hash is stored. Revoking deletes it."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_user_created", "user_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    # "read" or "read trade": the two sets the contract allows, space-separated.
    scopes: Mapped[str] = mapped_column(String(32))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()


ModelT = TypeVar("ModelT", bound=Base)


def detached(model: type[ModelT], row: Mapping[Any, Any]) -> ModelT:
    """An instance from a row read without a session (column names are the attributes), in
    the state a session leaves what it loaded once closed: a session can merge it back."""
    instance = model(**row)
    make_transient_to_detached(instance)
    return instance
