"""The agent protocol, defined once: what an agent and the server say to each other.

Pydantic models only, importing nothing of the server (`app`) or of the agent
(`mt5gate_agent`); both import from here. `jobs` holds the job vocabulary (`JobType`,
`JobStatus`, the envelope an agent claims, the result it answers, each job type's input and
output), `agent` the agent's other messages (heartbeat, credentials, price pushes), `link`
the messages of the agent link (the one WebSocket carrying jobs, results, heartbeats and
events), `trading` the trading records the jobs carry, `types` the field types they share.
"""
