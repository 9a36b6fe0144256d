"""The SSE frame scanner: a Cython extension (`_fastsse.pyx`) and its pure-Python
twin of identical behaviour, one picked at import (`scanner`).
"""
