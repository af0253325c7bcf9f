"""`python -m infra sandbox`: run the local target until SIGINT or SIGTERM (found by infra.cli)."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import shlex
import signal
import sys
import threading
from pathlib import Path

from infra.cli import Interrupted, add_stack_options, stack_from_args
from infra.stack import StackConfigError
from infra.state import StateFileError
from infra.waits import WaitTimeout
from servers._http import host_port  # HOST:PORT, an IPv6 host in brackets (RFC 3986)

from .health import DEFAULT_TIME_SCALE
from .local_compute import BackendStartError
from .routing import ALGORITHMS, FLOW_HASH
from .run import Sandbox, SandboxOptions, SandboxStartError

__all__ = ["register", "summary"]

logger = logging.getLogger(__name__)



def is_loopback(address: str) -> bool:
    """Whether a listen address is loopback: 127.0.0.0/8, ::1, or the name localhost."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return value


def register(commands) -> None:
    """Add the `sandbox` subcommand to infra.cli's subparsers."""
    parser = commands.add_parser(
        "sandbox", help="run the stack offline: moto, local backends and a TLS data plane",
        description="Build the stack against an in-process moto server, serve its TLS "
                    "listeners on loopback, and run until SIGINT or SIGTERM.",
    )
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument("--region", default=None,
                        help="region of the stack (default: AWS_REGION, AWS_DEFAULT_REGION, "
                             "eu-west-1)")
    parser.add_argument("--log-interval", type=_positive, default=300.0, metavar="SECONDS",
                        help="access-log delivery interval (default 300, as on AWS)")
    parser.add_argument("--listen-address", default="127.0.0.1",
                        help="address the listeners are served on (default 127.0.0.1)")
    parser.add_argument("--listener-ports-as-is", action="store_true",
                        help="serve listener port P on P itself instead of a free port")
    parser.add_argument("--target-selection", choices=ALGORITHMS, default=FLOW_HASH,
                        help="how a connection's target is chosen (default flow_hash, as the "
                             "NLB does)")
    parser.add_argument("--health-time-scale", type=_positive, default=DEFAULT_TIME_SCALE,
                        metavar="FACTOR",
                        help="multiply health-check intervals and timeouts by this (default "
                             f"{DEFAULT_TIME_SCALE:g}: a 10 s interval is checked every "
                             f"{10 * DEFAULT_TIME_SCALE:g} s)")
    add_stack_options(parser)
    parser.set_defaults(handler=_cmd_sandbox)


def _options(args) -> SandboxOptions:
    return SandboxOptions(
        state_file=args.state_file,
        log_interval=args.log_interval,
        listen_address=args.listen_address,
        listener_ports_as_is=args.listener_ports_as_is,
        health_time_scale=args.health_time_scale,
        target_selection=args.target_selection,
    )


class _StartSignals:
    """While starting: the first SIGINT or SIGTERM raises Interrupted (start() then stops
    what it started); later ones only warn, so that cleanup finishes."""

    def __init__(self) -> None:
        self.interrupted = False

    def __call__(self, signum, frame) -> None:
        if self.interrupted:
            logger.warning("%s again: still stopping what was started",
                           signal.Signals(signum).name)
            return
        self.interrupted = True
        raise Interrupted(signum)


def _cmd_sandbox(args) -> int:
    if not is_loopback(args.listen_address):
        logger.warning("serving the listeners on %s, which is not a loopback address",
                       args.listen_address)
    sandbox = Sandbox(stack_from_args(args), _options(args))
    on_signal = _StartSignals()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            state = sandbox.start()  # stops what it started when it fails or is interrupted
        except Interrupted as interrupted:
            print(f"sandbox: {interrupted} while starting; stopped", file=sys.stderr)
            return 128 + interrupted.signum
        except (StackConfigError, StateFileError) as error:
            print(f"sandbox: {error}", file=sys.stderr)  # nothing was started
            return 2
        except (SandboxStartError, BackendStartError, WaitTimeout) as error:
            print(f"sandbox: could not start: {error}", file=sys.stderr)
            return 1
        # moto's models, botocore's service descriptions and the stack make a heap of
        # millions of objects that live as long as this process. Moving them out of the
        # collector's reach keeps each full collection from walking all of them while the
        # data plane serves (up to a tenth of its CPU under a stream of new connections).
        # Here, in the command's own process, not in Sandbox: a test process would freeze
        # everything it ever made.
        gc.freeze()
        stopping = threading.Event()
        for signum in previous:
            signal.signal(signum, lambda *_: stopping.set())
        print(summary(state, sandbox.endpoint_url, sandbox.started_in, args.state_file),
              flush=True)
        # Wake up now and then: a signal the kernel delivers to another thread only runs
        # its Python handler when the main thread next executes bytecode, and a wait
        # without a timeout would never return to do so.
        while not stopping.wait(0.5):
            pass
        logger.info("stopping: flushing access logs and tearing the stack down")
        report = sandbox.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if report is not None and not report.ok:
        print(report.describe(), file=sys.stderr)
        return 1
    print("sandbox stopped; stack torn down", flush=True)
    return 0


def _log_commands(state: dict, endpoint_url: str) -> list[str]:
    logs = state.get("access_logs")
    if not logs:
        return ["  access logs: off"]
    region, bucket, prefix = state["region"], logs["bucket"], logs["prefix"]
    where = f"s3://{bucket}/{prefix}/AWSLogs/{state['account_id']}/"
    credentials = "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing"
    boto3_line = (
        "import boto3; s3 = boto3.client('s3', endpoint_url='{url}', region_name='{region}', "
        "aws_access_key_id='testing', aws_secret_access_key='testing'); "
        "print(*[o['Key'] for o in s3.list_objects_v2(Bucket='{bucket}', "
        "Prefix='{prefix}/').get('Contents', [])], sep='\\n')"
    ).format(url=endpoint_url, region=region, bucket=bucket, prefix=prefix)
    interval = state.get("sandbox", {}).get("log_interval_s")
    return [
        f"  access logs: {where} (a gzip object per {interval:g} s with connections)",
        f"    {credentials} aws --endpoint-url {endpoint_url} --region {region} "
        f"s3 ls --recursive s3://{bucket}/{prefix}/",
        f"    {shlex.quote(sys.executable)} -c {shlex.quote(boto3_line)}",
    ]


def summary(state: dict, endpoint_url: str, started_in: float, state_file: Path) -> str:
    """What a user can paste to try the sandbox: openssl, curl and listing the log objects."""
    certificate = state.get("certificate") or {}
    name = certificate.get("domain") or "NAME"
    ca = certificate.get("ca_bundle")
    ca_option = f" -CAfile {ca}" if ca else ""
    curl_ca = f"--cacert {ca} " if ca else ""
    lines = [
        f"sandbox up in {started_in:.1f} s: stack {state['name']} in {state['region']}, "
        f"AWS API at {endpoint_url} (any credentials; account {state['account_id']})",
        f"  state file {Path(state_file).absolute()} (listener addresses, backends, ledger)",
    ]
    for listener in state["listeners"]:
        address = listener["address"]
        served = host_port(address["host"], address["port"])
        group = listener["target_group"]
        default_port = "" if listener["port"] == 443 else f":{listener['port']}"
        lines += [
            f"  listener {listener['protocol']} {listener['port']} ({listener['ssl_policy']}) "
            f"-> {group['protocol']} target group {group['port']}: {served}",
            f"    openssl s_client -connect {served} -servername {name}{ca_option}",
            f"    curl {curl_ca}--connect-to {name}:{listener['port']}:{served} "
            f"https://{name}{default_port}/",
        ]
    lines += _log_commands(state, endpoint_url)
    lines.append("Ctrl-C (SIGINT) or SIGTERM flushes the access logs, tears the stack down "
                 "and exits.")
    return "\n".join(lines)
