"""The local data plane against HAProxy and a direct TLS connection, on one machine, one run.

Usage, from the repository root:

    .venv/bin/python -m bench.dataplane_vs_haproxy [--quick] [--rounds N] [--duration S]

It starts `python -m infra sandbox` (moto, the stack, two backends per target group and the
data plane, with access logging to moto's S3, health checks and configuration refresh on),
then HAProxy on the same certificate, chain, key, security policy and backends, and
measures, in rounds whose order alternates (A B, B A, ...) so that drift cancels:
full handshakes per second (a fresh connection and one GET each) at each concurrency,
p50 and p99 of connect + handshake + GET, a download's throughput through the TLS->TCP
and TLS->TLS paths, and the proxy's CPU seconds per 1000 handshakes (/proc/PID/stat). The
baseline is a direct TLS connection to an HTTPS backend (its own throwaway certificate).
Without `haproxy` on PATH it says how to install it and measures the other two.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from infra.policies import UnknownPolicyError, get_policy

from . import _haproxy
from ._load import Endpoint, bulk_download, handshake_worker, probe
from ._report import Figure, Target, check_targets, format_table
from ._sandbox import SandboxProcess, process_cpu_seconds

DATA_PLANE, HAPROXY, DIRECT = "data plane", "HAProxy", "direct TLS"
_START_DELAY = 0.3  # seconds for the pool's workers to receive their task before the start


@dataclass(frozen=True)
class Options:
    """What one run measures and for how long."""

    ssl_policy: str
    rounds: int
    duration: float
    concurrency: tuple[int, ...]
    bulk_bytes: int
    client_processes: int
    haproxy_threads: int
    log_interval: float


@dataclass
class Subject:
    """Something measured: where its TLS->TCP and TLS->TLS paths are, the PID whose CPU
    counts (0: none), and its figures per round."""

    label: str
    tcp_path: Optional[Endpoint]
    tls_path: Optional[Endpoint]
    handshake_path: Endpoint
    pid: int
    figures: dict = field(default_factory=dict)

    def add(self, figure: str, value: Optional[float]) -> None:
        if value is not None:
            self.figures.setdefault(figure, []).append(value)


def _handshakes(pool, subject: Subject, options: Options, concurrency: int,
                duration: float) -> dict[str, Optional[float]]:
    """One handshake run: rate, p50, p99 (ms), CPU s per 1000 handshakes."""
    processes = min(concurrency, options.client_processes)
    shares = [concurrency // processes + (index < concurrency % processes)
              for index in range(processes)]
    start_at = time.monotonic() + _START_DELAY
    end_at = start_at + duration
    pending = [pool.apply_async(handshake_worker, (subject.handshake_path, options.ssl_policy,
                                                   threads, start_at, end_at))
               for threads in shares]
    cpu_start = _cpu_at(subject.pid, start_at)
    cpu_end = _cpu_at(subject.pid, end_at)
    samples = [task.get(timeout=duration + 60) for task in pending]
    completed = sum(sample.completed for sample in samples)
    errors = sum(sample.errors for sample in samples)
    if errors:
        first = next(sample.first_error for sample in samples if sample.errors)
        print(f"    {subject.label}: {errors} failed connections at concurrency {concurrency};"
              f" first: {first}", file=sys.stderr)
    latencies = sorted(value for sample in samples for value in sample.latencies)
    if not latencies:
        return {"rate": 0.0, "p50": None, "p99": None, "cpu": None}
    cpu = None
    if subject.pid and completed:
        cpu = (cpu_end - cpu_start) / completed * 1000
    return {
        "rate": completed / duration,
        "p50": _percentile(latencies, 0.50) * 1000,
        "p99": _percentile(latencies, 0.99) * 1000,
        "cpu": cpu,
    }


def _cpu_at(pid: int, instant: float) -> float:
    time.sleep(max(0.0, instant - time.monotonic()))
    return process_cpu_seconds(pid) if pid else 0.0


def _percentile(ordered: list[float], fraction: float) -> float:
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _bulk(pool, endpoint: Optional[Endpoint], options: Options) -> Optional[float]:
    if endpoint is None:
        return None
    task = pool.apply_async(bulk_download, (endpoint, options.ssl_policy, options.bulk_bytes))
    return task.get(timeout=600).mib_per_second


def _measure_round(pool, subjects: list[Subject], options: Options, round_index: int) -> None:
    """Every figure once per subject; the proxies' order alternates from round to round."""
    proxies = [s for s in subjects if s.label != DIRECT]
    if round_index % 2:
        proxies.reverse()
    ordered = proxies + [s for s in subjects if s.label == DIRECT]
    for concurrency in options.concurrency:
        for subject in ordered:
            figures = _handshakes(pool, subject, options, concurrency, options.duration)
            subject.add(f"rate c{concurrency}", figures["rate"])
            subject.add(f"p50 c{concurrency}", figures["p50"])
            subject.add(f"p99 c{concurrency}", figures["p99"])
            subject.add(f"cpu c{concurrency}", figures["cpu"])
    for path in ("tcp", "tls"):
        for subject in ordered:
            endpoint = subject.tcp_path if path == "tcp" else subject.tls_path
            subject.add(f"bulk {path}", _bulk(pool, endpoint, options))


def _figures(options: Options) -> list[Figure]:
    """The table's rows, in order, with the issue's targets on the ratios."""
    rows = []
    for concurrency in options.concurrency:
        rows.append(Figure(f"rate c{concurrency}",
                           f"handshakes/s, concurrency {concurrency}", Target(">=", 0.9)))
    for concurrency in options.concurrency:
        rows.append(Figure(f"p50 c{concurrency}", f"p50 ms, concurrency {concurrency}"))
        rows.append(Figure(f"p99 c{concurrency}", f"p99 ms, concurrency {concurrency}"))
    size = f"{options.bulk_bytes >> 20} MiB"
    rows.append(Figure("bulk tcp", f"MiB/s, {size} via TLS->TCP", Target(">=", 0.85)))
    rows.append(Figure("bulk tls", f"MiB/s, {size} via TLS->TLS", Target(">=", 0.85)))
    for concurrency in options.concurrency:
        rows.append(Figure(f"cpu c{concurrency}",
                           f"CPU s / 1000 handshakes, conc. {concurrency}", Target("<=", 1.2)))
    return rows


def _verify(subjects: list[Subject], options: Options, ca_bundle: str) -> None:
    """One verified handshake per proxy and path: the same chain, protocol and cipher."""
    for subject in subjects:
        for endpoint in filter(None, (subject.tcp_path, subject.tls_path)):
            bundle = ca_bundle if subject.label != DIRECT else None
            result = probe(endpoint, options.ssl_policy, bundle)
            print(f"  {endpoint.label}: {result.protocol} {result.cipher}, "
                  f"leaf {result.leaf_subject}", file=sys.stderr)


def _warm_up(pool, subjects: list[Subject], options: Options) -> None:
    for subject in subjects:
        _handshakes(pool, subject, options, min(4, max(options.concurrency)), 0.5)


def _subjects(sandbox: SandboxProcess, haproxy: Optional[_haproxy.HaproxyProcess],
              ports: tuple[int, int]) -> list[Subject]:
    name = sandbox.state["certificate"]["domain"]
    tcp = Endpoint(f"{DATA_PLANE} TLS->TCP", *sandbox.listener_address(443), name)
    tls = Endpoint(f"{DATA_PLANE} TLS->TLS", *sandbox.listener_address(9443), name)
    subjects = [Subject(DATA_PLANE, tcp, tls, tcp, sandbox.pid)]
    if haproxy is not None:
        tcp = Endpoint(f"{HAPROXY} TLS->TCP", "127.0.0.1", ports[0], name)
        tls = Endpoint(f"{HAPROXY} TLS->TLS", "127.0.0.1", ports[1], name)
        subjects.append(Subject(HAPROXY, tcp, tls, tcp, haproxy.pid))
    host, port = sandbox.backends("tls8443")[0]
    direct = Endpoint(f"{DIRECT} to the HTTPS backend", host, port, name)
    subjects.append(Subject(DIRECT, None, direct, direct, 0))
    return subjects


def _start_haproxy(sandbox: SandboxProcess, options: Options, directory: Path):
    command = _haproxy.find_haproxy()
    if command is None:
        print(f"haproxy is not on PATH: HAProxy is skipped. Install it with: "
              f"{_haproxy.INSTALL_HINT}", file=sys.stderr)
        return None, (0, 0)
    certificate = sandbox.state["certificate"]
    pem = _haproxy.write_pem(directory, certificate["cert_file"], certificate["chain_file"],
                             certificate["key_file"])
    ports = (_haproxy.free_port(), _haproxy.free_port())
    setup = _haproxy.HaproxySetup(pem, ports[0], ports[1], sandbox.backends("tcp8080"),
                                  sandbox.backends("tls8443"), threads=options.haproxy_threads)
    process = _haproxy.HaproxyProcess(command, _haproxy.haproxy_config(
        get_policy(options.ssl_policy), setup), directory)
    process.check()
    process.start(ports)
    return process, ports


def run(options: Options, progress: Callable[[str], None]) -> int:
    """Start everything, measure, print the table; stop everything by PID."""
    started = time.monotonic()
    directory = Path(tempfile.mkdtemp(prefix="bench-dataplane-"))  # 0700: the PEM has a key
    pool = multiprocessing.get_context("fork").Pool(options.client_processes)
    sandbox = SandboxProcess(directory, options.ssl_policy, options.log_interval)
    haproxy = None
    try:
        progress(f"starting the sandbox (log {sandbox.log_file})")
        sandbox.start()
        haproxy, ports = _start_haproxy(sandbox, options, directory)
        subjects = _subjects(sandbox, haproxy, ports)
        progress("checking what each endpoint serves")
        _verify(subjects, options, sandbox.state["certificate"]["ca_bundle"])
        _warm_up(pool, subjects, options)
        for index in range(options.rounds):
            progress(f"round {index + 1} of {options.rounds}")
            _measure_round(pool, subjects, options, index)
        objects = sandbox.log_objects()
    finally:
        pool.terminate()
        pool.join()
        if haproxy is not None:
            haproxy.stop()
        status = sandbox.stop()
        shutil.rmtree(directory, ignore_errors=True)
    progress(f"done in {time.monotonic() - started:.0f} s; sandbox exit status {status}")
    rows = _figures(options)
    print(f"\n{options.ssl_policy}, {options.rounds} rounds of {options.duration:g} s per "
          f"handshake figure, {options.client_processes} client processes, HAProxy "
          f"nbthread {options.haproxy_threads}; medians over rounds, ratios paired per round")
    print(f"access-log objects the data plane wrote to moto S3 during the run: {objects}")
    print(format_table(rows, subjects, DATA_PLANE, HAPROXY))
    verdicts = check_targets(rows, subjects, DATA_PLANE, HAPROXY)
    for line in verdicts:
        print(line)
    return 0


def _concurrency(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers, e.g. 1,16")
    return values


def _options(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane_vs_haproxy",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--ssl-policy", default="ELBSecurityPolicy-2016-08")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (default 3)")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="length of each handshake run (default 4)")
    parser.add_argument("--concurrency", type=_concurrency, default=(1, 16),
                        help="comma-separated client concurrencies (default 1,16)")
    parser.add_argument("--bulk-mib", type=int, default=None,
                        help="download size in MiB (default 256)")
    parser.add_argument("--client-processes", type=int, default=4,
                        help="load-generator processes (default 4)")
    parser.add_argument("--haproxy-threads", type=int, default=1,
                        help="HAProxy nbthread (default 1, as the data plane's one event loop)")
    parser.add_argument("--log-interval", type=float, default=5.0, metavar="SECONDS",
                        help="the sandbox's access-log delivery interval (default 5, so "
                             "deliveries to S3 happen while it is measured)")
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds of 1.5 s and a 64 MiB download: about 40 s")
    args = parser.parse_args(argv)
    quick = {"rounds": 2, "duration": 1.5, "bulk_mib": 64}
    normal = {"rounds": 3, "duration": 4.0, "bulk_mib": 256}
    chosen = {key: getattr(args, key) if getattr(args, key) is not None
              else (quick if args.quick else normal)[key] for key in normal}
    try:
        get_policy(args.ssl_policy)
    except UnknownPolicyError as error:
        parser.error(str(error))
    for name in ("rounds", "bulk_mib", "client_processes", "haproxy_threads"):
        value = chosen.get(name, getattr(args, name))
        if value < 1:
            parser.error(f"--{name.replace('_', '-')} {value}: expected 1 or more")
    if chosen["duration"] <= 0 or args.log_interval <= 0:
        parser.error("--duration and --log-interval take a positive number of seconds")
    return Options(args.ssl_policy, chosen["rounds"], chosen["duration"], args.concurrency,
                   chosen["bulk_mib"] << 20, args.client_processes, args.haproxy_threads,
                   args.log_interval)


def main(argv: Optional[list[str]] = None) -> int:
    options = _options(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:5.1f} s] {message}", file=sys.stderr, flush=True)

    return run(options, progress)


if __name__ == "__main__":
    sys.exit(main())
