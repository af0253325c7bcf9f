"""HAProxy as the benchmark's reference proxy: a configuration matching a listener policy."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from infra.policies import (
    SecurityPolicy,
    backend_policy,
    openssl_cipher_string,
    tls13_ciphersuites,
)

__all__ = ["HaproxyError", "HaproxyProcess", "HaproxySetup", "find_haproxy", "haproxy_config"]

INSTALL_HINT = "apt-get update && apt-get install -y haproxy"
# The policies' protocol names are OpenSSL's; HAProxy spells TLS 1.0 "TLSv1.0".
_HAPROXY_VERSIONS = {"TLSv1": "TLSv1.0", "TLSv1.1": "TLSv1.1", "TLSv1.2": "TLSv1.2",
                     "TLSv1.3": "TLSv1.3"}


class HaproxyError(RuntimeError):
    """HAProxy refused its configuration or did not start listening; names its log."""


@dataclass(frozen=True)
class HaproxySetup:
    """What HAProxy serves: a listener for each forwarding path, the same targets as the
    data plane's target groups, the certificate, chain and key as one PEM file."""

    pem_file: Path
    tcp_port: int
    tls_port: int
    tcp_targets: tuple[tuple[str, int], ...]
    tls_targets: tuple[tuple[str, int], ...]
    threads: int = 1
    check_interval_ms: int = 500


def find_haproxy() -> Optional[str]:
    """The haproxy command on PATH, or None."""
    return shutil.which("haproxy")


def _version_options(policy: SecurityPolicy) -> str:
    return (f"ssl-min-ver {_HAPROXY_VERSIONS[policy.protocols[0]]} "
            f"ssl-max-ver {_HAPROXY_VERSIONS[policy.protocols[-1]]}")


def _tls_lines(kind: str, policy: SecurityPolicy) -> list[str]:
    """`ssl-default-bind-*` (kind "bind") or `ssl-default-server-*` lines for a policy."""
    lines = [f"    ssl-default-{kind}-options {_version_options(policy)}"]
    legacy = openssl_cipher_string(policy)
    if legacy:
        lines.append(f"    ssl-default-{kind}-ciphers {legacy}")
    suites = tls13_ciphersuites(policy)
    if suites:
        lines.append(f"    ssl-default-{kind}-ciphersuites {suites}")
    return lines


def _servers(targets: Sequence[tuple[str, int]], extra: str, interval_ms: int) -> list[str]:
    return [f"    server target{index} {host}:{port} check inter {interval_ms}ms{extra}"
            for index, (host, port) in enumerate(targets, 1)]


def haproxy_config(policy: SecurityPolicy, setup: HaproxySetup) -> str:
    """The haproxy.cfg text: mode tcp; TLS terminated with the listener policy, as the NLB
    does; the TLS path re-encrypts with the backend policy and does not verify targets."""
    # HAProxy prefers its own cipher order by default, as the NLB does.
    lines = ["global", f"    nbthread {setup.threads}", "    maxconn 8192",
             "    tune.ssl.default-dh-param 2048"]
    lines += _tls_lines("bind", policy)
    lines += _tls_lines("server", backend_policy(policy))
    lines += [
        "defaults",
        "    mode tcp",
        "    timeout connect 10s",
        # A TLS listener's idle timeout on the NLB.
        "    timeout client 350s",
        "    timeout server 350s",
        "frontend tls_to_tcp",
        f"    bind 127.0.0.1:{setup.tcp_port} ssl crt {setup.pem_file}",
        "    default_backend tcp_targets",
        "frontend tls_to_tls",
        f"    bind 127.0.0.1:{setup.tls_port} ssl crt {setup.pem_file}",
        "    default_backend tls_targets",
        "backend tcp_targets",
        "    balance roundrobin",
        *_servers(setup.tcp_targets, "", setup.check_interval_ms),
        "backend tls_targets",
        "    balance roundrobin",
        # The NLB passes the client's SNI on to a TLS target and does not verify it.
        *_servers(setup.tls_targets, " ssl verify none sni ssl_fc_sni",
                  setup.check_interval_ms),
    ]
    return "\n".join(lines) + "\n"


def write_pem(directory: Path, cert_file: str, chain_file: str, key_file: str) -> Path:
    """The leaf, its chain and its key as one PEM file (mode 0600), as `ssl crt` takes it."""
    path = directory / "listener.pem"
    parts = [Path(name).read_bytes().rstrip(b"\n") + b"\n"
             for name in (cert_file, chain_file, key_file)]
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as output:
        output.write(b"".join(parts))
    return path


def free_port() -> int:
    """A port nothing listens on now (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HaproxyProcess:
    """`haproxy -db -f CONFIG` in the foreground (one process: its PID carries all its CPU
    time); `stop()` ends it by that PID."""

    def __init__(self, command: str, config: str, directory: Path) -> None:
        self.config_file = directory / "haproxy.cfg"
        self.config_file.write_text(config)
        self.log_file = directory / "haproxy.log"
        self._command = [command, "-db", "-f", str(self.config_file)]
        self._process: Optional[subprocess.Popen] = None

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else 0

    def check(self) -> None:
        """Run `haproxy -c`; raises HaproxyError with its output when it refuses."""
        done = subprocess.run([*self._command, "-c"], capture_output=True, text=True,
                              timeout=30, check=False)
        if done.returncode != 0:
            raise HaproxyError(f"haproxy -c refused {self.config_file}:\n"
                               f"{done.stdout}{done.stderr}")

    def start(self, ports: Sequence[int], timeout: float = 10.0) -> None:
        """Start it and wait until every port accepts connections."""
        with open(self.log_file, "wb") as output:
            self._process = subprocess.Popen(self._command, stdin=subprocess.DEVNULL,
                                             stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        for port in ports:
            while not _accepts(port):
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise HaproxyError(f"haproxy did not listen on 127.0.0.1:{port} within "
                                       f"{timeout:g} s; see {self.log_file}")
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it has not ended 5 s later."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
