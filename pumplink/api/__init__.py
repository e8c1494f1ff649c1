"""The HTTP and WebSocket API: thin Falcon resources over the gateway."""
