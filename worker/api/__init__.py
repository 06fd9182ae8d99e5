"""The worker's HTTP edge: the ASGI app, streamed speech, the server entry point and metrics."""
