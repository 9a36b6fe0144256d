"""What the shared journal puts in Redis, and how it is sealed.

Every entry is encrypted and authenticated (AES-256-GCM) with a key derived from the
stream id and the caller's credential, which only the caller and the relay running the
stream hold: an operator of the Redis server reads only key names (a hash of the id,
never the id), entry sizes and times. The authenticated
data binds each entry to its place (the head, the byte offset of a batch, the ending),
so entries that were dropped, reordered or replaced fail to open and the reader ends the
stream with an error instead of a silent gap.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.core.exchange import Headers

_NONCE = 12
_HEAD = b"head"
#: The endings a journal can close with (sealed like the data).
END = b"end"
RESET = b"reset"

__all__ = ["END", "RESET", "InvalidTag", "StreamSeal", "decode_head", "encode_head", "key_of"]


def key_of(stream_id: str) -> str:
    """The Redis key of a stream's journal: a hash of its id, so that the key names an
    operator sees can neither resume a stream nor open its entries."""
    digest = hashlib.sha256(b"sse-relay journal key " + stream_id.encode()).hexdigest()
    return "sse-relay:" + digest[:40]


class StreamSeal:
    """Seals and opens the entries of one stream's journal."""

    __slots__ = ("_aead", "_nonce_prefix", "_sealed")

    def __init__(self, stream_id: str, credential: bytes) -> None:
        kdf = HKDF(SHA256(), 32, salt=None, info=b"sse-relay journal 1")
        self._aead = AESGCM(kdf.derive(stream_id.encode() + b"\0" + credential))
        # A counter, not random bytes per entry (a syscall each): one key per stream,
        # and one writer per stream, so a nonce never repeats under a key.
        self._nonce_prefix = os.urandom(_NONCE - 8)
        self._sealed = 0

    def _seal(self, data: bytes, place: bytes) -> bytes:
        self._sealed += 1
        nonce = self._nonce_prefix + self._sealed.to_bytes(8, "big")
        return nonce + self._aead.encrypt(nonce, data, place)

    def _open(self, sealed: bytes, place: bytes) -> bytes:
        """Raises InvalidTag for a wrong credential or an entry out of its place."""
        return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], place)

    def seal_head(self, head: bytes) -> bytes:
        return self._seal(head, _HEAD)

    def open_head(self, sealed: bytes) -> bytes:
        return self._open(sealed, _HEAD)

    def seal_data(self, offset: int, data: bytes) -> bytes:
        return self._seal(data, b"data %d" % offset)

    def open_data(self, offset: int, sealed: bytes) -> bytes:
        return self._open(sealed, b"data %d" % offset)

    def seal_ending(self, size: int, ending: bytes) -> bytes:
        return self._seal(ending, b"ending %d" % size)

    def open_ending(self, size: int, sealed: bytes) -> bytes:
        return self._open(sealed, b"ending %d" % size)


def encode_head(status: int, headers: Headers) -> bytes:
    """A response head as bytes: status, then `name: value` lines (values never hold a
    line break: every adapter refuses those)."""
    lines = [b"%d" % status, *(name + b": " + value for name, value in headers)]
    return b"\n".join(lines)


def decode_head(data: bytes) -> tuple[int, Headers]:
    status, *lines = data.split(b"\n")
    headers: Headers = []
    for line in lines:
        name, _, value = line.partition(b": ")
        headers.append((name, value))
    return int(status), headers
