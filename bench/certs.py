"""The run's certificates: one trustme CA made per run, in the run's work directory.

One leaf for `localhost` and `127.0.0.1` serves the emitter's TLS listener (the upstream
the relays and nginx verify) and the relays' own TLS and HTTP/3 listener.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA to trust, and the leaf's chain and key to serve."""

    ca: Path
    cert: Path
    key: Path


def run_certificates(workdir: Path) -> Certificates:
    """The run's CA and leaf, made on first use and reused after."""
    found = Certificates(workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem")
    if not found.cert.exists():
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(found.ca))
        issued = ca.issue_cert("localhost", "127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(str(found.cert))
        issued.private_key_pem.write_to_path(str(found.key))
    return found
