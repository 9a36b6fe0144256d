"""`sse-relay sim`: a simulated Messages API for tests, benchmarks and demos.

A package of its own beside `relay`, sharing no code with it, so that it
checks the relay instead of agreeing with it.
"""
