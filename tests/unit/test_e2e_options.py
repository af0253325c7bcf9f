"""The e2e plugin's options: every bad value is a usage error naming it and what is accepted."""

# Each case runs a pytest session in-process (pytester) with only the plugin loaded: the
# errors are raised while pytest configures, before any collection, so a case costs a few
# milliseconds. The --stack-state cases run pytest from the repository root in a subprocess,
# because where the state file lies decides how pytest reads the command line.

import json
import subprocess
import sys

import pytest

from fixtures.e2e_stack import ROOT
from infra.aws import ALLOWED_ACCOUNTS_ENV

pytestmark = pytest.mark.unit

USAGE_ERROR = pytest.ExitCode.USAGE_ERROR


def _state_file(directory, target="local") -> str:
    """A state file of a fake stack with TLS listeners on 443 and 9443 (nothing runs)."""
    path = directory / "s.json"
    path.write_text(json.dumps({
        "run_id": "fake01", "region": "eu-west-1", "target": target, "resources": [],
        "status": "ready",
        "load_balancer": {"arn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:"
                                 "loadbalancer/net/fake/0123456789abcdef"},
        "listeners": [{"port": 443, "protocol": "TLS"}, {"port": 9443, "protocol": "TLS"}],
    }))
    return str(path)


def _refused(pytester, *arguments: str) -> str:
    result = pytester.runpytest("-p", "fixtures.e2e", *arguments)
    output = "\n".join(result.outlines + result.errlines)
    assert result.ret == USAGE_ERROR, (
        f"expected {list(arguments)} to end in a usage error (exit {USAGE_ERROR:d}), got exit "
        f"{result.ret}:\n{output}"
    )
    return output


@pytest.mark.parametrize("arguments, named, accepted", [
    (["--target", "bogus"], "'bogus'", "'local', 'aws'"),
    (["--log-wait", "-1"], "'-1'", "finite number of seconds >= 0"),
    (["--log-wait", "nan"], "'nan'", "finite number of seconds >= 0"),
    (["--log-wait", "inf"], "'inf'", "finite number of seconds >= 0"),
    (["--log-wait", "soon"], "'soon'", "finite number of seconds >= 0"),
    (["--stack-state", "/nonexistent/s.json"], "/nonexistent/s.json",
     "expected a state file"),
    (["--endpoint-url", "http://127.0.0.1:9"], "http://127.0.0.1:9",
     "accepted only with --target aws"),
    (["--certificate-arn", "arn:aws:acm:eu-west-1:123456789012:certificate/x"],
     "certificate/x", "accepted only with --target aws"),
    (["--existing-nlb", "some-nlb"], "some-nlb", "accepted only with --target aws"),
    (["--aws-account", "12345"], "'12345'", "12-digit AWS account id"),
    (["--ssl-policy", "Bogus"], "'Bogus'", "accepted: ELBSecurityPolicy-2015-05"),
    (["--region", "mars-north-1x"], "'mars-north-1x'", "expected e.g. eu-west-1"),
    (["--log-prefix", "logs/"], "'logs/'", "accepted a prefix without leading or trailing"),
    (["--log-prefix", "AWSLogs"], "'AWSLogs'", "accepted any prefix without it"),
])
def test_a_bad_option_value_is_a_usage_error_naming_it(pytester, arguments, named, accepted):
    output = _refused(pytester, *arguments)
    assert named in output and accepted in output, (
        f"expected the error for {arguments} to name {named} and say {accepted!r}, got:\n"
        f"{output}"
    )


def test_an_allow_list_variable_that_is_not_12_digit_ids_is_a_usage_error_on_aws(
    pytester, monkeypatch
):
    monkeypatch.setenv(ALLOWED_ACCOUNTS_ENV, "acct-prod")
    output = _refused(pytester, "--target", "aws")
    named = f"{ALLOWED_ACCOUNTS_ENV}='acct-prod'"
    assert named in output and "12-digit AWS account id" in output, (
        f"expected the error to name {named} and say what is accepted, got:\n{output}"
    )


def test_keep_stack_with_a_stack_state_file_is_a_usage_error(pytester, tmp_path):
    state = _state_file(tmp_path)
    output = _refused(pytester, "--keep-stack", f"--stack-state={state}")
    assert f"--keep-stack with --stack-state {state}" in output and "always left up" in output, (
        f"expected the error to name --keep-stack with {state} and why, got:\n{output}"
    )


def test_report_naming_an_existing_file_is_a_usage_error(pytester, tmp_path):
    existing = tmp_path / "report.txt"
    existing.write_text("not a directory")
    output = _refused(pytester, "--report", str(existing))
    assert f"--report {existing}" in output and "expected a directory" in output, (
        f"expected the error to name {existing} and ask for a directory, got:\n{output}"
    )


@pytest.mark.parametrize("flag", ["--report", "--log-download"])
def test_a_directory_that_cannot_be_made_is_a_usage_error_before_the_run(pytester, tmp_path,
                                                                         flag):
    # Under a file: no user, root included, can make it. Found at the end of the session,
    # it would lose the run's results.
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    wanted = blocker / "out"
    output = _refused(pytester, flag, str(wanted))
    assert f"{flag} {wanted}: cannot write there" in output, (
        f"expected the error to name {wanted} and say it cannot be written, got:\n{output}")


def test_report_directory_is_made_when_missing(pytester, tmp_path):
    wanted = tmp_path / "new" / "report"
    pytester.makepyfile(test_nothing="""
        import pytest

        @pytest.mark.unit
        def test_nothing():
            pass
    """)
    result = pytester.runpytest("-p", "fixtures.e2e", "--report", str(wanted), "-m", "unit")
    assert wanted.is_dir() and list(wanted.iterdir()) != [], result.stdout.str()


@pytest.mark.parametrize("selection", [(), ("-m", "e2e"), ("-m", "unit or e2e"),
                                       ("-m", "not unit")])
def test_under_xdist_the_e2e_tests_refuse_to_run(pytester, selection):
    output = _refused(pytester, "-n", "2", *selection)
    assert "refuse pytest-xdist" in output and "-m unit -n 4" in output, (
        f"expected the xdist refusal saying what to do, got:\n{output}"
    )


@pytest.mark.parametrize("selection", ["unit", "not e2e", "unit and not e2e"])
def test_under_xdist_the_unit_tests_alone_may_run(pytester, monkeypatch, selection):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the workers import fixtures.e2e too
    pytester.makepyfile(test_alone="""
        import pytest

        @pytest.mark.unit
        def test_unit():
            pass
    """)
    pytester.makeini("[pytest]\nmarkers =\n    unit: u\n    e2e: e\n")
    result = pytester.runpytest_subprocess("-p", "fixtures.e2e", "-p", "no:cacheprovider",
                                           "-n", "2", "-m", selection)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.OK and "1 passed" in output, output


def test_under_xdist_a_bad_mark_expression_is_pytests_usage_error(pytester):
    # Left to the workers, the parse error reaches xdist 3.8's controller as an INTERNALERROR
    # traceback, with or without this plugin; the plugin reports it before workers start.
    output = _refused(pytester, "-n", "2", "-m", "unit and")
    expected = "Wrong expression passed to '-m': unit and: at column 9"
    assert expected in output and "INTERNALERROR" not in output, (
        f"expected pytest's usage error {expected!r} and no traceback, got:\n{output}"
    )


def test_sigterm_during_the_session_runs_the_finalizers_as_sigint_would(pytester, monkeypatch):
    # pytest runs finalizers on KeyboardInterrupt only; a SIGTERM left at its default kills
    # the process with the stack still up.
    marker = pytester.path / "finalized"
    pytester.makepyfile(test_cancelled=f"""
        import os, signal, time
        import pytest

        @pytest.fixture(scope="session")
        def stack():
            yield
            open({str(marker)!r}, "w").write("torn down")

        def test_cancelled(stack):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
    """)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    result = pytester.runpytest_subprocess("-p", "fixtures.e2e", "-p", "no:cacheprovider",
                                           timeout=60)
    output = "\n".join(result.outlines + result.errlines)
    assert (result.ret, marker.exists()) == (pytest.ExitCode.INTERRUPTED, True), (
        f"expected SIGTERM to interrupt the session (exit 2) after its finalizers ran, got "
        f"exit {result.ret}, finalizer ran: {marker.exists()}:\n{output}"
    )


def _collect_from_root(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "e2e", "--collect-only", "-q",
         "-p", "no:cacheprovider", *arguments],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_stack_state_outside_the_repository_given_with_equals_is_read(tmp_path):
    state = _state_file(tmp_path)
    # tests/e2e only to spare collecting the unit tests; the form reads alike without it.
    done = _collect_from_root(f"--stack-state={state}", "tests/e2e")
    assert done.returncode == 0 and "[tls9443]" in done.stdout, (
        f"expected the e2e tests collected over the state file's listeners (443, 9443), got "
        f"exit {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )


def test_stack_state_outside_the_repository_given_with_a_space_is_read_with_a_test_path(
    tmp_path
):
    # With tests/e2e named, pytest finds pytest.ini from that path, so the plugin loads.
    state = _state_file(tmp_path)
    done = _collect_from_root("tests/e2e", "--stack-state", state)
    assert done.returncode == 0 and "[tls9443]" in done.stdout, (
        f"expected the e2e tests collected over the state file's listeners (443, 9443), got "
        f"exit {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )


@pytest.mark.xfail(strict=True, reason=(
    "pytest 9.2 guesses the rootdir from the first parse of the command line, before any "
    "plugin, conftest or ini file is read: the separate FILE is taken for a test path, the "
    "rootdir becomes its folder, pytest.ini (and with it `-p fixtures.e2e`) is never read, "
    "and --stack-state is an unknown option. Fixing it needs the plugin installed as a "
    "pytest11 entry point; until then the option's help says to write --stack-state=FILE "
    "or to name tests/e2e"))
def test_stack_state_outside_the_repository_given_with_a_space_is_read(tmp_path):
    state = _state_file(tmp_path)
    done = _collect_from_root("--stack-state", state)
    assert done.returncode == 0 and "[tls9443]" in done.stdout, (
        f"expected the e2e tests collected over the state file's listeners (443, 9443), got "
        f"exit {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )
