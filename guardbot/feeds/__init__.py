"""Sources of position data: the REST poller and the WebSocket streams (design.md, data flow)."""
