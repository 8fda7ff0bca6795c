"""Live prices over WebSocket: the per-process socket manager and its routes."""
