"""sse-relay's benchmark suite: `make bench` (full) or `make bench-quick`; see README."""
