"""The ELB security policies of TLS listeners: protocols and ciphers in priority order."""

import functools
import logging
import ssl
import warnings
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple

from infra._openssl import set_tls13_ciphersuites

__all__ = [
    "BACKEND_POLICY_TLS12",
    "BACKEND_POLICY_TLS13",
    "KEY_ALGORITHMS",
    "POLICIES",
    "PROTOCOLS",
    "SecurityPolicy",
    "UnknownKeyAlgorithmError",
    "UnknownPolicyError",
    "backend_policy",
    "ciphers_for_key",
    "configure_context",
    "get_policy",
    "OpenSslSuite",
    "offerable_ciphers",
    "openssl_cipher_string",
    "openssl_suites",
    "policy_from_api",
    "protocol_range",
    "tls13_ciphersuites",
]

logger = logging.getLogger(__name__)

# AWS spells SslProtocols the way OpenSSL names versions, lowest first here.
PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
KEY_ALGORITHMS = ("RSA", "EC")
_TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}

# The NLB picks the target-side policy itself: this one behind a TLS 1.3 listener policy,
# 2016-08 behind any other.
BACKEND_POLICY_TLS13 = "ELBSecurityPolicy-TLS13-1-0-2021-06"
BACKEND_POLICY_TLS12 = "ELBSecurityPolicy-2016-08"


class UnknownPolicyError(ValueError):
    """A security policy name that is not in the table."""


class UnknownKeyAlgorithmError(ValueError):
    """A key algorithm other than "RSA" or "EC"."""


@dataclass(frozen=True)
class SecurityPolicy:
    """One ELB security policy.

    name: the policy name, e.g. ELBSecurityPolicy-2016-08.
    protocols: the SslProtocols it accepts, lowest first, spelled as in PROTOCOLS.
    ciphers: OpenSSL cipher names in the server's priority order; TLS 1.3 suites first.
    """

    name: str
    protocols: Tuple[str, ...]
    ciphers: Tuple[str, ...]

    @property
    def tls13_ciphers(self) -> Tuple[str, ...]:
        """The TLS 1.3 suites (TLS_AES_128_GCM_SHA256 style names), in priority order."""
        return tuple(cipher for cipher in self.ciphers if cipher.startswith("TLS_"))

    @property
    def legacy_ciphers(self) -> Tuple[str, ...]:
        """The suites for TLS 1.2 and older, in priority order."""
        return tuple(cipher for cipher in self.ciphers if not cipher.startswith("TLS_"))

    @property
    def has_tls13(self) -> bool:
        """Whether the policy accepts TLS 1.3 (which decides the backend policy)."""
        return "TLSv1.3" in self.protocols


# Cipher groups of the reference table, by OpenSSL name.
_T13 = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
_EG = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
       "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384"}
_E2 = {"ECDHE-ECDSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA256",
       "ECDHE-ECDSA-AES256-SHA384", "ECDHE-RSA-AES256-SHA384"}
_E1 = {"ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA",
       "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA"}
_R2 = {"AES128-GCM-SHA256", "AES128-SHA256", "AES256-GCM-SHA384", "AES256-SHA256"}
_R1 = {"AES128-SHA", "AES256-SHA"}
_ALL18 = _EG | _E2 | _E1 | _R2 | _R1

# Priority order of ELBSecurityPolicy-2016-08, as the NLB guide's policy table lists it.
# Only this order is documented; every other policy's TLS 1.2 list is taken to be this
# order restricted to its groups, and TLS 1.3 suites come first in the order above. moto
# 5.2 agrees except that it puts ECDHE-ECDSA-AES256-SHA before ECDHE-RSA-AES256-SHA in every
# policy; a certificate can authenticate only one of the two, so the swap never changes
# which suite a handshake negotiates.
_ORDER_2016_08 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES128-SHA256", "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES256-SHA384", "ECDHE-RSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA", "ECDHE-ECDSA-AES256-SHA",
    "AES128-GCM-SHA256", "AES128-SHA256", "AES128-SHA",
    "AES256-GCM-SHA384", "AES256-SHA256", "AES256-SHA",
)


def _ciphers(groups: Iterable[set], tls13: bool = False, extra: Tuple[str, ...] = ()):
    chosen = set().union(*groups)
    return (_T13 if tls13 else ()) + tuple(c for c in _ORDER_2016_08 if c in chosen) + extra


def _protocols(lowest: str, highest: str) -> Tuple[str, ...]:
    return PROTOCOLS[PROTOCOLS.index(lowest):PROTOCOLS.index(highest) + 1]


_TABLE = (
    ("ELBSecurityPolicy-2016-08", _protocols("TLSv1", "TLSv1.2"), _ciphers([_ALL18])),
    ("ELBSecurityPolicy-2015-05", _protocols("TLSv1", "TLSv1.2"), _ciphers([_ALL18])),
    ("ELBSecurityPolicy-TLS13-1-2-2021-06", _protocols("TLSv1.2", "TLSv1.3"),
     _ciphers([_EG, _E2], tls13=True)),
    ("ELBSecurityPolicy-TLS13-1-2-Res-2021-06", _protocols("TLSv1.2", "TLSv1.3"),
     _ciphers([_EG], tls13=True)),
    ("ELBSecurityPolicy-TLS13-1-2-Ext1-2021-06", _protocols("TLSv1.2", "TLSv1.3"),
     _ciphers([_EG, _E2, _R2], tls13=True)),
    ("ELBSecurityPolicy-TLS13-1-2-Ext2-2021-06", _protocols("TLSv1.2", "TLSv1.3"),
     _ciphers([_ALL18], tls13=True)),
    ("ELBSecurityPolicy-TLS13-1-1-2021-06", _protocols("TLSv1.1", "TLSv1.3"),
     _ciphers([_ALL18], tls13=True)),
    ("ELBSecurityPolicy-TLS13-1-0-2021-06", _protocols("TLSv1", "TLSv1.3"),
     _ciphers([_ALL18], tls13=True)),
    ("ELBSecurityPolicy-TLS13-1-3-2021-06", _protocols("TLSv1.3", "TLSv1.3"),
     _ciphers([], tls13=True)),
    ("ELBSecurityPolicy-FS-1-2-Res-2020-10", _protocols("TLSv1.2", "TLSv1.2"),
     _ciphers([_EG])),
    ("ELBSecurityPolicy-FS-1-2-Res-2019-08", _protocols("TLSv1.2", "TLSv1.2"),
     _ciphers([_EG, _E2])),
    ("ELBSecurityPolicy-FS-1-2-2019-08", _protocols("TLSv1.2", "TLSv1.2"),
     _ciphers([_EG, _E2, _E1])),
    ("ELBSecurityPolicy-FS-1-1-2019-08", _protocols("TLSv1.1", "TLSv1.2"),
     _ciphers([_EG, _E2, _E1])),
    ("ELBSecurityPolicy-FS-2018-06", _protocols("TLSv1", "TLSv1.2"),
     _ciphers([_EG, _E2, _E1])),
    ("ELBSecurityPolicy-TLS-1-2-2017-01", _protocols("TLSv1.2", "TLSv1.2"),
     _ciphers([_EG, _E2, _R2])),
    ("ELBSecurityPolicy-TLS-1-2-Ext-2018-06", _protocols("TLSv1.2", "TLSv1.2"),
     _ciphers([_ALL18])),
    ("ELBSecurityPolicy-TLS-1-1-2017-01", _protocols("TLSv1.1", "TLSv1.2"),
     _ciphers([_ALL18])),
    # 3DES comes last: the guide lists it after AES256-SHA, for legacy clients only.
    ("ELBSecurityPolicy-TLS-1-0-2015-04", _protocols("TLSv1", "TLSv1.2"),
     _ciphers([_ALL18], extra=("DES-CBC3-SHA",))),
)

# The post-quantum twins add hybrid ML-KEM key exchange groups (X25519MLKEM768 and others);
# their cipher lists are not published, so they are taken to equal the twin's. moto 5.2
# gives ...-Ext1-PQ-2025-09 the 21 suites of Ext2 instead, which looks like a copy slip.
_PQ_TWINS = (
    "ELBSecurityPolicy-TLS13-1-3-2021-06", "ELBSecurityPolicy-TLS13-1-2-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06", "ELBSecurityPolicy-TLS13-1-2-Ext1-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-2021-06", "ELBSecurityPolicy-TLS13-1-0-2021-06",
)


def _build_table() -> Dict[str, SecurityPolicy]:
    table = {name: SecurityPolicy(name, protocols, ciphers) for name, protocols, ciphers in _TABLE}
    for twin in _PQ_TWINS:
        name = twin.replace("-2021-06", "-PQ-2025-09")
        table[name] = SecurityPolicy(name, table[twin].protocols, table[twin].ciphers)
    return table


POLICIES: Dict[str, SecurityPolicy] = _build_table()


def get_policy(name: str) -> SecurityPolicy:
    """The policy called name; raises UnknownPolicyError listing the accepted names."""
    try:
        return POLICIES[name]
    except (KeyError, TypeError):
        raise UnknownPolicyError(
            f"unknown security policy {name!r}; accepted: {', '.join(sorted(POLICIES))}"
        ) from None


def _authenticated_by(cipher: str) -> str:
    """The certificate key algorithm a suite needs, or "any" for TLS 1.3 suites."""
    if cipher.startswith("TLS_"):
        return "any"  # TLS 1.3 separates the suite from the signature algorithm
    if cipher.startswith("ECDHE-ECDSA-"):
        return "EC"
    return "RSA"  # ECDHE-RSA-* signs with RSA; AES*-SHA and DES-CBC3-SHA are RSA key transport


def ciphers_for_key(policy: SecurityPolicy, key_algorithm: str) -> Tuple[str, ...]:
    """The policy's ciphers a certificate with a key_algorithm ("RSA" or "EC") key can serve."""
    if key_algorithm not in KEY_ALGORITHMS:
        raise UnknownKeyAlgorithmError(
            f"unknown key algorithm {key_algorithm!r}; accepted: {', '.join(KEY_ALGORITHMS)}"
        )
    return tuple(c for c in policy.ciphers if _authenticated_by(c) in ("any", key_algorithm))


def protocol_range(policy: SecurityPolicy) -> Tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """The lowest and highest TLS version of the policy, as ssl.TLSVersion members."""
    versions = [_TLS_VERSIONS[protocol] for protocol in policy.protocols]
    return min(versions), max(versions)


def _needs_security_level_0(policy: SecurityPolicy, ciphers: Iterable[str]) -> bool:
    # OpenSSL 3 refuses TLS 1.0/1.1 and SHA-1 suites at its default security level.
    legacy_protocol = "TLSv1" in policy.protocols or "TLSv1.1" in policy.protocols
    return legacy_protocol or any(cipher.endswith("-SHA") for cipher in ciphers)


def _cipher_string(policy: SecurityPolicy, ciphers: Tuple[str, ...],
                   max_security_level: Optional[int] = None) -> str:
    level = 0 if _needs_security_level_0(policy, ciphers) else max_security_level
    if not ciphers and level is None:
        return ""
    # A TLS 1.3-only policy negotiates nothing from this list; only its level matters then.
    listed = ":".join(ciphers) or "DEFAULT"
    return listed + (f":@SECLEVEL={level}" if level is not None else "")


def openssl_cipher_string(policy: SecurityPolicy) -> str:
    """The TLS 1.2-and-older list for SSLContext.set_ciphers, in priority order.

    Ends in ":@SECLEVEL=0" when the policy has TLS 1.0/1.1 or SHA-1 suites. Empty for a
    TLS 1.3-only policy.
    """
    return _cipher_string(policy, policy.legacy_ciphers)


def tls13_ciphersuites(policy: SecurityPolicy) -> str:
    """The TLS 1.3 list for SSL_CTX_set_ciphersuites, in priority order (may be empty)."""
    return ":".join(policy.tls13_ciphers)


@dataclass(frozen=True)
class OpenSslSuite:
    """A suite the OpenSSL behind the ssl module can negotiate: its IANA code (what a
    ClientHello lists) and the lowest protocol version that defines it."""

    code: int
    lowest_protocol: str


@functools.lru_cache(maxsize=None)
def openssl_suites() -> Mapping[str, OpenSslSuite]:
    """Every suite the OpenSSL behind the ssl module can negotiate, at any security level,
    by OpenSSL name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    # get_ciphers()' id is OpenSSL's 0x0300XXXX form; XXXX is the IANA code.
    return {cipher["name"]: OpenSslSuite(cipher["id"] & 0xFFFF, cipher["protocol"])
            for cipher in context.get_ciphers()}


def offerable_ciphers() -> frozenset:
    """Every cipher name the OpenSSL behind the ssl module can negotiate, at any level."""
    return frozenset(openssl_suites())


def configure_context(ctx: ssl.SSLContext, policy: SecurityPolicy, *, server: bool,
                      max_security_level: Optional[int] = None) -> None:
    """Make ctx accept exactly policy's protocols and ciphers, in its priority order.

    Sets the version range, the TLS 1.2-and-older ciphers, the TLS 1.3 suites and, for a
    server, OP_CIPHER_SERVER_PREFERENCE. Ciphers this OpenSSL cannot offer (DES-CBC3-SHA in
    builds without 3DES) are left out with a debug log line. OpenSSL's security level is 0
    when the policy needs it (TLS 1.0/1.1, SHA-1 suites), else at most `max_security_level`
    when one is given, else OpenSSL's default.
    """
    offerable = offerable_ciphers()
    missing = [cipher for cipher in policy.ciphers if cipher not in offerable]
    if missing:
        logger.debug("%s: OpenSSL here cannot offer %s; left out", policy.name, missing)
    legacy = tuple(c for c in policy.legacy_ciphers if c in offerable)
    lowest, highest = protocol_range(policy)

    with warnings.catch_warnings():
        # Python deprecates TLS 1.0/1.1, but AWS policies still accept them and the suite
        # has to reproduce what a listener accepts.
        warnings.filterwarnings("ignore", message="ssl.TLSVersion", category=DeprecationWarning)
        ctx.minimum_version, ctx.maximum_version = lowest, highest
    cipher_string = _cipher_string(policy, legacy, max_security_level)
    if cipher_string:
        ctx.set_ciphers(cipher_string)
    set_tls13_ciphersuites(ctx, ":".join(c for c in policy.tls13_ciphers if c in offerable))
    if server:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE


def backend_policy(listener_policy: SecurityPolicy) -> SecurityPolicy:
    """The policy the NLB uses towards TLS targets behind a listener with listener_policy."""
    name = BACKEND_POLICY_TLS13 if listener_policy.has_tls13 else BACKEND_POLICY_TLS12
    return POLICIES[name]


def policy_from_api(described: Mapping) -> SecurityPolicy:
    """A SecurityPolicy from one element of describe_ssl_policies' SslPolicies.

    Protocols are put in PROTOCOLS order and ciphers sorted by Priority. Raises ValueError
    for a protocol name outside PROTOCOLS (such as Classic Load Balancer's SSLv3).
    """
    unknown = [p for p in described.get("SslProtocols", []) if p not in PROTOCOLS]
    if unknown:
        raise ValueError(
            f"{described.get('Name')!r} lists protocols {unknown}; accepted: {PROTOCOLS}"
        )
    protocols = tuple(p for p in PROTOCOLS if p in described.get("SslProtocols", []))
    ranked = sorted(described.get("Ciphers", []), key=lambda cipher: cipher["Priority"])
    return SecurityPolicy(described["Name"], protocols, tuple(c["Name"] for c in ranked))
