"""Hostile-input tests: request smuggling, malformed heads, fuzzing, leak checks."""
