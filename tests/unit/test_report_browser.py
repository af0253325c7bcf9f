"""The HTML conformance report as headless Chromium renders it, checked against report.json."""

# Playwright drives the system's Chromium (Debian package `chromium`, which .ci/install
# installs when it is absent); Playwright's own browser download is never used. The page is
# opened from a file:// URL with every other request recorded, so a report that fetched
# anything (a font, a script, a style sheet) fails here.

from __future__ import annotations

import json
import os
import shutil

import pytest

from fixtures.conformance import write_report
from fixtures.report import STATES
from tests.unit import report_support as support

pytestmark = pytest.mark.unit

BROWSER_VARIABLE = "NLB_TLS_SUITE_CHROMIUM"
_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# The flags this machine's closed network needs: no background fetches, no first-run work.
_FLAGS = ["--disable-background-networking", "--disable-component-update", "--no-first-run",
          "--disable-sync", "--disable-quic", "--disable-gpu"]
_READ_CELLS = """els => els.map(e => ({
    listener: Number(e.dataset.listener), protocol: e.dataset.protocol,
    cipher: e.dataset.cipher, state: e.dataset.state, text: e.textContent.trim(),
    background: getComputedStyle(e).backgroundColor, visible: e.checkVisibility(),
}))"""


def _chromium() -> str:
    chosen = os.environ.get(BROWSER_VARIABLE)
    if chosen:
        return chosen
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"no Chromium found ({', '.join(_CANDIDATES)} on PATH): run .ci/install, or "
                f"`apt-get install chromium`, or set {BROWSER_VARIABLE} to a Chromium binary")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """report.json and what Chromium rendered of report.html: the grid's cells, the
    legend's keys, and every URL the page requested."""
    from playwright.sync_api import sync_playwright

    directory = tmp_path_factory.mktemp("report")
    written = write_report(support.build_report(*support.scan_servers(directory)),
                           directory / "out")
    document = json.loads(written["report.json"].read_text())
    page_url = written["report.html"].as_uri()
    requests, errors = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=_FLAGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda message: errors.append(message.text)
                    if message.type == "error" else None)
            page.goto(page_url)
            cells = page.eval_on_selector_all("td.cell", _READ_CELLS)
            legend = page.eval_on_selector_all(
                ".legend span.key", "els => els.map(e => getComputedStyle(e).backgroundColor)")
            title = page.title()
        finally:
            browser.close()
    return {"document": document, "cells": cells, "legend": legend, "title": title,
            "requests": requests, "errors": errors, "url": page_url}


def test_page_requests_nothing_but_itself(rendered):
    assert rendered["requests"] == [rendered["url"]], rendered["requests"]
    assert rendered["errors"] == [], rendered["errors"]
    assert rendered["title"] == "NLB TLS conformance: FAILED", rendered["title"]


def test_every_cell_of_report_json_is_drawn_once_with_its_state_and_symbol(rendered):
    drawn = {}
    for cell in rendered["cells"]:
        key = (cell["listener"], cell["protocol"], cell["cipher"])
        assert key not in drawn, f"{key} drawn twice"
        drawn[key] = cell
    expected = {(listener["port"], c["protocol"], c["cipher"]): c["state"]
                for listener in rendered["document"]["listeners"]
                for c in listener["matrix"]["cells"]}
    assert set(drawn) == set(expected), (
        f"cells in report.json but not drawn: {sorted(set(expected) - set(drawn))[:5]}; "
        f"drawn but not in report.json: {sorted(set(drawn) - set(expected))[:5]}")
    legend = rendered["document"]["legend"]
    for key, state in expected.items():
        assert drawn[key]["state"] == state, f"{key}: drawn as {drawn[key]['state']}, json {state}"
        assert drawn[key]["text"] == legend[state]["symbol"], (key, drawn[key]["text"])


def test_each_state_has_one_colour_and_the_four_verdicts_differ(rendered):
    colours = {}
    for cell in rendered["cells"]:
        colours.setdefault(cell["state"], set()).add(cell["background"])
    assert all(len(found) == 1 for found in colours.values()), colours
    verdicts = ("allowed-accepted", "allowed-refused", "not-allowed-refused",
                "not-allowed-accepted")
    shown = {state: colours[state].pop() for state in verdicts}
    assert len(set(shown.values())) == len(verdicts), f"two verdicts share a colour: {shown}"
    listeners = len(rendered["document"]["listeners"])
    assert len(rendered["legend"]) == len(STATES) * listeners, "one legend per listener's grid"
    assert set(shown.values()) <= set(rendered["legend"]), "a cell colour is not in the legend"


def test_cells_that_differ_from_the_policy_are_visible_without_a_click(rendered):
    differing = [c for c in rendered["cells"] if STATES[c["state"]].differs]
    listeners = {c["listener"] for c in differing}
    assert listeners == {support.DIFFERING_PORT}, f"differences drawn for {listeners}"
    hidden = [c for c in differing if not c["visible"]]
    assert not hidden, f"differing cells hidden in a collapsed section: {hidden}"
    folded = [c for c in rendered["cells"] if not c["visible"]]
    quiet = {"not-allowed-refused", "not-applicable"}
    assert folded and all(c["state"] in quiet for c in folded), (
        "only rows refused everywhere, as the policy requires, may be folded away")
    for port in (support.MATCHING_PORT, support.DIFFERING_PORT):
        visible = [c for c in rendered["cells"] if c["listener"] == port and c["visible"]]
        assert any(c["state"] == "allowed-accepted" for c in visible), f"no grid for {port}"
