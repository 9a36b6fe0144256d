"""Builds the Cython SSE frame scanner, journal arena, body pump, TLS reads and the
HTTP/1.1 and HTTP/2 writers; the rest is in pyproject.toml.

SSE_RELAY_NO_EXTENSIONS=1 at build time skips the extension (the pure-Python twin is
used at run time then).
"""

import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("SSE_RELAY_NO_EXTENSIONS") != "1":
    from Cython.Build import cythonize

    ext_modules = cythonize(
        [
            Extension(
                name,
                [name.replace(".", "/") + ".pyx"],
                extra_compile_args=["-O3"],
                libraries=libraries,
            )
            for name, libraries in (
                ("relay.sse._fastsse", []),
                ("relay.core._journal", []),
                ("relay.upstream._bodypump", []),
                # OpenSSL's, the one Python's ssl module runs on (libssl-dev to build).
                ("relay.upstream._tlsread", ["ssl", "crypto"]),
                ("relay.edge._h1data", []),
                ("relay.edge._h2data", []),
            )
        ],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        },
    )

setup(ext_modules=ext_modules)
