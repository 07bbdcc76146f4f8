"""The door to Orderly Network: signing, REST and WebSocket clients, wire schemas, errors."""
