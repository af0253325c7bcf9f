"""The e2e modules on the aws target against a loopback moto server: the run facts reach the
JUnit report, and the tests that need traffic skip naming the endpoint."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from fixtures.e2e_stack import ROOT

pytestmark = pytest.mark.unit

_FACTS = ("target", "region", "load_balancer_arn", "ssl_policy", "certificate_arn")


def test_an_aws_run_against_moto_records_its_facts_and_skips_the_traffic_tests(
    moto_server, tmp_path
):
    report = tmp_path / "junit.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "e2e", "tests/e2e", "-p", "no:cacheprovider",
         "--target", "aws", "--endpoint-url", moto_server, "--region", "eu-west-1",
         "--log-wait", "0", f"--junit-xml={report}", "-q"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=240,
    )
    output = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, f"expected the run to pass, got exit {done.returncode}:\n{output}"

    suite = ElementTree.parse(report).getroot().find("testsuite")
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    expected = {"target": "aws", "region": "eu-west-1", "ssl_policy": "ELBSecurityPolicy-2016-08"}
    got = {name: properties.get(name) for name in _FACTS}
    assert {k: got[k] for k in expected} == expected \
        and got["load_balancer_arn"].startswith("arn:aws:elasticloadbalancing:eu-west-1:") \
        and got["certificate_arn"].startswith("arn:aws:acm:eu-west-1:"), (
            f"expected the run facts {expected} and the ARNs as testsuite properties, got "
            f"{properties}"
        )

    skipped = {case.get("name"): case.find("skipped").get("message", "")
               for case in suite.iter("testcase") if case.find("skipped") is not None}
    traffic = [name for name in skipped if name.startswith("test_get_")]
    assert traffic, f"expected the forwarding tests skipped, got skips {sorted(skipped)}"
    for name in traffic:
        assert moto_server in skipped[name] and "carry no traffic" in skipped[name], (
            f"expected {name} skipped because {moto_server} carries no traffic, got "
            f"{skipped[name]!r}"
        )
