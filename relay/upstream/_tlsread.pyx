# cython: language_level=3, auto_pickle=False, autotestdict=False
"""Reads from a TLS upstream decrypted in C, straight into the body pump's buffer.

uvloop's SSL layer hands each read to `ssl.SSLObject.read`: a Python frame, argument
parsing and a GIL release around every `SSL_read`, `pending()` calls in between, and
its own buffer bookkeeping: 9.7 µs per relayed event in the interpreter and uvloop
(perf, 1000 streams), 3.6 with these reads (README, "What the targets say"). A
`TlsTransport` takes the reads of one HTTP/1.1 upstream connection after uvloop's
handshake: it is the TCP transport's protocol, writes each read's ciphertext into the
SSL object's input BIO (the one uvloop made) and calls `SSL_read_ex` on the same `SSL` until OpenSSL wants more, into the
body pump's buffer (`BodyPump.read_at`), or into one bytes object for a response head.

Everything else stays uvloop's: the handshake, writes (its SSL transport), the close
and shutdown (reads go back to its `SSLProtocol` first), end of file, lost connections
and write flow control (passed on to its `SSLProtocol`). One `SSL` serves both, one
after the other, so bytes come out in order whoever reads them.

Reads that end in a TLS error deliver what they decrypted before it, then fail the
connection as uvloop does (`_force_close`); uvloop's own read drops those bytes.

It relies on CPython's `_ssl` layout (the `SSL*` after the object head and the socket
weak reference, checked against `SSL_get_app_data`), on the same OpenSSL as `_ssl`'s
and on uvloop's `_force_close`: `fits` says whether they hold, and
tests/test_library_internals.py checks them on the installed versions.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject

from relay.upstream._bodypump cimport BodyPump

import asyncio
import ssl
import sys

import _ssl


cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL
    ctypedef struct BIO
    BIO* SSL_get_rbio(const SSL* s)
    BIO* SSL_get_wbio(const SSL* s)
    int SSL_read_ex(SSL* s, void* buf, size_t num, size_t* readbytes)
    int SSL_get_error(const SSL* s, int ret)
    int SSL_pending(const SSL* s)
    void* SSL_get_ex_data(const SSL* s, int idx)
    unsigned long OpenSSL_version_num()
    enum:
        SSL_ERROR_WANT_READ
        SSL_ERROR_ZERO_RETURN

cdef extern from "openssl/bio.h" nogil:
    int BIO_write(BIO* b, const void* data, int dlen)
    int BIO_read(BIO* b, void* data, int dlen)
    size_t BIO_ctrl_pending(BIO* b)

cdef extern from "openssl/err.h" nogil:
    unsigned long ERR_get_error()
    void ERR_clear_error()
    const char* ERR_reason_error_string(unsigned long e)
    const char* ERR_lib_error_string(unsigned long e)


ctypedef struct SSLSocketHead:
    # The first fields of CPython's PySSLSocket (Modules/_ssl.c, 3.11 to 3.13).
    Py_ssize_t ob_refcnt
    void* ob_type
    void* Socket
    SSL* ssl


cdef enum:
    READ_SIZE = 262144  # ciphertext per read, as uvloop's SSL layer takes (256 KiB)
    FULL = -1  # `_read_into`: the buffer is full, more may be decrypted

cdef bytearray _CIPHER = bytearray(READ_SIZE)
cdef object _CIPHER_VIEW = memoryview(_CIPHER)
cdef unsigned char* _CIPHER_AT = <unsigned char*>PyByteArray_AS_STRING(_CIPHER)
# Plaintext for a protocol that takes bytes (the next response head).
cdef bytearray _PLAIN = bytearray(READ_SIZE)
cdef unsigned char* _PLAIN_AT = <unsigned char*>PyByteArray_AS_STRING(_PLAIN)

#: CPython versions whose `_ssl` layout `_ssl_of` knows.
LAYOUTS = ((3, 11), (3, 12), (3, 13))
#: Whether `_ssl` runs on the OpenSSL this module is linked with.
SAME_OPENSSL = OpenSSL_version_num() == ssl.OPENSSL_VERSION_NUMBER


cdef SSL* _ssl_of(object ssl_object):
    """The `SSL*` in an `ssl.SSLObject`, or NULL if its layout is not the known one."""
    if sys.version_info[:2] not in LAYOUTS or not SAME_OPENSSL:
        return NULL
    sock = getattr(ssl_object, "_sslobj", None)
    if type(sock) is not _ssl._SSLSocket:
        return NULL
    cdef SSL* s = (<SSLSocketHead*><PyObject*>sock).ssl
    if s == NULL or SSL_get_ex_data(s, 0) != <void*>sock:  # SSL_get_app_data
        return NULL
    return s


def fits(tls):
    """Whether a `TlsTransport` can take the reads of uvloop's SSL transport `tls`."""
    return (
        hasattr(tls, "_force_close")
        and tls.get_extra_info("uvloop.sslproto") is not None
        and _ssl_of(tls.get_extra_info("ssl_object")) != NULL
    )


cdef class TlsTransport:
    """An HTTP/1.1 upstream's transport over TLS: writes, closing and extra info are
    uvloop's SSL transport's; reads are decrypted here (see the module's text)."""

    cdef object _raw  # uvloop's TCP transport, whose protocol this is
    cdef object _tls  # uvloop's SSL transport
    cdef object _tls_protocol  # uvloop's SSLProtocol, the TCP transport's before
    cdef object _loop
    cdef object _ssl_object  # holds the SSL alive
    cdef SSL* _ssl
    cdef BIO* _rbio
    cdef BIO* _wbio
    cdef object _app
    cdef BodyPump _pump  # `_app` itself when it is the Cython body pump
    cdef bint _paused
    cdef bint _reading  # reads come here (until the close or a TLS error)

    def __init__(self, raw, tls):
        """`raw` is a uvloop TCP transport and `tls` the SSL transport that
        `loop.start_tls` made over it (`fits(tls)` must hold)."""
        self._raw = raw
        self._tls = tls
        self._tls_protocol = tls.get_extra_info("uvloop.sslproto")
        if raw.get_protocol() is not self._tls_protocol:
            raise ValueError("the TCP transport does not carry this SSL transport")
        self._loop = asyncio.get_running_loop()
        self._ssl_object = tls.get_extra_info("ssl_object")
        self._ssl = _ssl_of(self._ssl_object)
        if self._ssl == NULL:
            raise ValueError("not an SSL object whose layout is known")
        self._rbio = SSL_get_rbio(self._ssl)
        self._wbio = SSL_get_wbio(self._ssl)
        self._app = None
        self._pump = None
        self._paused = False
        self._reading = True
        raw.set_protocol(self)

    # -- asyncio.Transport, for relay/upstream/http1.py --------------------------------

    def write(self, data):
        self._tls.write(data)

    def writelines(self, list_of_data):
        self._tls.writelines(list_of_data)

    def is_closing(self):
        return self._tls.is_closing()

    def close(self):
        self._give_back()
        self._tls.close()

    def abort(self):
        self._give_back()
        self._tls.abort()

    def get_extra_info(self, name, default=None):
        return self._tls.get_extra_info(name, default)

    def set_protocol(self, protocol):
        self._app = protocol
        self._pump = protocol if isinstance(protocol, BodyPump) else None
        self._tls.set_protocol(protocol)  # uvloop tells it of the end, the loss, pauses

    def get_protocol(self):
        return self._app

    def is_reading(self):
        return not self._paused

    def pause_reading(self):
        # The socket itself stops being read (uvloop's SSL layer goes on reading and
        # buffers up to 256 KiB): the kernel's buffers and TCP hold upstream back.
        if not self._paused:
            self._paused = True
            if self._reading:
                self._raw.pause_reading()

    def resume_reading(self):
        if self._paused:
            self._paused = False
            if self._reading:
                self._raw.resume_reading()
                # What the pause left decrypted or in the input BIO, on the next tick as
                # uvloop's layer does: this is often called from inside a delivery.
                self._loop.call_soon(self._resumed)

    def _resumed(self):
        if self._reading and not self._paused:
            self._drain()

    # -- asyncio.BufferedProtocol, for uvloop's TCP transport -------------------------

    def get_buffer(self, Py_ssize_t sizehint):
        return _CIPHER_VIEW

    def buffer_updated(self, Py_ssize_t nbytes):
        if BIO_write(self._rbio, _CIPHER_AT, <int>nbytes) != nbytes:
            raise MemoryError("OpenSSL's input buffer took less than was read")
        self._drain()

    def eof_received(self):
        self._give_back()
        return self._tls_protocol.eof_received()

    def connection_lost(self, exc):
        self._give_back()
        self._tls_protocol.connection_lost(exc)

    def pause_writing(self):
        self._tls_protocol.pause_writing()

    def resume_writing(self):
        self._tls_protocol.resume_writing()

    # -- internals --------------------------------------------------------------------

    cdef int _drain(self) except -1:
        """Decrypt what the input BIO holds and hand it over, until OpenSSL wants more,
        the application pauses, or the reads went back to uvloop."""
        cdef Py_ssize_t room, got
        cdef unsigned char* at
        cdef int outcome = FULL
        cdef BodyPump pump
        ERR_clear_error()  # SSL_get_error reads the queue
        while outcome == FULL and self._reading and not self._paused:
            got = 0
            pump = self._pump
            if pump is not None:
                at = pump.read_at(&room)
                outcome = self._read_into(at, room, &got)
                if got:
                    pump.read_done(got)
            else:
                outcome = self._read_into(_PLAIN_AT, READ_SIZE, &got)
                if got:
                    self._hand_over(got)
        if BIO_ctrl_pending(self._wbio):
            self._send_pending()  # what reading made OpenSSL say (a key update, an alert)
        if outcome != FULL and outcome != SSL_ERROR_WANT_READ and self._reading:
            self._failed(outcome)
        return 0

    cdef int _read_into(self, unsigned char* at, Py_ssize_t room, Py_ssize_t* got) noexcept:
        """Decrypt into `at[:room]`; FULL, or the SSL_get_error code that stopped it."""
        cdef size_t n
        while got[0] < room:
            if not SSL_read_ex(self._ssl, at + got[0], room - got[0], &n):
                return SSL_get_error(self._ssl, 0)
            got[0] += n
        return FULL

    cdef int _hand_over(self, Py_ssize_t got) except -1:
        # Http1Upstream, between bodies: a response head, rarely more.
        self._app.data_received(PyBytes_FromStringAndSize(<char*>_PLAIN_AT, got))
        return 0

    cdef int _send_pending(self) except -1:
        cdef Py_ssize_t size = BIO_ctrl_pending(self._wbio)
        data = PyBytes_FromStringAndSize(NULL, size)
        BIO_read(self._wbio, PyBytes_AS_STRING(data), <int>size)
        self._raw.write(data)
        return 0

    cdef int _failed(self, int code) except -1:
        """The read met the peer's close_notify, or a TLS error."""
        self._give_back()
        if code == SSL_ERROR_ZERO_RETURN:
            # uvloop's shutdown reads the close_notify again, tells the application
            # (eof_received) and closes, as when its own read meets it.
            self._tls.close()
            return 0
        cdef unsigned long e = ERR_get_error()
        ERR_clear_error()
        cdef const char* lib = ERR_lib_error_string(e) if e else NULL
        cdef const char* reason = ERR_reason_error_string(e) if e else NULL
        message = "[%s] %s" % (
            (<bytes>lib).decode() if lib != NULL else "SSL",
            (<bytes>reason).decode() if reason != NULL else f"read failed ({code})",
        )
        # What uvloop does with an error from its own read (SSLProtocol._fatal_error).
        self._tls._force_close(ssl.SSLError(code, message))
        return 0

    cdef int _give_back(self) except -1:
        """Reads go to uvloop's SSL layer again (its shutdown reads, a lost connection)."""
        if self._reading:
            self._reading = False
            if self._paused:
                self._raw.resume_reading()  # uvloop's layer does its own flow control
            if self._raw.get_protocol() is self:
                self._raw.set_protocol(self._tls_protocol)
        return 0
