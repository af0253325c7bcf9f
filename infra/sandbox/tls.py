"""TLS for the data plane: per-certificate contexts as the listener's policy says, ALPN, alerts."""

import functools
import logging
import os
import re
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import Optional, Sequence

import _ssl

from infra.policies import (
    KEY_ALGORITHMS,
    SecurityPolicy,
    backend_policy,
    ciphers_for_key,
    configure_context,
    openssl_suites,
)

from .certificates import ServedCertificate, select_certificate

__all__ = [
    "ALPN_POLICIES",
    "IDLE_TIMEOUT_SECONDS",
    "ListenerTls",
    "NoServableCertificate",
    "UnknownAlpnPolicyError",
    "alert_number",
    "alpn_protocols",
    "backend_context",
    "server_context",
]

logger = logging.getLogger(__name__)

# A TLS listener's idle timeout is fixed at 350 s on the NLB.
IDLE_TIMEOUT_SECONDS = 350.0

# AlpnPolicy values and the protocols each offers, in the NLB's preference order.
ALPN_POLICIES: dict[str, tuple[str, ...]] = {
    "None": (),
    "HTTP1Only": ("http/1.1", "http/1.0"),
    "HTTP2Only": ("h2",),
    "HTTP2Optional": ("http/1.1", "http/1.0", "h2"),
    "HTTP2Preferred": ("h2", "http/1.1", "http/1.0"),
}

# OpenSSL reports a received alert as reason code 1000 + the alert's number (SSL_AD_REASON_OFFSET).
_ALERT_REASON_OFFSET = 1000
_ALERT_REASONS = {
    name: code - _ALERT_REASON_OFFSET
    for name, (library, code) in _ssl.err_names_to_codes.items()
    if _ALERT_REASON_OFFSET <= code < _ALERT_REASON_OFFSET + 256
}
_ALERT_TEXT = re.compile(r"(?:sslv3|tlsv1|tlsv13) alert ([a-z ]+)")


class UnknownAlpnPolicyError(ValueError):
    """An AlpnPolicy value the NLB does not know."""


class NoServableCertificate(Exception):
    """The certificate a connection would be served has no known private key, or is gone."""


def alpn_protocols(alpn_policy: Optional[str]) -> tuple[str, ...]:
    """The protocols a listener's AlpnPolicy offers; raises UnknownAlpnPolicyError."""
    try:
        return ALPN_POLICIES[alpn_policy or "None"]
    except KeyError:
        raise UnknownAlpnPolicyError(
            f"unknown AlpnPolicy {alpn_policy!r}; accepted: {', '.join(ALPN_POLICIES)}"
        ) from None


def alert_number(error: ssl.SSLError) -> Optional[int]:
    """The TLS alert number the peer sent, when `error` reports a received alert."""
    reason = getattr(error, "reason", None)
    if reason in _ALERT_REASONS:
        return _ALERT_REASONS[reason]
    # Python's table is fixed at build time; newer alerts show only in OpenSSL's text, e.g.
    # "tlsv1 alert no application protocol".
    match = _ALERT_TEXT.search(str(error))
    if match is None:
        return None
    name = "ALERT_DESCRIPTION_" + match.group(1).strip().upper().replace(" ", "_")
    member = ssl.AlertDescription.__members__.get(name)
    return member.value if member is not None else None


_TLS13 = 0x0304


@functools.lru_cache(maxsize=None)
def _policy_suites(policy: SecurityPolicy) -> tuple[frozenset, dict[str, frozenset]]:
    """The IANA codes of a policy's TLS 1.3 suites, and of its older suites per key
    algorithm; computed once per policy, since every ClientHello is checked against them."""
    known = openssl_suites()

    def codes(ciphers) -> frozenset:
        return frozenset(known[cipher].code for cipher in ciphers if cipher in known)

    legacy = set(policy.legacy_ciphers)
    by_key = {algorithm: codes(legacy.intersection(ciphers_for_key(policy, algorithm)))
              for algorithm in KEY_ALGORITHMS}
    return codes(policy.tls13_ciphers), by_key


def _key_algorithms_offered(hello, policy: SecurityPolicy):
    """Which key algorithms a ClientHello can be served with under `policy`.

    Only suites the policy accepts count: a suite outside it, the renegotiation SCSV or a
    GREASE value can never be negotiated, so it proves nothing about the client.
    """
    tls13, by_key = _policy_suites(policy)
    codes = set(hello.cipher_suites)
    # TLS 1.3 separates the suite from the certificate's key: a handshake that will be
    # TLS 1.3 can be served with either key.
    if policy.has_tls13 and hello.max_version >= _TLS13 and not codes.isdisjoint(tls13):
        return lambda key_algorithm: True
    usable = {algorithm: not codes.isdisjoint(suites) for algorithm, suites in by_key.items()}
    return lambda key_algorithm: usable.get(key_algorithm, False)


def _load_chain(context: ssl.SSLContext, cert: ServedCertificate) -> None:
    # ssl can only load a chain and key from files: write them to a private temporary
    # directory (0700, the key 0600) and remove them at once.
    with tempfile.TemporaryDirectory(prefix="nlb-sandbox-") as directory:
        chain_path = os.path.join(directory, "chain.pem")
        key_path = os.path.join(directory, "key.pem")
        with open(chain_path, "wb") as chain_file:
            chain_file.write(cert.leaf_pem.rstrip(b"\n") + b"\n" + cert.chain_pem)
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as key_file:
            key_file.write(cert.key_pem)
        context.load_cert_chain(chain_path, key_path)


# OpenSSL's default security level (2) refuses an RSA key under 2048 bits when the chain is
# loaded (EE_KEY_TOO_SMALL), yet the NLB serves RSA 1024 certificates: their contexts run at
# level 1 at most (a policy with TLS 1.0/1.1 or SHA-1 suites puts its contexts at 0 anyway).
_MIN_RSA_BITS_AT_DEFAULT_LEVEL = 2048
_SMALL_RSA_KEY_LEVEL = 1


def server_context(
    policy: SecurityPolicy, cert: ServedCertificate, alpn: Sequence[str]
) -> ssl.SSLContext:
    """A server context serving `cert` with exactly the policy's protocols and ciphers.

    Raises ssl.SSLError when OpenSSL refuses the certificate or its key.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    small_rsa = cert.key_algorithm == "RSA" and cert.key_bits < _MIN_RSA_BITS_AT_DEFAULT_LEVEL
    configure_context(context, policy, server=True,
                      max_security_level=_SMALL_RSA_KEY_LEVEL if small_rsa else None)
    # TLS listeners support no renegotiation; tickets stay on as on the NLB.
    context.options |= ssl.OP_NO_RENEGOTIATION
    _load_chain(context, cert)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def backend_context(listener_policy: SecurityPolicy) -> ssl.SSLContext:
    """The client context for the NLB-to-target leg; the NLB does not verify targets."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    configure_context(context, backend_policy(listener_policy), server=False)
    return context


@dataclass(frozen=True)
class ListenerTls:
    """What a TLS listener serves: its policy, ALPN list and one context per certificate.

    `unservable` maps certificate ARNs that cannot be served (no private key known, gone
    from ACM, or refused by OpenSSL) to the reason. A listed certificate that cannot be
    served is left out of the SNI choice; when the default cannot be served the listener
    refuses every connection at its handshake, and stays bound on its address.
    """

    policy: SecurityPolicy
    alpn: tuple[str, ...]
    default: Optional[ServedCertificate]
    listed: tuple[ServedCertificate, ...]
    contexts: dict = field(default_factory=dict, compare=False)
    unservable: dict = field(default_factory=dict)
    default_arn: str = ""

    @classmethod
    def build(
        cls,
        policy: SecurityPolicy,
        alpn: Sequence[str],
        default_arn: str,
        certificates: dict,
        problems: dict,
    ) -> "ListenerTls":
        """Contexts for every servable certificate of `certificates` (ARN -> certificate).

        `problems` maps ARNs that could not be loaded to the reason; certificates without
        a known key or that OpenSSL refuses join them in `unservable`.
        """
        unservable = dict(problems)
        contexts = {}
        for arn, cert in certificates.items():
            if not cert.has_key:
                unservable[arn] = f"no private key is known for certificate {arn}"
                continue
            try:
                contexts[arn] = server_context(policy, cert, alpn)
            except ssl.SSLError as exc:
                # One certificate OpenSSL refuses must not take the listener's others down.
                unservable[arn] = f"OpenSSL refuses certificate {arn}: {exc}"
        listed = tuple(
            cert for arn, cert in certificates.items() if arn != default_arn and arn in contexts
        )
        return cls(
            policy=policy,
            alpn=tuple(alpn),
            default=certificates.get(default_arn),
            listed=listed,
            contexts=contexts,
            unservable=unservable,
            default_arn=default_arn,
        )

    def choose(self, hello) -> tuple[str, ssl.SSLContext]:
        """The certificate ARN and context for a parsed ClientHello (its SNI and offer).

        Raises NoServableCertificate when the chosen certificate cannot be served.
        """
        if self.default is None or self.default.arn not in self.contexts:
            reason = self.unservable.get(self.default_arn, f"{self.default_arn} not loaded")
            raise NoServableCertificate(reason)
        accepts = _key_algorithms_offered(hello, self.policy)
        chosen = select_certificate(hello.server_name, self.default, self.listed, accepts)
        return chosen.arn, self.contexts[chosen.arn]
