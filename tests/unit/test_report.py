"""The conformance report: the policy matrix from real scans, the three writers, the plugin."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fixtures.conformance import TIMINGS, CheckOutcomes, write_report
from fixtures.report import STATES, policy_matrix, to_json
from fixtures.report_html import to_html
from fixtures.report_markdown import to_markdown
from fixtures.tls_scan import compare
from infra.policies import PROTOCOLS, ciphers_for_key
from tests.unit import report_support as support

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """Both local servers scanned for real (see tests/unit/report_support.py)."""
    return support.scan_servers(tmp_path_factory.mktemp("report-servers"))


@pytest.fixture(scope="module")
def report(scanned):
    return support.build_report(*scanned)


@pytest.fixture(scope="module")
def document(report):
    return json.loads(to_json(report))


def _findings(difference) -> set:
    return ({(f.protocol, f.cipher, "accepted-not-allowed")
             for f in difference.accepted_not_allowed}
            | {(f.protocol, f.cipher, "allowed-refused") for f in difference.allowed_but_refused})


def _matrix_findings(matrix) -> set:
    cells = {(c.protocol, c.cipher, c.state.replace("not-allowed-accepted",
                                                    "accepted-not-allowed"))
             for c in matrix.differences()}
    protocols = {(c.protocol, None, c.state.replace("not-allowed-accepted",
                                                    "accepted-not-allowed"))
                 for c in matrix.protocols if STATES[c.state].differs}
    return cells | protocols


@pytest.mark.parametrize("port", [support.MATCHING_PORT, support.DIFFERING_PORT])
def test_matrix_differs_exactly_where_the_scan_comparison_does(scanned, port):
    found = scanned[1][port]
    matrix = policy_matrix(found.scan, found.policy, "RSA")
    expected = _findings(compare(found.scan, found.policy, "RSA"))
    assert _matrix_findings(matrix) == expected, (
        f"listener {port}: the matrix's differing cells {sorted(_matrix_findings(matrix), key=str)}"
        f" are not compare()'s findings {sorted(expected, key=str)}")


def test_matrix_marks_the_extra_and_the_missing_cipher(scanned):
    found = scanned[1][support.DIFFERING_PORT]
    matrix = policy_matrix(found.scan, found.policy, "RSA")
    states = {(c.protocol, c.cipher): c.state for c in matrix.cells}
    assert states["TLSv1.2", support.EXTRA_CIPHER] == "not-allowed-accepted", states
    assert states["TLSv1.2", support.MISSING_CIPHER] == "allowed-refused", states
    for cipher in ciphers_for_key(found.policy, "RSA"):
        if cipher != support.MISSING_CIPHER:
            assert states["TLSv1.2", cipher] == "allowed-accepted", (cipher, states)
    assert not any(STATES[s].differs for (p, _), s in states.items() if p != "TLSv1.2"), (
        "only TLS 1.2 cells may differ: the server was changed only there")


def test_matrix_rows_start_with_the_policy_in_priority_order(scanned):
    found = scanned[1][support.MATCHING_PORT]
    matrix = policy_matrix(found.scan, found.policy, "RSA")
    for_key = ciphers_for_key(found.policy, "RSA")
    assert matrix.ciphers[:len(for_key)] == for_key, matrix.ciphers[:len(for_key)]
    assert len(matrix.cells) == len(matrix.ciphers) * len(PROTOCOLS)
    assert [column.protocol for column in matrix.protocols] == list(PROTOCOLS)


def test_cipher_the_client_never_offered_is_untestable_not_refused(scanned):
    found = scanned[1][support.MATCHING_PORT]
    tls12 = found.scan.protocol("TLSv1.2")
    dropped = ciphers_for_key(found.policy, "RSA")[0]
    narrowed = dataclasses.replace(
        found.scan, protocols=tuple(
            dataclasses.replace(p, accepted_ciphers=tuple(c for c in p.accepted_ciphers
                                                          if c != dropped))
            if p is tls12 else p for p in found.scan.protocols))
    matrix = policy_matrix(narrowed, found.policy, "RSA")
    (cell,) = [c for c in matrix.row(dropped) if c.protocol == "TLSv1.2"]
    assert cell.state == "untestable" and cell.accepted is None, cell


def test_json_holds_every_cell_with_counts_and_outcomes(report, document):
    assert document["outcome"] == "failed" and document["exit_status"] == 1, document["outcome"]
    by_port = {listener["port"]: listener for listener in document["listeners"]}
    assert sorted(by_port) == [support.MATCHING_PORT, support.DIFFERING_PORT], sorted(by_port)
    for listener in report.listeners:
        written = by_port[listener.port]["matrix"]
        cells = {(c["protocol"], c["cipher"]): c["state"] for c in written["cells"]}
        assert cells == {(c.protocol, c.cipher): c.state for c in listener.matrix.cells}
        assert len(cells) == len(written["ciphers"]) * len(PROTOCOLS)
        assert written["counts"] == {name: collections.Counter(cells.values())[name]
                                     for name in STATES}, written["counts"]
        assert written["differences"] == sum(STATES[s].differs for s in cells.values())
    assert by_port[support.MATCHING_PORT]["outcome"] == "passed"
    assert by_port[support.DIFFERING_PORT]["outcome"] == "failed"
    assert list(document["timings"]) == list(TIMINGS), list(document["timings"])
    assert set(document["legend"]) == set(STATES)


def test_json_times_the_first_log_object_and_names_entry_differences(document):
    # The connection started 12:00:00.5 (cut to whole seconds, as LastModified is); its
    # object was written at 12:00:04. The entry says 901 bytes sent, the client got 900.
    delay = document["timings"]["first_connection_to_first_log_object"]["seconds"]
    assert delay == 4.0, f"expected 4.0 s, got {delay}"
    (entry,) = document["access_logs"]["entries"]
    assert entry["differences"] == ["sent_bytes"], entry
    assert document["access_logs"]["connections"] == 2, document["access_logs"]
    assert document["timings"]["teardown"]["seconds"] is None


def test_markdown_keeps_hostile_values_inside_their_table_cells(report):
    text = to_markdown(report)
    assert "<script>" not in text, "a value reached the Markdown unescaped"
    (row,) = [line for line in text.splitlines() if "accepted but not allowed" in line]
    assert row.startswith("| test_policy | FAILED | "), row
    cells = row.replace("\\|", "").strip("|").split("|")
    assert len(cells) == 3, f"the failure message broke its table row: {row}"
    assert "&lt;script&gt;" in row and "<br>second line" in row, row
    assert "this client's OpenSSL" in text, "the legend's apostrophe was escaped"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags, self.attributes, self.style = collections.Counter(), set(), []
        self._in_style = False

    def handle_starttag(self, tag, attrs) -> None:
        self.tags[tag] += 1
        self.attributes.update(name for name, _ in attrs)
        self._in_style = tag == "style"

    def handle_endtag(self, tag) -> None:
        self._in_style = False

    def handle_data(self, data) -> None:
        if self._in_style:
            self.style.append(data)


def test_html_is_one_file_that_fetches_nothing_and_escapes_every_value(report):
    page = to_html(report)
    parsed = _Tags()
    parsed.feed(page)
    fetching = {"script", "link", "img", "iframe", "object", "embed", "source", "video",
                "audio", "base", "form", "frame", "picture"}
    assert not fetching & set(parsed.tags), f"tags that load or run something: {parsed.tags}"
    loading = {"src", "href", "srcset", "action", "formaction", "poster", "background"}
    assert not loading & parsed.attributes, f"attributes that load: {parsed.attributes}"
    style = "".join(parsed.style)
    assert style and "url(" not in style and "@import" not in style and "://" not in style
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_html_has_a_grid_cell_for_every_json_cell(report, document):
    class Cells(HTMLParser):
        found = []

        def handle_starttag(self, tag, attrs):
            values = dict(attrs)
            if tag == "td" and "data-state" in values:
                self.found.append((int(values["data-listener"]), values["data-protocol"],
                                   values["data-cipher"], values["data-state"]))

    parser = Cells()
    parser.feed(to_html(report))
    expected = [(listener["port"], c["protocol"], c["cipher"], c["state"])
                for listener in document["listeners"] for c in listener["matrix"]["cells"]]
    assert sorted(parser.found) == sorted(expected)


def test_write_report_writes_the_three_files(report, tmp_path):
    written = write_report(report, tmp_path / "new" / "dir")
    assert sorted(written) == ["report.html", "report.json", "report.md"], written
    assert json.loads(written["report.json"].read_text())["schema"].startswith("nlb-tls-suite")
    assert written["report.md"].read_text().startswith("# NLB TLS conformance report: FAILED")


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        ([("setup", "passed"), ("call", "passed"), ("teardown", "passed")], "passed"),
        ([("setup", "failed")], "error"),
        ([("setup", "passed"), ("call", "failed"), ("teardown", "passed")], "failed"),
        ([("setup", "passed"), ("call", "passed"), ("teardown", "failed")], "error"),
        ([("setup", "skipped")], "skipped"),
        ([("setup", "passed"), ("call", "failed"), ("teardown", "failed")], "failed"),
    ],
)
def test_check_outcome_merges_setup_call_and_teardown(phases, expected):
    outcomes = CheckOutcomes()
    for when, outcome in phases:
        outcomes.add("t.py::test_x[tls443]", "test_x", 443, when, outcome, f"{when} {outcome}",
                     0.5)
    (check,) = outcomes.for_port(443)
    assert check.outcome == expected, f"{phases}: expected {expected}, got {check.outcome}"
    assert check.duration_s == 0.5 * len(phases)
    assert outcomes.for_port(None) == () and outcomes.ports() == [443]


_INNER_TESTS = """
import pytest

pytestmark = pytest.mark.e2e


def test_handshake(tls_listener_port, conformance):
    pass


def test_policy(tls_listener_port):
    assert tls_listener_port != 9443, "listener 9443 | broke on purpose"


@pytest.mark.skip(reason="needs the suite's own backends")
def test_health(tls_listener_port):
    pass


def test_every_listener_is_under_test():
    pass
"""


def test_report_option_writes_each_listeners_outcome_when_tests_fail(tmp_path):
    # A whole pytest session with the e2e plugin and --report, whose tests need no stack:
    # the plugin must collect each outcome by listener and write the files at the end.
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(_INNER_TESTS))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    e2e: inner\n")
    out = tmp_path / "out"
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "fixtures.e2e", "-p", "no:cacheprovider",
         "--report", str(out), "-q", "test_inner.py"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, f"expected exit 1 (a test failed):\n{done.stdout}{done.stderr}"
    document = json.loads((out / "report.json").read_text())
    by_port = {listener["port"]: listener for listener in document["listeners"]}
    outcomes = {port: {c["name"]: c["outcome"] for c in listener["checks"]}
                for port, listener in by_port.items()}
    assert outcomes == {
        443: {"test_handshake": "passed", "test_policy": "passed", "test_health": "skipped"},
        9443: {"test_handshake": "passed", "test_policy": "failed", "test_health": "skipped"},
    }, outcomes
    (failed,) = [c for c in by_port[9443]["checks"] if c["outcome"] == "failed"]
    assert "listener 9443 | broke on purpose" in failed["message"], failed
    (skipped,) = [c for c in by_port[443]["checks"] if c["outcome"] == "skipped"]
    assert skipped["message"] == "needs the suite's own backends", skipped
    assert [c["outcome"] for c in document["suite_checks"]] == ["passed"]
    assert document["outcome"] == "failed" and document["exit_status"] == 1
    assert (out / "report.html").read_text().count('class="listener"') == 2
    assert str(out / "report.md") in done.stdout, done.stdout
