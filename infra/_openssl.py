"""TLS 1.3 cipher suites on a standard-library SSLContext, which Python 3.11 cannot set itself."""

# The ssl module exposes set_ciphers() for TLS 1.2 and older only; the TLS 1.3 list needs
# OpenSSL's SSL_CTX_set_ciphersuites on the context's SSL_CTX. CPython's PySSLContext struct
# starts with PyObject_HEAD followed by the SSL_CTX pointer, so the pointer sits at
# id(ctx) + object.__basicsize__ (true for CPython 3.7 to 3.13). The symbol is looked up
# through the _ssl extension module, whose dependency is the libssl this ssl module uses.

import ctypes
import functools
import ssl

__all__ = ["OpenSSLCallError", "set_tls13_ciphersuites"]


class OpenSSLCallError(RuntimeError):
    """An OpenSSL function could not be found or reported failure."""


@functools.lru_cache(maxsize=None)
def _libssl() -> ctypes.CDLL:
    import _ssl

    path = getattr(_ssl, "__file__", None)
    if path is None:
        raise OpenSSLCallError(
            "the _ssl module is built into this Python, so its libssl cannot be opened "
            "with ctypes; TLS 1.3 cipher suites cannot be set"
        )
    return ctypes.CDLL(path)


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int:
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError(f"expected an ssl.SSLContext, got {type(ctx).__name__}")
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer:
        raise OpenSSLCallError("the SSLContext has no SSL_CTX pointer where CPython keeps it")
    return pointer


def set_tls13_ciphersuites(ctx: ssl.SSLContext, suites: str) -> None:
    """Set the TLS 1.3 cipher suites of ctx, e.g. "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384".

    Order is preference order (the server's when OP_CIPHER_SERVER_PREFERENCE is set). An
    empty string disables every TLS 1.3 suite. Raises OpenSSLCallError if the symbol is
    missing or OpenSSL refuses the list (for instance a name it does not know).
    """
    try:
        function = _libssl().SSL_CTX_set_ciphersuites
    except AttributeError:
        raise OpenSSLCallError(
            f"SSL_CTX_set_ciphersuites is missing from {ssl.OPENSSL_VERSION}; "
            "OpenSSL 1.1.1 or newer is needed"
        ) from None
    function.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
    function.restype = ctypes.c_int
    if function(_ssl_ctx_pointer(ctx), suites.encode("ascii")) != 1:
        raise OpenSSLCallError(
            f"OpenSSL refused the TLS 1.3 cipher suites {suites!r}; accepted names are "
            "TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256, "
            "TLS_AES_128_CCM_SHA256, TLS_AES_128_CCM_8_SHA256, separated by ':'"
        )
