"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium against a live
server with a running canary and an A/B test. Every page is loaded and checked for the right
versions and numbers, an alias is moved through the page and found in the registry and its audit
log, a wrong token is refused, and the browser's console stays free of errors. Screenshots of each
page are saved under build/test-artifacts/dashboard (or $LEPTON_TEST_ARTIFACTS/dashboard)."""
import os
import shutil
import threading
from pathlib import Path

import pytest
import requests
import torch

import lepton
from conftest import AddN, wait_for

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("LEPTON_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts")) / "dashboard"
TOKEN = "browser-token"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# axe-core, the accessibility checker, from the dashboard's build tools (web/package-lock.json).
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"

# A machine the bootstrap made has Chromium and its driver; only a hand-made one may lack them.
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMEDRIVER) and not os.environ.get("CI"),
    reason="chromium-driver is not installed (scripts/bootstrap installs it)",
)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A registry with lineage and metrics, served with a canary (v1 -> v2, held at its first step)
    and an A/B test, under steady traffic and rewards until the module ends."""
    reg = lepton.Registry(tmp_path_factory.mktemp("dash") / "reg")
    x = torch.zeros(1, 4)
    reg.register("clf", AddN(1), version="v1", example_inputs=x, metrics={"accuracy": 0.91, "loss": 0.30},
                 description="baseline")
    reg.register("clf", AddN(2), version="v2", example_inputs=x, metrics={"accuracy": 0.93, "loss": 0.25},
                 parent="v1", tags={"data": "2026-11"})
    reg.register("clf", AddN(3), version="v3", example_inputs=x, metrics={"accuracy": 0.95, "loss": 0.21},
                 parent="v2")
    reg.set_alias("clf", "production", "v1", reason="first release")
    reg.register("rank", AddN(4), version="r1", example_inputs=x)
    reg.register("rank", AddN(5), version="r2", example_inputs=x, parent="r1")
    canary = {"type": "canary", "stable": "v1", "candidate": "v2", "steps": [0.3, 0.6, 1.0],
              "step_requests": 10**9,
              # Sub-millisecond latencies jitter: only a stall of half a second breaches.
              "guardrails": {"min_requests": 5, "max_latency_ratio": 3, "latency_slack_s": 0.5}}
    ab = {"type": "ab_test", "control": "r1", "treatment": "r2", "min_samples": 10**6}
    server = lepton.serve(reg, port=0, token=TOKEN, threads=1, only=True,
                          models={"clf": {"versions": ["v1", "v2"], "policy": canary},
                                  "rank": {"versions": ["r1", "r2"], "policy": ab}})
    stop = threading.Event()
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]}

    def traffic():
        with requests.Session() as s:
            while not stop.is_set():
                for model in ("clf", "rank"):
                    r = s.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=10)
                    if model == "rank" and r.ok:
                        reply = r.json()
                        reward = 1.0 if reply["model_version"] == "r2" else 0.5
                        s.post(f"{server.url}/v2/lepton/models/rank/feedback", timeout=10,
                               headers={"Authorization": f"Bearer {TOKEN}"},
                               json={"request_id": reply["parameters"]["lepton_request_id"], "reward": reward})
                stop.wait(0.01)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        yield reg, server
    finally:
        stop.set()
        sender.join(timeout=30)
        server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1366,900", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, timeout=30):
    """Waits for `condition`; an element the page re-rendered meanwhile (stale) counts as not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(condition)


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def texts(driver, selector):
    """The rendered text of every match, read in one step in the page, so that a re-render
    between reading one element and the next cannot leave a stale reference."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText.trim())", selector)


def accessibility_violations(driver):
    """What axe-core finds serious or critical on the page as it is now (WCAG 2.1 A and AA:
    contrast, names of controls, keyboard focus, structure)."""
    if not driver.execute_script("return typeof window.axe !== 'undefined'"):
        driver.execute_script(AXE.read_text() + "; window.axe = axe;")
    found = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']},"
        "                   resultTypes: ['violations']})"
        "  .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        "                                          nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))}))))"
        "  .catch(e => done([{id: 'axe failed', impact: 'critical', help: String(e), nodes: []}]));")
    return [v for v in found if v["impact"] in ("serious", "critical")]


def console_errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def sign_in(driver, url, token, actor="dash-tester"):
    driver.get(url)
    field = wait(driver, lambda d: (css(d, "input[name=token]") or [None])[0])
    field.clear()
    field.send_keys(token)
    name = css(driver, "input[name=actor]")[0]
    name.clear()
    name.send_keys(actor)
    css(driver, "form button[type=submit]")[0].click()


def open_page(driver, server, fragment):
    """Loads a page of the dashboard signed in as dash-tester (what signing in keeps)."""
    driver.get(server.ui_url + fragment)
    driver.execute_script("sessionStorage.setItem('lepton.token', arguments[0]);"
                          "sessionStorage.setItem('lepton.actor', 'dash-tester')", TOKEN)
    driver.refresh()


def shot(driver, name):
    """The whole page, not only what the window shows."""
    size = driver.get_window_size()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size["width"], max(size["height"], min(height + 140, 4000)))
    try:
        driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    finally:
        driver.set_window_size(size["width"], size["height"])


def test_a_wrong_token_is_refused_and_nothing_is_shown(live, browser):
    reg, server = live
    browser.delete_all_cookies()
    browser.get(server.ui_url)
    browser.execute_script("sessionStorage.clear()")
    sign_in(browser, server.ui_url, "not-the-token")
    alert = wait(browser, lambda d: (css(d, "[role=alert]") or [None])[0])
    assert "refused this token" in alert.text
    assert not css(browser, "table")  # no data without the token
    shot(browser, "0-refused")
    assert accessibility_violations(browser) == []
    # The refusal is the server's 401, which the console reports; nothing else is an error.
    errors = [e for e in console_errors(browser) if "401" not in e["message"]]
    assert errors == []


def test_overview_lists_the_live_deployments_and_the_registry(live, browser):
    reg, server = live
    sign_in(browser, server.ui_url, TOKEN)
    wait(browser, lambda d: len(css(d, "[data-testid=served] tbody tr")) == 2)
    served = texts(browser, "[data-testid=served] tbody th")
    assert served == ["clf", "rank"]
    row = css(browser, "[data-testid=served] tbody tr")[0].text
    assert "canary" in row and "v1" in row and "v2" in row
    wait(browser, lambda d: len(css(d, "[data-testid=models] tbody tr")) == 2)
    models = css(browser, "[data-testid=models] tbody tr")
    assert models[0].text.startswith("clf 3 v3") and "@production → v1" in models[0].text
    shot(browser, "1-overview")
    assert accessibility_violations(browser) == []
    assert console_errors(browser) == []


def test_the_registry_page_shows_versions_lineage_diff_and_history(live, browser):
    reg, server = live
    open_page(browser, server, "#/registry/clf")
    wait(browser, lambda d: len(css(d, "[data-testid=versions] tbody tr")) == 3)
    rows = {e.get_attribute("data-version"): e.text for e in css(browser, "[data-testid=versions] tbody tr")}
    assert set(rows) == {"v1", "v2", "v3"}
    assert "@production" in rows["v1"] and "0.91" in rows["v1"] and "clf:v1" in rows["v2"]
    assert "data=2026-11" in rows["v2"] and "float32" in rows["v3"]
    # Lineage: one node per version, an edge per parent.
    nodes = css(browser, ".lineage svg g.node")
    assert sorted(n.get_attribute("data-version") for n in nodes) == ["v1", "v2", "v3"]
    assert len(css(browser, ".lineage svg path.edge")) == 2
    # The metric diff, v2 -> v3 by default.
    diff = {r.find_element("css selector", "th").text: r.text for r in css(browser, "[data-testid=diff] tbody tr")}
    assert diff["accuracy"].split()[1:] == ["0.93", "0.95", "▲", "+0.02", "+2.2%"]
    assert diff["loss"].split()[1:] == ["0.25", "0.21", "▼", "-0.04", "-16.0%"]
    history = texts(browser, "[data-testid=history] tbody tr")
    assert any("set_alias" in h and "first release" in h for h in history)
    assert sum("register" in h for h in history) == 3
    shot(browser, "2-registry")
    assert accessibility_violations(browser) == []
    assert console_errors(browser) == []


def test_moving_an_alias_through_the_page_lands_in_the_registry_and_the_audit_log(live, browser):
    from selenium.webdriver.support.ui import Select

    reg, server = live
    open_page(browser, server, "#/registry/clf")
    wait(browser, lambda d: len(css(d, "[data-testid=aliases] tbody tr")) == 1)
    alias = css(browser, "[data-testid=move-alias]")[0]
    alias.clear()
    alias.send_keys("production")
    Select(css(browser, "[data-testid=move-version]")[0]).select_by_value("v3")
    css(browser, "[data-testid=move]")[0].click()
    dialog = wait(browser, lambda d: (css(d, "dialog[open]") or [None])[0])
    assert "v1" in dialog.text and "v3" in dialog.text  # the expected version is shown
    dialog.find_element("css selector", "input[name=reason]").send_keys("v3 wins offline")
    shot(browser, "3-move-alias")
    assert accessibility_violations(browser) == []
    css(browser, "[data-testid=confirm]")[0].click()
    wait_for(lambda: reg.get("clf@production").version == "v3", timeout=30)
    entry = reg.history("clf")[-1]
    assert (entry.action, entry.from_version, entry.to_version) == ("set_alias", "v1", "v3")
    assert entry.actor == "dash-tester (http 127.0.0.1)" and entry.reason == "v3 wins offline"
    # The page reloads what it shows.
    wait(browser, lambda d: "v3" in " ".join(texts(d, "[data-testid=aliases] tbody tr")))
    wait(browser, lambda d: any("v3 wins offline" in t for t in texts(d, "[data-testid=history] tbody tr")))
    assert console_errors(browser) == []


def test_a_move_that_lost_a_race_is_refused_and_says_why(live, browser):
    from selenium.webdriver.support.ui import Select

    reg, server = live
    open_page(browser, server, "#/registry/clf")
    wait(browser, lambda d: "v3" in " ".join(texts(d, "[data-testid=aliases] tbody tr")))
    Select(css(browser, "[data-testid=move-version]")[0]).select_by_value("v2")
    css(browser, "[data-testid=move]")[0].click()
    wait(browser, lambda d: css(d, "dialog[open]"))
    reg.set_alias("clf", "production", "v1", reason="someone else")  # behind the page's back
    css(browser, "[data-testid=confirm]")[0].click()
    alert = wait(browser, lambda d: (css(d, "dialog[open] [role=alert]") or [None])[0])
    assert alert.text.startswith("409")
    assert reg.get("clf@production").version == "v1"
    css(browser, "dialog[open] button[type=button]")[0].click()
    # The refused request is the only console error (the browser reports the 409).
    assert [e for e in console_errors(browser) if "409" not in e["message"]] == []


def test_rolling_back_an_alias_through_the_page(live, browser):
    reg, server = live
    open_page(browser, server, "#/registry/clf")
    wait(browser, lambda d: css(d, "[data-testid=rollback-production]"))
    before = reg.get("clf@production").version
    css(browser, "[data-testid=rollback-production]")[0].click()
    wait(browser, lambda d: css(d, "dialog[open]"))
    css(browser, "dialog[open] input[name=reason]")[0].send_keys("errors up")
    css(browser, "[data-testid=confirm]")[0].click()
    wait_for(lambda: reg.history("clf")[-1].action == "rollback", timeout=30)
    entry = reg.history("clf")[-1]
    assert entry.from_version == before and entry.to_version == reg.get("clf@production").version != before
    assert entry.actor == "dash-tester (http 127.0.0.1)" and entry.reason == "errors up"
    assert console_errors(browser) == []


def test_keyboard_alone_moves_an_alias(live, browser):
    """Tab to the form, choose with the arrow keys, confirm with Enter, as someone without a mouse."""
    from selenium.webdriver.common.keys import Keys

    reg, server = live
    open_page(browser, server, "#/registry/clf")
    wait(browser, lambda d: css(d, "[data-testid=move-version]"))
    target = "v2" if reg.get("clf@production").version != "v2" else "v3"
    field = css(browser, "[data-testid=move-alias]")[0]
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("staging", Keys.TAB)  # into the version list
    active = browser.switch_to.active_element
    assert active.get_attribute("data-testid") == "move-version"
    for _ in range(5):
        if active.get_attribute("value") == target:
            break
        active.send_keys(Keys.ARROW_DOWN)
    assert active.get_attribute("value") == target
    active.send_keys(Keys.TAB)
    active = browser.switch_to.active_element
    assert active.get_attribute("data-testid") == "move"
    active.send_keys(Keys.ENTER)
    wait(browser, lambda d: css(d, "dialog[open]"))
    # The dialog takes the focus; Enter in its reason field confirms.
    reason = browser.switch_to.active_element
    assert reason.get_attribute("name") == "reason"
    reason.send_keys("by keyboard", Keys.ENTER)
    wait_for(lambda: "staging" in reg.aliases("clf"), timeout=30)
    assert reg.get("clf@staging").version == target
    assert reg.history("clf")[-1].reason == "by keyboard"


def test_the_live_page_shows_traffic_the_canary_and_its_guardrails(live, browser):
    reg, server = live
    open_page(browser, server, "#/live/clf")
    wait(browser, lambda d: len(css(d, "[data-testid=live-versions] tbody tr")) == 2)
    assert texts(browser, "[data-testid=policy-name]") == ["canary"]
    assert css(browser, "[data-testid=canary-phase]")[0].text == "ramping"
    assert css(browser, "[data-testid=canary-step]")[0].text == "1"
    # After a few polls: rates and shares per version, and the charts drawn.
    wait(browser, lambda d: len(css(d, ".chart canvas")) >= 5)

    def shares():
        cells = css(browser, "[data-testid=live-versions] tbody tr [data-testid=share]")
        return [float(c.text.rstrip("%")) for c in cells if c.text.endswith("%")]

    wait(browser, lambda d: len(shares()) == 2 and abs(sum(shares()) - 100) < 0.1)
    v1, v2 = shares()
    assert 0 < v2 < 70 and v1 > v2  # the first step sends 30% to the candidate
    requests_shown = [int(x) for x in texts(browser, "[data-testid=live-versions] [data-testid=requests]")]
    status = requests.get(f"{server.url}/v2/lepton/models/clf/stats",
                          headers={"Authorization": f"Bearer {TOKEN}"}).json()
    served = [v["requests"] for v in status["versions"]]
    assert all(0 < shown <= now for shown, now in zip(requests_shown, served))
    rails = texts(browser, "[data-testid=guardrails] tbody th")
    assert rails == ["error rate increase", "p99 latency", "evidence"]
    wait(browser, lambda d: len(css(d, "[data-testid=guardrails] [role=meter]")) == 2)
    assert css(browser, "[data-testid=events] tbody tr")
    shot(browser, "4-live-canary")
    assert accessibility_violations(browser) == []
    assert console_errors(browser) == []


def test_the_live_page_of_an_ab_test_shows_its_p_value(live, browser):
    reg, server = live
    open_page(browser, server, "#/live/rank")
    p = wait(browser, lambda d: (css(d, "[data-testid=ab-p]") or [None])[0])
    value = float(p.text)
    assert 0 <= value <= 1
    wait(browser, lambda d: len(css(d, "[data-testid=ab] canvas")) == 2)
    shot(browser, "5-live-ab")
    assert accessibility_violations(browser) == []
    assert console_errors(browser) == []


def test_changing_weights_through_the_page_sets_the_policy(live, browser):
    reg, server = live
    open_page(browser, server, "#/live/rank")
    wait(browser, lambda d: css(d, "[data-testid=weight-r1]"))
    for version, weight in (("r1", "1"), ("r2", "3")):
        field = css(browser, f"[data-testid=weight-{version}]")[0]
        field.clear()
        field.send_keys(weight)
    css(browser, "[data-testid=weight-r2]")[0].find_element("xpath", "ancestor::form").submit()
    wait(browser, lambda d: css(d, "dialog[open]"))
    css(browser, "[data-testid=confirm]")[0].click()
    wait(browser, lambda d: texts(d, "[data-testid=policy-name]") == ["weighted"])
    policy = requests.get(f"{server.url}/v2/lepton/models/rank/policy",
                          headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert policy["spec"] == {"type": "weighted", "weights": {"r1": 1, "r2": 3}}
    entry = reg.history("rank")[-1]
    assert entry.action == "set_policy" and entry.actor == "dash-tester (http 127.0.0.1)"
    assert console_errors(browser) == []


def test_starting_and_stopping_a_canary_through_the_page(live, browser):
    from selenium.webdriver.support.ui import Select

    reg, server = live
    open_page(browser, server, "#/live/rank")
    wait(browser, lambda d: css(d, "[data-testid=canary-stable]"))
    Select(css(browser, "[data-testid=canary-stable]")[0]).select_by_value("r1")
    Select(css(browser, "[data-testid=canary-candidate]")[0]).select_by_value("r2")
    steps = css(browser, "[data-testid=canary-steps]")[0]
    steps.clear()
    steps.send_keys("0.1, 0.5, 1")
    css(browser, "[data-testid=canary-start]")[0].click()
    dialog = wait(browser, lambda d: (css(d, "dialog[open]") or [None])[0])
    assert "r1 → r2" in dialog.text
    css(browser, "[data-testid=confirm]")[0].click()
    wait(browser, lambda d: css(d, "[data-testid=canary-phase]"))
    assert css(browser, "[data-testid=canary-phase]")[0].text == "ramping"
    spec = requests.get(f"{server.url}/v2/lepton/models/rank/policy",
                        headers={"Authorization": f"Bearer {TOKEN}"}).json()["spec"]
    assert (spec["type"], spec["stable"], spec["candidate"], spec["steps"]) == ("canary", "r1", "r2", [0.1, 0.5, 1])
    css(browser, "[data-testid=canary-stop]")[0].click()
    wait(browser, lambda d: css(d, "dialog[open]"))
    css(browser, "[data-testid=confirm]")[0].click()
    wait(browser, lambda d: texts(d, "[data-testid=policy-name]") == ["fixed"])
    actions = [(e.action, e.actor) for e in reg.history("rank")[-2:]]
    assert actions == [("set_policy", "dash-tester (http 127.0.0.1)")] * 2
    assert console_errors(browser) == []


class Wide(torch.nn.Module):
    def __init__(self, n: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.eye(64) * n, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def test_a_deployment_under_a_memory_budget_shows_what_is_loaded(tmp_path, browser):
    reg = lepton.Registry(tmp_path / "reg")
    for n in range(6):
        reg.register("many", Wide(n + 1), version=f"w{n}", example_inputs=torch.zeros(1, 64))
    size = 64 * 64 * 4
    with lepton.serve(reg, port=0, token=TOKEN, threads=1, memory_budget=int(2.5 * size)) as server:
        body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}
        for n in (0, 1, 2):
            r = requests.post(f"{server.url}/v2/models/many/versions/w{n}/infer", json=body, timeout=30)
            assert r.status_code == 200, r.text
        open_page(browser, server, "#/live/many")
        panel = wait(browser, lambda d: (css(d, "[data-testid=memory]") or [None])[0])
        status = requests.get(f"{server.url}/v2/lepton/models/many/stats",
                              headers={"Authorization": f"Bearer {TOKEN}"}).json()
        loaded = [v["version"] for v in status["versions"] if v["state"] == "loaded"]
        assert len(loaded) == 2 and status["memory"]["evictions"] >= 2
        assert f"{len(loaded)} of 6 versions loaded" in panel.text
        assert f"{status['memory']['evictions']} evictions" in panel.text
        rows = {e.get_attribute("data-version"): e.text for e in css(browser, "[data-testid=live-versions] tbody tr")}
        assert set(rows) == {f"w{n}" for n in range(6)}
        assert all(" loaded " in rows[v] and "16 KB" in rows[v] for v in loaded)
        assert all(" evicted " in rows[v] or " registered " in rows[v] for v in rows if v not in loaded)
        shot(browser, "7-memory-budget")
        assert console_errors(browser) == []


def test_a_shadow_shows_its_output_differences(tmp_path, browser):
    reg = lepton.Registry(tmp_path / "reg")
    x = torch.zeros(1, 4)
    reg.register("sh", AddN(1), version="s1", example_inputs=x)
    reg.register("sh", AddN(1.5), version="s2", example_inputs=x)
    policy = {"type": "shadow", "primary": "s1", "mirrors": ["s2"]}
    with lepton.serve(reg, port=0, token=TOKEN, threads=1, only=True,
                      models={"sh": {"versions": ["s1", "s2"], "policy": policy}}) as server:
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}]}
        with requests.Session() as s:
            for _ in range(20):
                assert s.post(f"{server.url}/v2/models/sh/infer", json=body, timeout=30).status_code == 200
        open_page(browser, server, "#/live/sh")
        wait(browser, lambda d: css(d, "[data-testid=shadows] tbody tr"))
        wait(browser, lambda d: [r.split()[2] for r in texts(d, "[data-testid=shadows] tbody tr")] == ["20"])
        cells = texts(browser, "[data-testid=shadows] tbody tr")[0].split()
        assert cells[:2] == ["s1", "s2"] and cells[5:7] == ["0.5", "0.5"]  # max and mean |diff|
        shot(browser, "8-shadow")
        assert console_errors(browser) == []


def test_pages_of_a_model_that_is_not_there_say_so_and_stop_asking(live, browser):
    import time

    reg, server = live
    open_page(browser, server, "#/registry/nope")
    alert = wait(browser, lambda d: (css(d, "[role=alert]") or [None])[0])
    assert alert.text.startswith("404") and "nope" in alert.text
    assert not css(browser, ".lineage") and not css(browser, "[data-testid=versions]")
    open_page(browser, server, "#/live/nope")
    alert = wait(browser, lambda d: (css(d, "[role=alert]") or [None])[0])
    assert "nope is not served by this server" in alert.text
    browser.get_log("browser")  # what was said so far
    time.sleep(4.5)  # two polling rounds: none may ask again
    again = [e for e in browser.get_log("browser") if "/v2/lepton/models/nope/" in e["message"]]
    assert again == []


def test_the_event_log_page(live, browser):
    reg, server = live
    open_page(browser, server, "#/events")
    wait(browser, lambda d: len(css(d, "[data-testid=events] tbody tr")) > 0)
    kinds = set(texts(browser, "[data-testid=events] tbody td:nth-child(3)"))
    assert {"load", "policy"} <= kinds  # the versions' loads, the policies set
    models = set(texts(browser, "[data-testid=events] tbody td:nth-child(4)"))
    assert {"clf", "rank"} <= models
    shot(browser, "6-events")
    assert accessibility_violations(browser) == []
    assert console_errors(browser) == []


def test_a_token_that_stops_working_sends_the_page_back_to_sign_in(live, browser):
    reg, server = live
    open_page(browser, server, "#/")
    browser.execute_script("sessionStorage.setItem('lepton.token', 'revoked')")
    browser.refresh()
    alert = wait(browser, lambda d: (css(d, "[role=alert]") or [None])[0])
    assert "refused the token" in alert.text
    assert css(browser, "input[name=token]")
