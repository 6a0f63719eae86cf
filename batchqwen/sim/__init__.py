"""The local simulator: the service's sans-I/O session core, its families, and the WebSocket server."""
