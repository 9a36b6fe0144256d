"""sse-relay: a byte-exact streaming relay for LLM APIs."""

__version__ = "0.1.0"
