"""The GitHub workflows: actionlint passes, and the nightly job keeps its safety rules."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
CI, NIGHTLY = WORKFLOWS / "ci.yml", WORKFLOWS / "nightly.yml"
LINTER = ROOT / "node_modules" / "@tktco" / "node-actionlint"
INSTALL_HINT = "run `npm ci --no-audit --no-fund` in the repository root"

# Run through `node -` (the script on standard input): under `node -e` node exposes its
# built-in modules as globals, the Go runtime of the WebAssembly build then finds a real
# `fs` whose asynchronous stat() never calls back inside a synchronous call, and deadlocks.
# The linting module is loaded by its file path: the package's entry point also loads its
# terminal formatter, whose dependency (chalk 5) is an ES module older node cannot require.
_ACTIONLINT = """
const { readFileSync } = require("node:fs");
const { join } = require("node:path");
const { runLint } = require(join(process.argv[2], "build", "run-lint.js"));
(async () => {
  const found = [];
  for (const path of process.argv.slice(3)) {
    for (const error of await runLint(readFileSync(path, "utf8"), path)) {
      found.push({ path, ...error });
    }
  }
  process.stdout.write(JSON.stringify(found));
  process.exit(0);
})();
"""


def load(path: Path) -> dict:
    """A workflow as PyYAML reads it, with YAML 1.1's boolean `on` key put back as "on"."""
    workflow = yaml.safe_load(path.read_text())
    if True in workflow:
        workflow["on"] = workflow.pop(True)
    return workflow


def actionlint(*paths: Path) -> list[dict]:
    """actionlint's findings for PATHS: dicts with path, line, column, kind, message."""
    node = shutil.which("node")
    assert node, f"node is not on PATH; actionlint runs through it ({INSTALL_HINT})"
    assert LINTER.is_dir(), f"{LINTER} is missing; {INSTALL_HINT}"
    done = subprocess.run([node, "-", str(LINTER), *map(str, paths)], input=_ACTIONLINT,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"actionlint crashed (exit {done.returncode}): {done.stderr}"
    return json.loads(done.stdout)


def job(workflow: dict) -> dict:
    (only,) = workflow["jobs"].values()
    return only


def step_running(steps: list[dict], command: str) -> tuple[int, dict]:
    """The index and step whose `run` script contains COMMAND; fails when none does."""
    for index, step in enumerate(steps):
        if command in step.get("run", ""):
            return index, step
    pytest.fail(f"no step runs {command!r}; steps: {[s.get('name') for s in steps]}")


def step_using(steps: list[dict], action: str) -> tuple[int, dict]:
    for index, step in enumerate(steps):
        if step.get("uses", "").startswith(action + "@"):
            return index, step
    pytest.fail(f"no step uses {action}; steps: {[s.get('name') for s in steps]}")


@pytest.fixture(scope="module")
def findings(tmp_path_factory) -> dict[str, list[dict]]:
    """actionlint's findings per file name, for both workflows and a broken copy of the
    nightly one (a reference to a step id that does not exist), in one run of the linter:
    loading the WebAssembly module is most of its cost."""
    broken = tmp_path_factory.mktemp("actionlint") / "broken.yml"
    text = NIGHTLY.read_text().replace('"$SSL_POLICY"', '"${{ steps.nope.outputs.policy }}"')
    assert text != NIGHTLY.read_text(), "the broken copy must differ from nightly.yml"
    broken.write_text(text)
    by_file: dict[str, list[dict]] = {path.name: [] for path in (CI, NIGHTLY, broken)}
    for finding in actionlint(CI, NIGHTLY, broken):
        by_file[Path(finding["path"]).name].append(finding)
    return by_file


@pytest.mark.parametrize("name", [CI.name, NIGHTLY.name])
def test_actionlint_passes(findings, name):
    found = findings[name]
    assert found == [], "actionlint findings:\n" + "\n".join(
        f"{name}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in found)


def test_actionlint_reports_an_undefined_step_output(findings):
    # Proves the check above can fail.
    messages = [f["message"] for f in findings["broken.yml"]]
    assert any("nope" in message for message in messages), (
        f"expected a finding about step 'nope', got {messages}")


def secret_leaks(workflow: dict) -> list[str]:
    """Steps that could print a secret: `${{ secrets.` inside a run script (the runner
    writes the value into the script file, and log masking hides only exact matches, not a
    transformed or partial value), or shell tracing (`set -x`) in a step whose environment
    carries a secret."""
    found = []
    inherited = json.dumps(workflow.get("env", {}))
    for job_name, body in workflow["jobs"].items():
        job_env = inherited + json.dumps(body.get("env", {}))
        for step in body.get("steps", []):
            name = f"{job_name}/{step.get('name', step.get('uses', '?'))}"
            script = step.get("run", "")
            if re.search(r"\$\{\{\s*secrets\.", script):
                found.append(f"{name}: expands a secret inside its run script")
            env = job_env + json.dumps(step.get("env", {}))
            tracing = re.search(r"set\s+-[a-z]*x|set\s+-o\s+xtrace|bash\s+-[a-z]*x", script)
            if tracing and "secrets." in env:
                found.append(f"{name}: traces commands (set -x) with a secret in its env")
    return found


@pytest.mark.parametrize("path", [CI, NIGHTLY], ids=lambda p: p.name)
def test_no_step_echoes_a_secret(path):
    assert secret_leaks(load(path)) == [], f"{path.name} steps that could print a secret"


def test_secret_check_finds_both_kinds_of_leak():
    workflow = {"jobs": {"j": {"env": {"TOKEN": "${{ secrets.TOKEN }}"}, "steps": [
        {"name": "echo", "run": "echo ${{ secrets.TOKEN }}"},
        {"name": "trace", "run": "set -eux\ncurl -H \"$TOKEN\" x"},
    ]}}}
    assert secret_leaks(workflow) == [
        "j/echo: expands a secret inside its run script",
        "j/trace: traces commands (set -x) with a secret in its env",
    ]


def test_nightly_uses_only_short_lived_credentials_from_oidc():
    workflow = load(NIGHTLY)
    assert workflow["permissions"] == {"id-token": "write", "contents": "read"}
    _, step = step_using(job(workflow)["steps"], "aws-actions/configure-aws-credentials")
    given = step["with"]
    for key in ("role-to-assume", "aws-region", "allowed-account-ids"):
        assert given.get(key, "").startswith("${{ vars."), (
            f"{key}: expected a repository variable (vars.), got {given.get(key)!r}")
    text = NIGHTLY.read_text()
    for key in ("aws-access-key-id", "aws-secret-access-key", "AWS_SECRET_ACCESS_KEY"):
        assert key not in text, f"nightly.yml mentions {key}: long-lived keys are not used"


def test_nightly_runs_the_suite_against_the_allowed_account():
    _, step = step_running(job(load(NIGHTLY))["steps"], "python -m pytest -m e2e")
    script = step["run"]
    for part in ("--target aws", '--region "$AWS_REGION"', '--aws-account "$ALLOWED_ACCOUNT"',
                 "--junit-xml"):
        assert part in script, f"the suite step lacks {part!r}: {script!r}"


def test_nightly_sweeps_under_an_always_condition_after_the_suite():
    steps = job(load(NIGHTLY))["steps"]
    suite_index, _ = step_running(steps, "python -m pytest -m e2e")
    sweep_index, sweep = step_running(steps, "python -m infra sweep")
    assert sweep_index > suite_index, "the sweep must come after the suite"
    assert "always()" in str(sweep.get("if", "")), (
        f"the sweep step must run even after a failure or cancel; its if: {sweep.get('if')!r}")
    for part in ("--older-than 0s", "--yes", "--fail-if-found", '--region "$AWS_REGION"'):
        assert part in sweep["run"], f"the sweep step lacks {part!r}"


def test_nightly_suite_step_times_out_before_the_job_leaving_time_to_sweep():
    body = job(load(NIGHTLY))
    _, suite = step_running(body["steps"], "python -m pytest -m e2e")
    _, sweep = step_running(body["steps"], "python -m infra sweep")
    job_limit, suite_limit = body["timeout-minutes"], suite["timeout-minutes"]
    sweep_limit = sweep["timeout-minutes"]
    assert suite_limit < job_limit, f"suite {suite_limit} min, job {job_limit} min"
    assert suite_limit + sweep_limit < job_limit, (
        f"suite {suite_limit} + sweep {sweep_limit} min must fit the job's {job_limit} min")


def test_nightly_runs_one_at_a_time_without_cancelling():
    assert load(NIGHTLY)["concurrency"] == {"group": "nightly", "cancel-in-progress": False}


def test_nightly_uploads_results_even_after_a_failure():
    steps = job(load(NIGHTLY))["steps"]
    index, upload = step_using(steps, "actions/upload-artifact")
    assert "always()" in str(upload.get("if", "")), f"upload if: {upload.get('if')!r}"
    assert index == len(steps) - 1, "the upload must be the last step"


def test_ci_installs_like_the_readme_then_runs_unit_and_local_suite_and_uploads():
    steps = job(load(CI))["steps"]
    _, python = step_using(steps, "actions/setup-python")
    assert str(python["with"]["python-version"]) == "3.11"
    install, _ = step_running(steps, ".ci/install")
    unit, _ = step_running(steps, "python -m pytest -m unit")
    e2e, e2e_step = step_running(steps, "python -m pytest -m e2e")
    upload, upload_step = step_using(steps, "actions/upload-artifact")
    assert install < unit < e2e < upload, "expected install, unit, e2e, upload"
    for part in ("--target local", "--junit-xml out/", "--report out/", "--log-download out/"):
        assert part in e2e_step["run"], f"the e2e step lacks {part!r}: {e2e_step['run']!r}"
    assert upload_step["with"]["path"] == "out/" and "always()" in str(upload_step.get("if"))
    script = (ROOT / ".ci" / "install").read_text()
    for part in ("pip install", "-r requirements.txt", "npm ci", "chromium"):
        assert part in script, f".ci/install lacks {part!r}"


def test_nightly_uploads_the_report_and_the_log_objects_it_found():
    body = job(load(NIGHTLY))
    _, suite = step_running(body["steps"], "python -m pytest -m e2e")
    for part in ('--report "$OUT/', '--log-download "$OUT/', '--junit-xml "$OUT/'):
        assert part in suite["run"], f"the suite step lacks {part!r}: {suite['run']!r}"
    _, upload = step_using(body["steps"], "actions/upload-artifact")
    assert upload["with"]["path"] == "${{ env.OUT }}/" and body["env"]["OUT"] == "out"


def _options(script: str, command: str) -> set[str]:
    """The `--flags` given to COMMAND in a run script (continuation lines joined)."""
    joined = script.replace("\\\n", " ")
    found = set()
    for match in re.finditer(re.escape(command) + r"([^\n|;&]*)", joined):
        found |= set(re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", match.group(1)))
    return found


def _help(*arguments: str) -> str:
    done = subprocess.run([sys.executable, *arguments, "--help"], cwd=ROOT, text=True,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, f"{arguments} --help failed: {done.stderr}"
    return done.stdout


def test_every_option_the_workflows_pass_exists():
    scripts = [s.get("run", "") for path in (CI, NIGHTLY) for s in job(load(path))["steps"]]
    commands = {"python -m pytest": ("-m", "pytest"),
                "python -m infra sweep": ("-m", "infra", "sweep")}
    for command, arguments in commands.items():
        used = set().union(*(_options(script, command) for script in scripts))
        assert used, f"no workflow passes options to {command}"
        known = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", _help(*arguments)))
        assert used <= known, f"{command} does not know {sorted(used - known)}"


# ---- the sweep step's verdict, run as GitHub would run it, against a moto server -----------


@pytest.fixture(scope="module")
def moto_url():
    """A moto server on 127.0.0.1 shared by the sweep tests (each leaves the region clean),
    with fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "eu-west-1", "AWS_CONFIG_FILE": "/dev/null",
                            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def run_sweep_step(moto_url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """The nightly's sweep script under `bash -eo pipefail` (GitHub's `shell: bash`), with a
    `python` on PATH that adds `--endpoint-url` so every call goes to the moto server."""
    workflow = load(NIGHTLY)
    assert workflow["defaults"]["run"]["shell"] == "bash", "the verdict relies on pipefail"
    _, step = step_running(job(workflow)["steps"], "python -m infra sweep")
    shims = tmp_path / "bin"
    shims.mkdir()
    shim = shims / "python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@" --endpoint-url "{moto_url}"\n')
    shim.chmod(0o755)
    script = tmp_path / "sweep.sh"
    script.write_text(step["run"])
    env = dict(os.environ, PATH=f"{shims}{os.pathsep}{os.environ['PATH']}",
               AWS_REGION="eu-west-1", ALLOWED_ACCOUNT="123456789012", OUT=str(tmp_path / "out"))
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_sweep_step_passes_when_the_region_is_clean(moto_url, tmp_path):
    done = run_sweep_step(moto_url, tmp_path)
    assert done.returncode == 0, f"expected exit 0 on a clean region; got {done.returncode}:\n"\
        f"{done.stdout}{done.stderr}"
    assert "::error::" not in done.stdout


def test_sweep_step_fails_the_job_when_it_had_to_remove_a_leftover(moto_url, tmp_path):
    from infra.stack import PROJECT, TAG_PROJECT, TAG_RUN_ID

    ec2 = boto3.client("ec2", region_name="eu-west-1", endpoint_url=moto_url)
    tags = [{"Key": TAG_PROJECT, "Value": PROJECT}, {"Key": TAG_RUN_ID, "Value": "leaked01"}]
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16", TagSpecifications=[
        {"ResourceType": "vpc", "Tags": tags}])["Vpc"]["VpcId"]

    done = run_sweep_step(moto_url, tmp_path)

    assert done.returncode == 1, f"expected exit 1 after sweeping; got {done.returncode}:\n"\
        f"{done.stdout}{done.stderr}"
    assert "::error::the run left resources behind" in done.stdout, done.stdout
    remaining = [v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]]
    assert vpc not in remaining, f"the sweep step should have removed {vpc}"
