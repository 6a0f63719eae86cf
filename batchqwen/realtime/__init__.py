"""The realtime protocol: typed events, the sans-I/O client core and its families, the asyncio client."""
