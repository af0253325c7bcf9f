"""The e2e session's stack lifecycle: refusals before anything starts, and teardowns that
clean up after a failed build and list what they could not remove."""

# The aws path runs for real against a moto server on loopback (fixtures.moto's moto_server);
# a build there takes about two seconds. The pytest sessions that talk to that server run as
# plain subprocesses, not through pytester: pytester removes the modules imported during its
# test, and the server imports a service's backend on that service's first request, so the
# next request would find a new, empty backend.

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import e2e_lifecycle
from fixtures.e2e_options import E2eOptions
from fixtures.e2e_stack import ROOT, SandboxError, SandboxProcess, TeardownLeftovers
from fixtures.moto import FailCalls, tagged_resources
from infra.certs import generate_chain
from infra.state import read_state
from infra.teardown import teardown

pytestmark = pytest.mark.unit

USAGE_ERROR = pytest.ExitCode.USAGE_ERROR
MOTO_ACCOUNT = "123456789012"  # the account moto answers for


def _options(endpoint_url: str, **changes) -> E2eOptions:
    options = E2eOptions(
        target="aws", region="eu-west-1", ssl_policy=None, certificate_arn=None,
        log_bucket=None, log_prefix=None, endpoint_url=endpoint_url, aws_accounts=(),
        stack_state=None, keep_stack=False, existing_nlb=None, log_wait=1.0)
    return dataclasses.replace(options, **changes)


class _Directories:
    """Stands in for pytest's tmp_path_factory."""

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path


def _aws_session(directory: Path, endpoint_url: str, *arguments: str):
    """A pytest session with only the e2e plugin, in an empty directory, on the aws target."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "fixtures.e2e", "-p", "no:cacheprovider",
         "--target", "aws", "--endpoint-url", endpoint_url, *arguments],
        cwd=directory, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


def test_an_allow_list_without_the_endpoints_account_is_refused_naming_both(
    moto_server, tmp_path
):
    status, output = _aws_session(tmp_path, moto_server, "--aws-account", "111111111111")
    assert status == USAGE_ERROR and "111111111111" in output \
        and MOTO_ACCOUNT in output, (
            f"expected a usage error naming the allow-list 111111111111 and the endpoint's "
            f"account {MOTO_ACCOUNT}, got exit {status}:\n{output}"
        )


def test_an_existing_nlb_that_does_not_exist_is_a_usage_error_naming_it(moto_server, tmp_path):
    status, output = _aws_session(tmp_path, moto_server, "--existing-nlb", "nosuch")
    assert status == USAGE_ERROR and "--existing-nlb nosuch" in output \
        and "expected the name or ARN of a network load balancer" in output \
        and "Traceback" not in output, (
            f"expected a usage error naming the load balancer nosuch and what is accepted, "
            f"got exit {status}:\n{output}"
        )


class _UsageExit(SandboxProcess):
    """Stands in for a sandbox that refuses its arguments: exit 2, no state written."""

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-c", "import sys; sys.exit(2)"]


def test_a_sandbox_that_exits_with_a_usage_error_leaves_no_teardown_failure(tmp_path):
    sandbox = _UsageExit(tmp_path / "s.json", tmp_path / "s.log", [])
    sandbox.start()
    with pytest.raises(SandboxError, match="exited with status 2"):
        sandbox.wait_ready(10.0, lambda message: None)
    sandbox.stop()  # raises TeardownLeftovers if it counted the exit as a leftover


def test_keep_stack_still_tears_down_a_build_that_failed(moto_server, tmp_path, monkeypatch):
    monkeypatch.setattr(e2e_lifecycle, "_KEPT_STATE_DIRECTORY", tmp_path / "kept")
    real_build = e2e_lifecycle.build
    built = []

    def build_failing_at_listeners(stack, clients, compute, state_path, *, on_step):
        def step(name: str) -> None:
            on_step(name)
            if name == "listeners":
                raise RuntimeError("injected failure before the listeners")

        built.append((stack.run_id, clients))
        return real_build(stack, clients, compute, state_path, on_step=step)

    monkeypatch.setattr(e2e_lifecycle, "build", build_failing_at_listeners)
    teardowns, summary = e2e_lifecycle.Teardowns(), []
    with pytest.raises(RuntimeError, match="injected failure"):
        e2e_lifecycle.provide_stack(_options(moto_server, keep_stack=True), teardowns.add,
                                    lambda message: None, _Directories(tmp_path), summary)
    run_id, clients = built[0]
    made = tagged_resources(clients, run_id)
    teardowns.run()
    left = tagged_resources(clients, run_id)
    assert made and not left, (
        f"expected the failed build's {len(made)} resources removed although --keep-stack "
        f"was given, got left: {left}"
    )
    assert not any("stack kept" in line for line in summary), (
        f"expected no 'stack kept' line for a stack that never came up, got {summary}"
    )


def test_keep_stack_keeps_a_stack_that_came_up(moto_server, tmp_path, monkeypatch):
    monkeypatch.setattr(e2e_lifecycle, "_KEPT_STATE_DIRECTORY", tmp_path / "kept")
    teardowns, summary = e2e_lifecycle.Teardowns(), []
    stack = e2e_lifecycle.provide_stack(_options(moto_server, keep_stack=True), teardowns.add,
                                        lambda message: None, _Directories(tmp_path), summary)
    try:
        teardowns.run()
        left = tagged_resources(stack.clients, stack.state["run_id"])
        assert left and any(str(stack.state_path) in line for line in summary), (
            f"expected the stack kept and its state file {stack.state_path} named, got "
            f"{len(left)} resources left and summary {summary}"
        )
    finally:
        teardown(read_state(stack.state_path), stack.clients, state_path=stack.state_path)


def test_a_teardown_that_leaves_resources_fails_with_the_list(moto_server, tmp_path):
    options = _options(moto_server)
    clients = e2e_lifecycle.aws_clients(options)
    teardowns = e2e_lifecycle.Teardowns()
    stack = e2e_lifecycle.provide_stack(options, teardowns.add, lambda message: None,
                                        _Directories(tmp_path), [], clients=clients)
    run_id, tags = stack.state["run_id"], stack.state["tags"]
    # One extra resource of the run the ledger does not know, and one that cannot be deleted.
    chain = generate_chain(["extra.nlb-tls-suite.test"])
    extra = clients.acm.import_certificate(
        Certificate=chain.leaf_pem, PrivateKey=chain.key_pem, CertificateChain=chain.chain_pem,
        Tags=[{"Key": k, "Value": v} for k, v in tags.items()])["CertificateArn"]
    group = stack.state["target_groups"][0]["arn"]
    refusal = FailCalls("DeleteTargetGroup", "AccessDenied")
    clients.register("before-call", refusal)
    try:
        with pytest.raises(TeardownLeftovers) as caught:
            teardowns.run()
    finally:
        clients.unregister("before-call", refusal)
        clients.acm.delete_certificate(CertificateArn=extra)
        if stack.state_path.exists():
            teardown(read_state(stack.state_path), clients, state_path=stack.state_path)
    message = str(caught.value)
    for expected in (f"{extra}: still tagged with run id {run_id}", group, "AccessDenied"):
        assert expected in message, f"expected the leftovers to list {expected!r}, got {message}"
