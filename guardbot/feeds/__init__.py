"""Sources of position data: the REST poller and the WebSocket streams
(docs/architecture.md, "Data flow")."""
