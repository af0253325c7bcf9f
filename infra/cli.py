"""Command line: `python -m infra up | down | sweep` (and `sandbox` when infra.sandbox has it)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path

from botocore.exceptions import EndpointConnectionError

from infra.aws import (
    AccountIdError, AccountNotAllowedError, Clients, EndpointUnreachableError,
    EndpointUrlError, allowed_accounts, check_account, check_endpoint_reachable,
)
from infra.interrupts import Interrupted, handling_signals
from infra.network import Ec2Compute
from infra.provision import build
from infra.reconcile import AccountMismatchError
from infra.stack import AccessLogs, Certificate, HealthCheck, Network, Stack, StackConfigError
from infra.stack import Listener, TargetGroup, DEFAULT_LISTENERS
from infra.state import StateFileError, check_state_path, read_state
from infra.sweep import DEFAULT_AGE_S, run_resources, sweep
from infra.teardown import down
from infra.validation import check_region, validate
from infra.waits import Waits

__all__ = ["main", "add_stack_options", "stack_from_args", "parse_duration", "STEP_DELAY_ENV",
           "Interrupted"]

log = logging.getLogger(__name__)

# Test-only: seconds to sleep before each build step, so a test can interrupt `up` midway.
STEP_DELAY_ENV = "NLB_TLS_SUITE_STEP_DELAY"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`6h`, `90m`, `30s`, `2d` or plain seconds, as seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"duration {text!r}: accepted a number with an optional unit s, m, h or d (6h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _region(args) -> str:
    """--region, else AWS_REGION, else AWS_DEFAULT_REGION, else eu-west-1: checked for form
    wherever it came from (StackConfigError). An empty --region is refused, not taken for
    "unset"."""
    if args.region is not None:
        return check_region(args.region, "--region")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            return check_region(os.environ[name], name)
    return Stack.region


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", default=None,
                        help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, eu-west-1)")
    parser.add_argument("--endpoint-url", default=None,
                        help="send every AWS call to this endpoint (a moto server)")
    parser.add_argument("--aws-account", action="append", default=[], metavar="ID",
                        help="allowed account id (repeatable; default: the environment "
                             "variable NLB_TLS_SUITE_ALLOWED_ACCOUNTS); required against AWS")


def add_stack_options(parser: argparse.ArgumentParser) -> None:
    """The options that describe a stack (shared by `up` and `sandbox`)."""
    group = parser.add_argument_group("stack")
    group.add_argument("--name-prefix", default=Stack.name_prefix)
    group.add_argument("--ssl-policy", default=Stack.ssl_policy)
    group.add_argument("--alpn-policy", default=None,
                       help="HTTP1Only, HTTP2Only, HTTP2Optional, HTTP2Preferred or None")
    group.add_argument("--certificate-arn", default=None, help="use this ACM certificate")
    group.add_argument("--certificate-file", type=Path, help="import this leaf certificate")
    group.add_argument("--key-file", type=Path, help="its private key (unencrypted PEM)")
    group.add_argument("--chain-file", type=Path, help="its intermediates, leaf excluded")
    group.add_argument("--ca-bundle", type=Path, help="what clients trust for it")
    group.add_argument("--domain", action="append", default=[],
                       help="DNS name of the generated certificate (repeatable)")
    group.add_argument("--key-type", default="RSA_2048",
                       help="key of generated certificates: RSA_2048, RSA_3072, "
                            "EC_prime256v1, EC_secp384r1")
    group.add_argument("--sni-domain", action="append", default=[],
                       help="also generate a certificate for this name and add it to every "
                            "TLS listener's certificate list (repeatable)")
    group.add_argument("--log-bucket", default=None, help="existing bucket for access logs")
    group.add_argument("--log-prefix", default=AccessLogs.prefix)
    group.add_argument("--keep-logs", action="store_true",
                       help="keep the created log bucket and its objects at teardown")
    group.add_argument("--no-access-logs", action="store_true")
    group.add_argument("--client-cidr", default=Network.client_cidr)
    group.add_argument("--subnet-id", action="append", default=[], help="use these subnets")
    group.add_argument("--instance-type", default=Network.instance_type)
    group.add_argument("--ami-id", default=None)
    group.add_argument("--scheme", default=Stack.scheme, choices=("internet-facing", "internal"))
    group.add_argument("--health-check-protocol", default=None, choices=("TCP", "HTTP", "HTTPS"),
                       help="for every target group (default TCP)")
    group.add_argument("--health-check-interval", type=int, default=HealthCheck.interval_s)
    group.add_argument("--wait-timeout", type=parse_duration, default=None,
                       help="deadline of each wait (load balancer active, targets healthy)")


def _certificate_from_args(args) -> Certificate:
    # Files that do not apply to the chosen source are passed on, not dropped: validation
    # refuses them, rather than a run silently ignoring a chain or CA bundle it was given.
    if args.certificate_arn:
        return dataclasses.replace(
            Certificate.existing(args.certificate_arn, args.ca_bundle),
            cert_file=args.certificate_file, key_file=args.key_file, chain_file=args.chain_file)
    if bool(args.certificate_file) != bool(args.key_file):
        given, missing = ("--certificate-file", "--key-file") if args.certificate_file else (
            "--key-file", "--certificate-file")
        value = args.certificate_file or args.key_file
        raise StackConfigError(
            f"{given} {value} without {missing}: importing a certificate takes both the "
            "certificate and its private key; give both, or neither to generate one")
    if args.certificate_file:
        return Certificate.from_files(args.certificate_file, args.key_file, args.chain_file,
                                      args.ca_bundle)
    files = {"chain_file": args.chain_file, "ca_bundle": args.ca_bundle}
    if args.domain:
        return Certificate(dns_names=tuple(args.domain), key_type=args.key_type, **files)
    return Certificate(key_type=args.key_type, **files)


def _listeners_from_args(args) -> tuple[Listener, ...]:
    if not args.health_check_protocol and args.health_check_interval == HealthCheck.interval_s:
        return DEFAULT_LISTENERS
    check = HealthCheck(protocol=args.health_check_protocol or "TCP",
                        interval_s=args.health_check_interval)
    listeners = []
    for listener in DEFAULT_LISTENERS:
        group = listener.target_group
        # An HTTP check suits the plain server, HTTPS the TLS one.
        protocol = check.protocol
        if protocol != "TCP":
            protocol = "HTTP" if group.protocol == "TCP" else "HTTPS"
        own = HealthCheck(protocol=protocol, interval_s=check.interval_s)
        listeners.append(Listener(listener.port, TargetGroup(group.protocol, group.port, own)))
    return tuple(listeners)


def stack_from_args(args) -> Stack:
    """The Stack that parsed `add_stack_options` (plus --region) describe."""
    return Stack(
        region=_region(args),
        name_prefix=args.name_prefix,
        listeners=_listeners_from_args(args),
        ssl_policy=args.ssl_policy,
        alpn_policy=args.alpn_policy,
        certificate=_certificate_from_args(args),
        extra_certificates=tuple(Certificate(dns_names=(name,), key_type=args.key_type)
                                 for name in args.sni_domain),
        access_logs=AccessLogs(bucket=args.log_bucket, prefix=args.log_prefix,
                               keep_logs=args.keep_logs, enabled=not args.no_access_logs),
        network=Network(client_cidr=args.client_cidr, subnet_ids=tuple(args.subnet_id),
                        instance_type=args.instance_type, ami_id=args.ami_id),
        scheme=args.scheme,
    )


def _step_hook():
    delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
    if delay <= 0:
        return None
    return lambda name: time.sleep(delay)


def _endpoint(args) -> str | None:
    """--endpoint-url, checked for form and for a server answering there (EndpointUrlError,
    EndpointUnreachableError); None for AWS."""
    if args.endpoint_url is None:
        return None
    check_endpoint_reachable(args.endpoint_url)
    return args.endpoint_url


def _waits(args) -> Waits:
    if args.wait_timeout is None:
        return Waits()
    return Waits(load_balancer_s=args.wait_timeout, targets_s=args.wait_timeout)


def _cmd_up(args) -> int:
    stack = stack_from_args(args)
    # Offline first: a bad choice is reported without any call to AWS, even the account check.
    validate(stack)
    check_state_path(args.state_file)
    allowed = allowed_accounts(args.aws_account)
    clients = Clients(stack.region, _endpoint(args))
    check_account(clients, allowed)
    waits = _waits(args)
    try:
        with handling_signals():
            state = build(stack, clients, Ec2Compute(waits), args.state_file, waits=waits,
                          on_step=_step_hook())
    except (Exception, Interrupted) as error:
        return _undo(args.state_file, stack.run_id, clients, error)
    _print_summary(state, args.state_file)
    return 0


def _undo(state_file: Path, run_id: str, clients: Clients, error: BaseException) -> int:
    """Tear down what the failed build recorded, if it recorded anything; the exit status.

    Signals keep their default meaning here: a second Ctrl-C stops the teardown, and the
    state file then lists what is left.
    """
    log.debug("build failure", exc_info=error)
    try:
        state = read_state(state_file)
    except StateFileError:
        state = None
    if state is None or state["run_id"] != run_id:
        # The build stopped before its state file (a bad choice, a refused account).
        print(f"error: {error}", file=sys.stderr)
        status = 2 if isinstance(error, (StackConfigError, StateFileError)) else 1
    else:
        print(f"up failed: {error}; tearing down what was built", file=sys.stderr)
        report = down(state_file, clients, discover=run_resources)
        print(report.describe(), file=sys.stderr)
        status = 1
    return 128 + error.signum if isinstance(error, Interrupted) else status


def _print_summary(state: dict, state_file: Path) -> None:
    balancer = state["load_balancer"]
    print(f"stack {state['name']} (run {state['run_id']}) is up in {state['region']}")
    print(f"  load balancer {balancer['arn']}")
    for listener in state["listeners"]:
        group = listener["target_group"]
        print(f"  {listener['protocol']} {listener['port']} -> {group['protocol']} "
              f"{group['port']}: {listener['address']['host']}:{listener['address']['port']}"
              f" ({listener['ssl_policy'] or 'no TLS'})")
    if state["certificate"]:
        certificate = state["certificate"]
        print(f"  certificate {certificate['arn']} for {certificate['domain']}"
              f" (CA bundle {certificate['ca_bundle'] or 'system store'})")
    if state["access_logs"]:
        logs = state["access_logs"]
        print(f"  access logs s3://{logs['bucket']}/{logs['prefix']}")
    print(f"  state file {Path(state_file).absolute()}")
    # The interpreter this ran with has the packages `down` needs; a bare `python` may not.
    print(f"tear down: {shlex.quote(sys.executable)} -m infra down --state-file {state_file}")


def _cmd_down(args) -> int:
    state = read_state(args.state_file)
    if state.get("endpoint_url") is not None:
        try:
            check_endpoint_reachable(state["endpoint_url"])
        except EndpointUnreachableError as error:
            print(f"error: {error}; state file {args.state_file} is kept", file=sys.stderr)
            return 1
    clients = Clients(state["region"], state.get("endpoint_url"))
    if state.get("endpoint_url") is None or args.aws_account:
        check_account(clients, allowed_accounts(args.aws_account))
    keep = True if args.keep_logs else None
    # down() refuses credentials of another account than the state's (every resource would
    # look already gone from there), and also removes tagged resources the ledger misses.
    report = down(args.state_file, clients, keep_logs=keep, discover=run_resources)
    print(report.describe())
    return 0 if report.ok else 1


SWEEP_FOUND_STATUS = 3


def _cmd_sweep(args) -> int:
    region = _region(args)
    allowed = allowed_accounts(args.aws_account)
    clients = Clients(region, _endpoint(args))
    check_account(clients, allowed)
    report = sweep(clients, args.older_than, yes=args.yes)
    for run in report.old:
        age = f"{run.age_s / 3600:.1f} h" if run.age_s is not None else "unknown age"
        action = "removed" if args.yes else "would remove (pass --yes)"
        print(f"run {run.run_id}: {age}, {len(run.resources)} resources: {action}")
        for resource in run.resources:
            print(f"  {resource['type']} {resource['id']}")
        if run.run_id in report.teardowns:
            print("  " + report.teardowns[run.run_id].describe().replace("\n", "\n  "))
    for run in report.young:
        print(f"run {run.run_id}: {run.age_s / 3600:.1f} h old, younger than "
              f"{args.older_than / 3600:.1f} h: left alone")
    if not report.old:
        print(f"nothing older than {args.older_than / 3600:.1f} h in {clients.region}")
    if not report.ok:
        return 1
    # A nightly run sweeps right after a clean teardown: whatever it finds was leaked, which
    # must turn the job red even when the sweep then removed it.
    return SWEEP_FOUND_STATUS if args.fail_if_found and report.old else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra",
                                     description="Build, tear down and sweep NLB TLS stacks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="build a stack and write its state file")
    up.add_argument("--state-file", type=Path, required=True)
    _add_target_options(up)
    add_stack_options(up)
    up.set_defaults(handler=_cmd_up)
    tear = commands.add_parser("down", help="tear down the stack a state file lists")
    tear.add_argument("--state-file", type=Path, required=True)
    tear.add_argument("--keep-logs", action="store_true", help="keep the log bucket")
    tear.add_argument("--aws-account", action="append", default=[], metavar="ID")
    tear.set_defaults(handler=_cmd_down)
    sweeper = commands.add_parser("sweep", help="remove abandoned runs found by tag and age")
    _add_target_options(sweeper)
    sweeper.add_argument("--older-than", type=parse_duration, default=DEFAULT_AGE_S,
                         help="age of runs to remove (default 6h)")
    sweeper.add_argument("--yes", action="store_true", help="remove; without it only list")
    sweeper.add_argument("--fail-if-found", action="store_true",
                         help=f"exit {SWEEP_FOUND_STATUS} when any run was found (after "
                              "removing it with --yes); 1 still means something was left")
    sweeper.set_defaults(handler=_cmd_sweep)
    _register_plugins(commands)
    return parser


def _register_plugins(commands) -> None:
    # The local data plane adds `sandbox` from infra/sandbox/cli.py, a module with
    # `register(subparsers)`; found by name so this module need not import the data plane.
    if importlib.util.find_spec("infra.sandbox") and importlib.util.find_spec("infra.sandbox.cli"):
        importlib.import_module("infra.sandbox.cli").register(commands)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except (StackConfigError, StateFileError, AccountIdError, AccountNotAllowedError,
            AccountMismatchError, EndpointUrlError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (EndpointUnreachableError, EndpointConnectionError) as error:
        # An endpoint that went away mid-command: botocore has retried it already.
        print(f"error: {error}", file=sys.stderr)
        return 1
