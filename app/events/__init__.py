"""Account events: what happens on a broker account, in a resumable per-connection log.

- `EventLog` (`_log`): the Redis Stream and state per connection, appended atomically;
- `_state`: how each event changes what the server knows, and what a `state` report adds;
- `AccountStreams` (`_hub`): the process's account sockets and its one subscription;
- `_service`: the rules the routes and the socket handler call;
- `_server_events`: the server's own events (orders, the agent's status);
- `_validation`: an agent's batch checked strictly, its errors said event by event.
"""

from app.events._hub import AccountSocket, AccountStreams
from app.events._log import EventLog, Replay
from app.events._server_events import (
    agent_seen,
    agents_changed,
    heartbeat_answer,
    heartbeat_seen,
    order_changed,
    orders_ended,
)
from app.events._service import (
    AccountEvents,
    agent_view,
    report_events,
    snapshot_json,
    user_connection,
)
from app.events._state import Draft, Emitted
from app.events._validation import event_errors, strict_batch_errors

__all__ = [
    "AccountEvents",
    "AccountSocket",
    "AccountStreams",
    "Draft",
    "EventLog",
    "Emitted",
    "Replay",
    "agent_seen",
    "agents_changed",
    "heartbeat_answer",
    "heartbeat_seen",
    "order_changed",
    "orders_ended",
    "agent_view",
    "event_errors",
    "report_events",
    "snapshot_json",
    "strict_batch_errors",
    "user_connection",
]
