"""How long a full TLS scan of one loopback listener takes (run: python -m bench.scan_speed)."""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fixtures import tls_probe
from infra import certs, policies
from tests.unit.tls_server import TlsServer, chain_context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--policy", default="ELBSecurityPolicy-TLS13-1-0-2021-06",
                        help="security policy the local listener is configured with")
    parser.add_argument("--key-type", default="RSA_2048", choices=certs.GENERATED_KEY_TYPES)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8, help="concurrent handshakes")
    args = parser.parse_args()

    policy = policies.get_policy(args.policy)
    chain = certs.generate_chain(["bench.test"], args.key_type)
    with tempfile.TemporaryDirectory() as directory:
        context = chain_context(chain, Path(directory))
        policies.configure_context(context, policy, server=True)
        with TlsServer(context) as server:
            times = []
            for run in range(1, args.runs + 1):
                started = time.monotonic()
                scan = tls_probe.scan("127.0.0.1", server.port, "bench.test",
                                      workers=args.workers)
                times.append(time.monotonic() - started)
                handshakes = sum(
                    1 + len(r.accepted_ciphers) + len(r.refused_ciphers) for r in scan.protocols
                )
                print(f"run {run}: {times[-1]:.3f} s for {handshakes} handshakes")
    difference = tls_probe.compare(scan, policy, certs.key_algorithm_of(chain.leaf_pem))
    print(f"{policy.name}, {args.key_type}, {args.workers} workers: "
          f"median {statistics.median(times):.3f} s, best {min(times):.3f} s, "
          f"worst {max(times):.3f} s; policy matched: {difference.ok}")


if __name__ == "__main__":
    main()
