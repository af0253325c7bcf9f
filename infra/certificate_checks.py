"""Checks of a stack's certificates before anything is created: files, keys, names, ARNs."""

# Part of infra.validation: ACM and moto take many broken certificates (a key that is not the
# certificate's, the leaf in its own chain, an RSA 4096 key the NLB refuses), so the project
# checks them itself.

from __future__ import annotations

from pathlib import Path

from botocore.exceptions import ClientError
from cryptography import x509

from infra import certs
from infra.aws import error_code
from infra.partitions import PartitionError, partition_of
from infra.stack import Certificate, Stack

__all__ = ["check_certificates", "check_existing_certificate"]

_SOURCES = ("generate", "import", "existing")


def check_certificates(stack: Stack) -> list[str]:
    """Problems with the stack's certificates, found offline (files, keys, names, ARNs)."""
    problems = []
    labelled = [("certificate", stack.certificate)] if stack.certificate else []
    labelled += [(f"extra certificate {i + 1}", c) for i, c in enumerate(stack.extra_certificates)]
    for label, certificate in labelled:
        problems += _check_certificate(label, certificate, stack.region)
    return problems


def _check_certificate(label: str, certificate: Certificate, region: str) -> list[str]:
    if certificate.source not in _SOURCES:
        return [f"{label}: source {certificate.source!r}; accepted {', '.join(_SOURCES)}"]
    if certificate.source == "generate":
        return _check_unused_files(label, certificate) + _check_generated(label, certificate)
    if certificate.source == "import":
        return _check_files(label, certificate)
    problems = _check_unused_files(label, certificate)
    if certificate.ca_bundle:
        problems += _check_ca_bundle(label, certificate.ca_bundle)
    return problems + _check_arn(label, certificate.arn, region)


def _check_unused_files(label: str, certificate: Certificate) -> list[str]:
    # Files a generated or an existing certificate would silently ignore: a generated one
    # brings its own chain and CA bundle, an ACM one already holds its chain.
    unused = {"certificate file": certificate.cert_file, "key file": certificate.key_file,
              "chain file": certificate.chain_file}
    if certificate.source == "generate":
        unused["CA bundle"] = certificate.ca_bundle
    if certificate.source == "existing":
        advice = "ACM holds the certificate of an ARN and its chain; leave the file out"
    else:
        advice = "give the certificate file and its key too, or leave it out"
    return [f"{label}: a {name} ({path}) applies to an imported certificate only; {advice}"
            for name, path in unused.items() if path is not None]


def _check_generated(label: str, certificate: Certificate) -> list[str]:
    problems = []
    if certificate.key_type not in certs.GENERATED_KEY_TYPES:
        problems.append(
            f"{label}: key type {certificate.key_type!r} cannot be generated; accepted "
            f"{', '.join(certs.GENERATED_KEY_TYPES)}"
        )
    if not certificate.dns_names:
        problems.append(f"{label}: a generated certificate needs at least one DNS name")
    for name in certificate.dns_names:
        problem = certs.dns_name_problem(name)
        if problem:
            problems.append(f"{label}: {problem}")
    return problems


def _check_files(label: str, certificate: Certificate) -> list[str]:
    files = {"certificate file": certificate.cert_file, "key file": certificate.key_file}
    if certificate.chain_file:
        files["chain file"] = certificate.chain_file
    contents = {}
    for name, path in files.items():
        if path is None:
            return [f"{label}: importing needs a {name}"]
        try:
            contents[name] = certs.read_pem_file(path)
        except certs.CertificateFileError as error:
            return [f"{label}: {name} {error}"]
    cert_pem, key_pem = contents["certificate file"], contents["key file"]
    problems = _check_sizes(label, certificate, cert_pem, key_pem)
    try:
        certs.check_key_matches(cert_pem, key_pem)
        key_type = certs.key_type_of(cert_pem)
    except certs.CertificateError as error:
        return problems + [f"{label} ({certificate.cert_file}, {certificate.key_file}): {error}"]
    problems += _check_key_type(f"{label} {certificate.cert_file}", key_type)
    if "chain file" in contents:
        problems += _check_chain(label, certificate.chain_file, contents["chain file"],
                                 cert_pem)
    if certificate.ca_bundle:
        problems += _check_ca_bundle(label, certificate.ca_bundle)
    return problems


def _check_sizes(label: str, certificate: Certificate, cert_pem: bytes,
                 key_pem: bytes) -> list[str]:
    limits = (("certificate file", certificate.cert_file, cert_pem,
               certs.ACM_CERTIFICATE_MAX_BYTES),
              ("key file", certificate.key_file, key_pem, certs.ACM_PRIVATE_KEY_MAX_BYTES))
    return [f"{label}: {name} {path} is {len(content)} bytes; ACM imports at most {limit}"
            for name, path, content, limit in limits if len(content) > limit]


def _check_chain(label: str, path: Path, chain_pem: bytes, cert_pem: bytes) -> list[str]:
    # ACM takes the intermediates alone, in PEM; the leaf in the chain, or anything else
    # in the file (a private key pasted in), makes clients fail to build a path, or leaks.
    try:
        chain = certs.load_certificates(chain_pem)
    except certs.CertificateError as error:
        return [f"{label}: chain file {path} {error}"]
    leaf = x509.load_pem_x509_certificate(cert_pem)
    if any(member == leaf for member in chain):
        return [f"{label}: chain file {path} contains the leaf certificate itself; accepted "
                "the intermediates only, the leaf excluded"]
    return []


def _check_ca_bundle(label: str, path: Path) -> list[str]:
    try:
        certs.load_certificates(certs.read_pem_file(path), only_certificates=False)
    except certs.CertificateFileError as error:
        return [f"{label}: CA bundle {error}"]
    except certs.CertificateError as error:
        return [f"{label}: CA bundle {path} {error}"]
    return []


def _check_key_type(label: str, key_type: str) -> list[str]:
    if key_type in certs.NLB_KEY_TYPES:
        return []
    # The NLB takes RSA up to 3072 bits and the P-256/P-384/P-521 curves; ACM refuses to attach
    # anything else (an RSA 4096 certificate is the usual surprise).
    return [
        f"{label}: key type {key_type} is not accepted by a network load balancer; accepted "
        f"{', '.join(sorted(certs.NLB_KEY_TYPES))}"
    ]


def _check_arn(label: str, arn: str | None, region: str) -> list[str]:
    parts = (arn or "").split(":")
    if len(parts) < 6 or parts[2] != "acm" or not parts[5].startswith("certificate/"):
        return [f"{label}: {arn!r} is not an ACM certificate ARN "
                "(arn:PARTITION:acm:REGION:ACCOUNT:certificate/ID)"]
    problems = []
    if parts[3] != region:
        problems.append(f"{label}: {arn} is in region {parts[3]}; the stack is in {region}, "
                        "and a listener takes certificates of its own region only")
    try:
        expected = partition_of(region)
    except PartitionError:
        expected = parts[1]  # the bad region is reported by the identity check
    if parts[1] != expected:
        problems.append(f"{label}: {arn} is in partition {parts[1]}; expected {expected}")
    return problems


def check_existing_certificate(label: str, arn: str, clients) -> list[str]:
    """Problems with an ACM certificate the stack uses as it is, read from ACM."""
    try:
        described = clients.acm.describe_certificate(CertificateArn=arn)["Certificate"]
    except ClientError as error:
        return [f"{label} {arn}: {error_code(error) or error}; give an ACM certificate ARN "
                "of this account and region"]
    problems = []
    if described.get("Status") != "ISSUED":
        problems.append(f"{label} {arn}: status {described.get('Status')}; accepted ISSUED")
    problems += _check_key_type(f"{label} {arn}", described.get("KeyAlgorithm", "?"))
    return problems
