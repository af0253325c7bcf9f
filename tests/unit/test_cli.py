"""`python -m infra up | down | sweep`: against a moto server, signals, the account allow-list."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.moto import FAKE_CREDENTIALS, REGION, inventory, tagged_resources
from infra.aws import ALLOWED_ACCOUNTS_ENV, Clients
from infra.cli import (
    STEP_DELAY_ENV, SWEEP_FOUND_STATUS, add_stack_options, main, parse_duration, stack_from_args,
)
from infra.stack import Certificate, Stack
from infra.state import read_state, write_state

pytestmark = pytest.mark.unit

REPOSITORY = Path(__file__).resolve().parents[2]


def _environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(FAKE_CREDENTIALS, AWS_CONFIG_FILE="/dev/null",
               AWS_SHARED_CREDENTIALS_FILE="/dev/null", **extra)
    env.pop(ALLOWED_ACCOUNTS_ENV, None)
    return env


def _infra(*arguments, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infra", *arguments], cwd=REPOSITORY,
                          env=env or _environment(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("text, seconds", [("6h", 21600), ("90m", 5400), ("30s", 30),
                                           ("2d", 172800), ("45", 45), ("1.5h", 5400)])
def test_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


def test_a_bad_duration_names_the_value():
    with pytest.raises(argparse.ArgumentTypeError, match="'6 hours'.*6h"):
        parse_duration("6 hours")


def _parse_stack(*arguments) -> Stack:
    parser = argparse.ArgumentParser()
    parser.add_argument("--region")
    add_stack_options(parser)
    return stack_from_args(parser.parse_args(list(arguments)))


def test_stack_options_map_onto_the_stack_description():
    stack = _parse_stack(
        "--region", "eu-central-1", "--ssl-policy", "ELBSecurityPolicy-TLS13-1-2-2021-06",
        "--alpn-policy", "HTTP2Optional", "--domain", "a.test", "--key-type", "EC_secp384r1",
        "--sni-domain", "b.test", "--log-prefix", "team/x", "--keep-logs",
        "--client-cidr", "203.0.113.0/24", "--health-check-protocol", "HTTP")
    assert (stack.region, stack.ssl_policy, stack.alpn_policy) == (
        "eu-central-1", "ELBSecurityPolicy-TLS13-1-2-2021-06", "HTTP2Optional")
    assert stack.certificate == Certificate(dns_names=("a.test",), key_type="EC_secp384r1")
    assert [c.dns_names for c in stack.extra_certificates] == [("b.test",)]
    assert (stack.access_logs.prefix, stack.access_logs.keep_logs, stack.access_logs.bucket) \
        == ("team/x", True, None)
    assert stack.network.client_cidr == "203.0.113.0/24"
    assert [(g.protocol, g.health_check.protocol) for g in stack.target_groups] == [
        ("TCP", "HTTP"), ("TLS", "HTTPS")]
    existing = _parse_stack("--certificate-arn", "arn:aws:acm:eu-west-1:1:certificate/x")
    assert existing.certificate == Certificate.existing("arn:aws:acm:eu-west-1:1:certificate/x")
    defaults = _parse_stack("--region", "eu-west-1")
    assert (defaults.listeners, defaults.certificate, defaults.access_logs) == (
        Stack().listeners, Stack().certificate, Stack().access_logs)


def test_up_against_aws_refuses_without_an_allow_list(clients, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ALLOWED_ACCOUNTS_ENV, raising=False)
    before = inventory(clients)
    # No --endpoint-url: the real-account path; moto in-process answers sts.
    status = main(["up", "--state-file", str(tmp_path / "s.json"), "--region", REGION])
    assert status == 2
    assert "refusing to run against AWS account 123456789012" in capsys.readouterr().err
    assert inventory(clients) == before and not (tmp_path / "s.json").exists()


def test_up_refuses_an_account_not_on_the_list(clients, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ALLOWED_ACCOUNTS_ENV, "111111111111,222222222222")
    before = inventory(clients)
    status = main(["up", "--state-file", str(tmp_path / "s.json"), "--region", REGION])
    err = capsys.readouterr().err
    assert status == 2 and "111111111111, 222222222222" in err, err
    assert inventory(clients) == before


def test_an_account_on_the_list_may_sweep(clients, monkeypatch, capsys):
    monkeypatch.setenv(ALLOWED_ACCOUNTS_ENV, "123456789012")
    assert main(["sweep", "--region", REGION]) == 0
    assert main(["sweep", "--region", REGION, "--aws-account", "999999999999"]) == 2


def test_up_then_down_against_a_moto_server(moto_server, tmp_path):
    state_file = tmp_path / "s.json"
    up = _infra("up", "--endpoint-url", moto_server, "--region", REGION,
                "--state-file", str(state_file))
    assert up.returncode == 0, up.stderr
    state = read_state(state_file)
    assert f"stack {state['name']}" in up.stdout and "python -m infra down" in up.stdout
    assert state["endpoint_url"] == moto_server
    remote = Clients(REGION, moto_server)
    listeners = remote.elbv2.describe_listeners(
        LoadBalancerArn=state["load_balancer"]["arn"])["Listeners"]
    assert sorted((l["Port"], l["Protocol"], l["SslPolicy"]) for l in listeners) == [
        (443, "TLS", "ELBSecurityPolicy-2016-08"), (9443, "TLS", "ELBSecurityPolicy-2016-08")]
    policy = json.loads(remote.s3.get_bucket_policy(Bucket=state["access_logs"]["bucket"])[
        "Policy"])
    assert {s["Principal"]["Service"] for s in policy["Statement"]} == {
        "delivery.logs.amazonaws.com"}

    down = _infra("down", "--state-file", str(state_file))

    assert down.returncode == 0, down.stderr
    assert tagged_resources(remote, state["run_id"]) == []
    assert not state_file.exists()


def _wait_for_resource(state_file: Path, kind: str, process, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = None
        if state and any(r["type"] == kind for r in state["resources"]):
            return state
        time.sleep(0.05)
    raise AssertionError(f"no {kind} in {state_file} after {timeout} s")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_up_tears_down_what_was_built(signum, moto_server, tmp_path):
    state_file = tmp_path / "s.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "infra", "up", "--endpoint-url", moto_server, "--region",
         REGION, "--state-file", str(state_file)],
        cwd=REPOSITORY, env=_environment(**{STEP_DELAY_ENV: "0.2"}),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Mid-build: the bucket and the certificate exist, the network does not yet.
        state = _wait_for_resource(state_file, "acm-certificate", process)
        process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name}" in err
    assert tagged_resources(Clients(REGION, moto_server), state["run_id"]) == []
    assert not state_file.exists()


def test_down_exits_non_zero_and_keeps_the_state_file_when_something_is_left(moto_server,
                                                                             tmp_path, capsys):
    state_file = tmp_path / "s.json"
    write_state(state_file, {"run_id": "leftover", "region": REGION,
                             "endpoint_url": moto_server,
                             "resources": [{"type": "mystery", "id": "m-1"}]})
    assert main(["down", "--state-file", str(state_file)]) == 1
    assert "LEFT mystery m-1" in capsys.readouterr().out
    assert read_state(state_file)["resources"] == [{"type": "mystery", "id": "m-1"}]


def test_sweep_lists_an_old_run_without_removing_it(moto_server, capsys):
    remote = Clients(REGION, moto_server)
    stack = Stack(created_at="2000-01-01T00:00:00Z")
    vpc = remote.ec2.create_vpc(CidrBlock="10.77.0.0/16", TagSpecifications=[
        {"ResourceType": "vpc", "Tags": stack.tag_list()}])["Vpc"]["VpcId"]
    try:
        status = main(["sweep", "--endpoint-url", moto_server, "--region", REGION,
                       "--older-than", "6h"])
        out = capsys.readouterr().out
        assert status == 0
        assert f"run {stack.run_id}" in out and f"ec2-vpc {vpc}" in out and "--yes" in out
        assert tagged_resources(remote, stack.run_id) == [f"ec2-vpc {vpc}"]
    finally:
        remote.ec2.delete_vpc(VpcId=vpc)


def test_sweep_fails_if_found_even_after_removing_the_run(moto_server, capsys):
    remote = Clients(REGION, moto_server)
    stack = Stack(created_at="2000-01-01T00:00:00Z")
    vpc = remote.ec2.create_vpc(CidrBlock="10.78.0.0/16", TagSpecifications=[
        {"ResourceType": "vpc", "Tags": stack.tag_list()}])["Vpc"]["VpcId"]
    sweep_args = ["sweep", "--endpoint-url", moto_server, "--region", REGION,
                  "--older-than", "6h", "--yes", "--fail-if-found"]
    status = main(sweep_args)
    out = capsys.readouterr().out
    assert status == SWEEP_FOUND_STATUS, f"expected {SWEEP_FOUND_STATUS}, got {status}: {out}"
    assert tagged_resources(remote, stack.run_id) == [], f"{vpc} was not removed: {out}"
    assert main(sweep_args) == 0, "a clean region must pass --fail-if-found"


def test_up_refuses_a_state_file_of_another_run_and_leaves_it_alone(moto_server, tmp_path,
                                                                    capsys):
    state_file = tmp_path / "s.json"
    other = {"run_id": "otherrun", "region": REGION, "endpoint_url": moto_server,
             "resources": [{"type": "ec2-vpc", "id": "vpc-0123"}]}
    write_state(state_file, other)
    status = main(["up", "--endpoint-url", moto_server, "--region", REGION,
                   "--state-file", str(state_file), "--ami-id", "ami-0123456789abcdef0"])
    err = capsys.readouterr().err
    assert status == 2 and "still lists 1 resources of run otherrun" in err, err
    assert read_state(state_file) == other


def _no_aws_calls(monkeypatch) -> None:
    """Make any AWS client creation fail the test: what runs must stay offline."""
    def refuse(self, service):
        raise AssertionError(f"expected no AWS call; a {service} client was made")

    monkeypatch.setattr(Clients, "client", refuse)


def test_up_reports_a_bad_choice_before_any_aws_call(tmp_path, monkeypatch, capsys):
    """The offline validation runs before the account check: no sts call for a bad policy."""
    monkeypatch.delenv(ALLOWED_ACCOUNTS_ENV, raising=False)
    _no_aws_calls(monkeypatch)

    status = main(["up", "--state-file", str(tmp_path / "s.json"), "--region", REGION,
                   "--ssl-policy", "ELBSecurityPolicy-2099-01"])

    err = capsys.readouterr().err
    assert status == 2, f"expected exit 2, got {status}: {err}"
    assert "ELBSecurityPolicy-2099-01" in err and "refusing" not in err, err
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("given, missing", [("--certificate-file", "--key-file"),
                                            ("--key-file", "--certificate-file")])
def test_up_with_half_of_a_certificate_import_names_the_missing_option(
        given, missing, tmp_path, monkeypatch, capsys):
    _no_aws_calls(monkeypatch)
    half = tmp_path / "half.pem"
    half.write_text("not read: the option check comes first\n")

    status = main(["up", "--state-file", str(tmp_path / "s.json"), "--region", REGION,
                   given, str(half)])

    err = capsys.readouterr().err
    assert status == 2, f"expected exit 2, got {status}: {err}"
    assert f"{given} {half} without {missing}" in err, f"expected {missing} named; got {err}"
    assert not (tmp_path / "s.json").exists()


def _command(name: str, tmp_path) -> list[str]:
    """`up`, `down` or `sweep` with what each needs short of an allow-list (down: a state
    file of a stack against AWS, so the allow-list is read)."""
    if name == "down":
        state_file = tmp_path / "s.json"
        write_state(state_file, {"run_id": "r1", "region": REGION, "endpoint_url": None,
                                 "account_id": "123456789012", "resources": []})
        return ["down", "--state-file", str(state_file)]
    if name == "up":
        return ["up", "--state-file", str(tmp_path / "s.json"), "--region", REGION]
    return ["sweep", "--region", REGION]


@pytest.mark.parametrize("command", ["up", "down", "sweep"])
def test_an_aws_account_that_is_not_12_digits_is_refused_before_any_aws_call(
        command, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ALLOWED_ACCOUNTS_ENV, raising=False)
    _no_aws_calls(monkeypatch)

    status = main([*_command(command, tmp_path), "--aws-account", "foo"])

    err = capsys.readouterr().err
    assert (status, "--aws-account 'foo'" in err, "12-digit AWS account id" in err) == (
        2, True, True), f"expected exit 2 naming 'foo' and what is accepted, got {status}: {err}"


@pytest.mark.parametrize("command", ["up", "down", "sweep"])
def test_an_allow_list_variable_that_is_not_12_digit_ids_is_refused_before_any_aws_call(
        command, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ALLOWED_ACCOUNTS_ENV, "123456789012,12345")
    _no_aws_calls(monkeypatch)

    status = main(_command(command, tmp_path))

    err = capsys.readouterr().err
    named = f"{ALLOWED_ACCOUNTS_ENV}='123456789012,12345'"
    assert (status, named in err, "12-digit AWS account id" in err) == (2, True, True), (
        f"expected exit 2 naming {named} and what is accepted, got {status}: {err}"
    )


def _tagged_group(clients, stack: Stack, name: str = "a") -> str:
    vpc = clients.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])
    return clients.ec2.create_security_group(
        GroupName=f"cli-{stack.run_id}-{name}", Description="test",
        VpcId=vpc["Vpcs"][0]["VpcId"],
        TagSpecifications=[{"ResourceType": "security-group", "Tags": stack.tag_list()}],
    )["GroupId"]


@pytest.mark.parametrize("endpoint", ["aws", "moto server"])
def test_down_refuses_credentials_of_another_account(endpoint, clients, moto_server, tmp_path,
                                                     monkeypatch, capsys):
    """From another account every resource looks already gone; down must not report them
    removed, nor delete the state file, but refuse before any delete call."""
    stack = Stack()
    group = _tagged_group(clients, stack)
    state_file = tmp_path / "s.json"
    state = {"run_id": stack.run_id, "region": REGION, "account_id": "123456789012",
             "endpoint_url": moto_server if endpoint == "moto server" else None,
             "resources": [{"type": "ec2-security-group", "id": group}]}
    write_state(state_file, state)
    monkeypatch.setenv("MOTO_ACCOUNT_ID", "111111111111")
    # Against AWS the other account is even on the allow-list: the state's account decides.
    allow = ["--aws-account", "111111111111"] if endpoint == "aws" else []

    status = main(["down", "--state-file", str(state_file), *allow])

    monkeypatch.delenv("MOTO_ACCOUNT_ID")
    captured = capsys.readouterr()
    assert status == 2, f"expected exit 2, got {status}: {captured.out}{captured.err}"
    assert "123456789012" in captured.err and "111111111111" in captured.err, captured.err
    assert "removed" not in captured.out, captured.out
    assert read_state(state_file) == state, "the state file must be left as it was"
    assert tagged_resources(clients, stack.run_id) == [f"ec2-security-group {group}"]
    clients.ec2.delete_security_group(GroupId=group)


def test_down_removes_a_tagged_resource_its_state_file_does_not_list(clients, tmp_path,
                                                                      capsys):
    """A run killed between a create call and its ledger record: `down` finds the resource
    by the run's tag."""
    stack = Stack()
    recorded, unrecorded = _tagged_group(clients, stack, "a"), _tagged_group(clients, stack, "b")
    state_file = tmp_path / "s.json"
    write_state(state_file, {"run_id": stack.run_id, "region": REGION,
                             "account_id": "123456789012", "endpoint_url": None,
                             "resources": [{"type": "ec2-security-group", "id": recorded}]})

    status = main(["down", "--state-file", str(state_file), "--aws-account", "123456789012"])

    out = capsys.readouterr().out
    assert status == 0 and "removed 2" in out, f"expected both groups removed; got {out}"
    assert tagged_resources(clients, stack.run_id) == [], f"{unrecorded} was left"
    assert not state_file.exists()


@pytest.mark.parametrize("field, value, expected", [
    ("resources", "vpc-1", "resources is a string"),
    ("region", 5, "region 5 is not a region name"),
    ("endpoint_url", 5000, "endpoint URL 5000"),
    ("account_id", 123456789012, "account_id is 123456789012"),
])
def test_down_refuses_a_malformed_state_file_in_one_line(field, value, expected, tmp_path,
                                                         monkeypatch, capsys):
    _no_aws_calls(monkeypatch)
    state_file = tmp_path / "s.json"
    state = {"run_id": "r1", "region": REGION, "endpoint_url": None,
             "account_id": "123456789012", "resources": [], field: value}
    state_file.write_text(json.dumps(state))

    status = main(["down", "--state-file", str(state_file)])

    err = capsys.readouterr().err
    assert (status, err.count("\n")) == (2, 1), f"expected exit 2 and one line, got {status}: {err}"
    assert str(state_file) in err and expected in err, f"expected {expected!r} in {err!r}"
    assert json.loads(state_file.read_text()) == state, "the state file must be left as it was"


def test_down_refuses_a_state_path_that_is_a_directory_in_one_line(tmp_path, capsys):
    status = main(["down", "--state-file", str(tmp_path)])

    err = capsys.readouterr().err
    assert (status, err.count("\n")) == (2, 1), f"expected exit 2 and one line, got {status}: {err}"
    assert f"state file {tmp_path} is a directory" in err, err


@pytest.fixture
def dead_endpoint():
    """The URL of a loopback port where nothing listens: bound (so no one else takes it) but
    not listening, so a connection is refused."""
    import socket

    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


def test_down_against_an_endpoint_that_is_gone_fails_in_one_line_and_keeps_the_state(
        dead_endpoint, tmp_path, monkeypatch, capsys):
    _no_aws_calls(monkeypatch)
    state_file = tmp_path / "s.json"
    state = {"run_id": "r1", "region": REGION, "endpoint_url": dead_endpoint,
             "account_id": "123456789012", "resources": [{"type": "ec2-vpc", "id": "vpc-1"}]}
    write_state(state_file, state)

    status = main(["down", "--state-file", str(state_file)])

    err = capsys.readouterr().err
    assert (status, err.count("\n")) == (1, 1), f"expected exit 1 and one line, got {status}: {err}"
    assert f"cannot connect to endpoint {dead_endpoint}" in err, err
    assert "moto server or sandbox" in err and f"state file {state_file} is kept" in err, err
    assert read_state(state_file) == state, "the state file must be left as it was"


@pytest.mark.parametrize("command", ["up", "sweep"])
def test_an_endpoint_url_where_nothing_listens_is_refused_before_any_aws_call(
        command, dead_endpoint, tmp_path, monkeypatch, capsys):
    _no_aws_calls(monkeypatch)

    status = main([*_command(command, tmp_path), "--endpoint-url", dead_endpoint])

    err = capsys.readouterr().err
    assert (status, f"cannot connect to endpoint {dead_endpoint}" in err) == (1, True), (
        f"expected exit 1 naming {dead_endpoint}, got {status}: {err}")
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("command", ["up", "sweep"])
def test_an_endpoint_url_that_is_not_an_http_url_is_refused(command, tmp_path, monkeypatch,
                                                            capsys):
    _no_aws_calls(monkeypatch)

    status = main([*_command(command, tmp_path), "--endpoint-url", "127.0.0.1:5000"])

    err = capsys.readouterr().err
    assert (status, "endpoint URL '127.0.0.1:5000'" in err, "http or https URL" in err) == (
        2, True, True), f"expected exit 2 naming the URL and the form, got {status}: {err}"


@pytest.mark.parametrize("command", ["up", "sweep"])
@pytest.mark.parametrize("region", ["a b", "mars", ""])
def test_a_region_that_is_not_a_region_name_is_refused_before_any_aws_call(
        command, region, tmp_path, monkeypatch, capsys):
    _no_aws_calls(monkeypatch)
    arguments = _command(command, tmp_path)
    arguments[arguments.index("--region") + 1] = region

    status = main(arguments)

    err = capsys.readouterr().err
    assert (status, f"--region: region {region!r}" in err, "eu-west-1" in err) == (
        2, True, True), f"expected exit 2 naming {region!r} and eu-west-1, got {status}: {err}"
    assert not (tmp_path / "s.json").exists()


def test_a_region_from_the_environment_is_checked_and_named(tmp_path, monkeypatch, capsys):
    _no_aws_calls(monkeypatch)
    monkeypatch.setenv("AWS_REGION", "mars")

    status = main(["sweep"])

    err = capsys.readouterr().err
    assert (status, "AWS_REGION: region 'mars'" in err) == (2, True), (
        f"expected exit 2 naming AWS_REGION='mars', got {status}: {err}")


def _read_only(monkeypatch, directory: Path) -> None:
    """Make DIRECTORY look read-only to access(): tests run as root here, for whom a mode
    of 0555 still grants writing."""
    real = os.access

    def access(path, mode, **kwargs):
        if Path(path) == directory and mode & os.W_OK:
            return False
        return real(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("case, expected", [
    ("a directory", "is a directory"),
    ("in a missing directory", "does not exist"),
    ("under a file", "is not a directory"),
    ("in a read-only directory", "is not writable"),
    ("with a file as its run directory", "exists and is not a directory"),
])
def test_up_refuses_a_state_file_it_cannot_write_before_any_aws_call(
        case, expected, tmp_path, monkeypatch, capsys):
    _no_aws_calls(monkeypatch)
    state_file = tmp_path / "s.json"
    if case == "a directory":
        state_file.mkdir()
    elif case == "in a missing directory":
        state_file = tmp_path / "missing" / "s.json"
    elif case == "under a file":
        (tmp_path / "file").write_text("")
        state_file = tmp_path / "file" / "s.json"
    elif case == "in a read-only directory":
        _read_only(monkeypatch, tmp_path)
    else:
        (tmp_path / "s.json.d").write_text("")

    status = main(["up", "--state-file", str(state_file), "--region", REGION])

    err = capsys.readouterr().err
    assert (status, err.count("\n")) == (2, 1), f"expected exit 2 and one line, got {status}: {err}"
    assert f"state file {state_file}" in err and expected in err, (
        f"expected {expected!r} and the path in the message, got {err}")
    assert not (tmp_path / "missing").exists(), "a missing directory must not be created"


@pytest.mark.parametrize("given, expected", [
    (["--chain-file", "c.pem"], "a chain file (c.pem) applies to an imported certificate only"),
    (["--ca-bundle", "ca.pem"], "a CA bundle (ca.pem) applies to an imported certificate only"),
    (["--certificate-arn", "arn:aws:acm:eu-west-1:123456789012:certificate/abc",
      "--chain-file", "c.pem"], "a chain file (c.pem) applies to an imported certificate only"),
    (["--certificate-file", "/dev/zero", "--key-file", "/dev/zero"],
     "certificate file /dev/zero is not a regular file"),
    (["--domain", ""], "'' is not a DNS name"),
    (["--log-prefix", "a\nb"], "log prefix 'a\\nb' holds whitespace or control characters"),
])
def test_up_refuses_certificate_and_log_options_it_would_ignore_or_aws_would_refuse(
        given, expected, tmp_path, monkeypatch, capsys):
    _no_aws_calls(monkeypatch)

    status = main(["up", "--state-file", str(tmp_path / "s.json"), "--region", REGION, *given])

    err = capsys.readouterr().err
    assert (status, expected in err) == (2, True), (
        f"expected exit 2 and {expected!r}, got {status}: {err}")
    assert not (tmp_path / "s.json").exists()
