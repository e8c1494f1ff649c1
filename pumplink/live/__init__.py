"""The live feed: WebSocket connections, the broadcaster and push notifications."""
