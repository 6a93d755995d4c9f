"""What the tests, the benchmarks and the demo run for real: redis-server and backend
processes, real WebSocket clients, waits with deadlines. Not part of the package."""
