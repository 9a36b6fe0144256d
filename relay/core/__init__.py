"""The core, which knows no HTTP version: `StreamMachine` (sans-IO) and its asyncio
shell `RelayStream`, the contracts between core and edges, and the sans-IO rules it
calls (keepalives, endings, retries, request rules, errors).
"""
