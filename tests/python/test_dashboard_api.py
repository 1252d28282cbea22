"""What the dashboard stands on, without a browser: the registry's read endpoints, who a change
over HTTP is recorded as, policy changes in the audit log, and how /ui/ is served (from memory,
by name only, with a strict content security policy)."""
import os

import pytest
import requests
import torch

import lepton
from conftest import AddN, lepton_serve, python_env  # noqa: F401 (python_env is a fixture)

TOKEN = "dash-token"


def auth(**extra):
    return {"Authorization": f"Bearer {TOKEN}", **extra}


@pytest.fixture
def reg(registry):
    registry.register("m", AddN(1), version="v1", example_inputs=torch.zeros(1, 4), metrics={"acc": 0.9})
    registry.register("m", AddN(2), version="v2", example_inputs=torch.zeros(1, 4), metrics={"acc": 0.93, "loss": 0.2},
                      parent="v1", tags={"team": "ranking"})
    registry.register("other", AddN(3), version="o1", example_inputs=torch.zeros(1, 4), parent="m:v2")
    registry.set_alias("m", "production", "v1", reason="first release")
    return registry


@pytest.fixture
def server(reg):
    s = lepton.serve(reg, port=0, token=TOKEN, models={"m": {"versions": ["v1", "v2"]}}, only=True, threads=1)
    yield s
    s.stop()


def test_registry_endpoints_list_models_versions_and_history(server, reg):
    models = requests.get(server.url + "/v2/lepton/registry/models", headers=auth()).json()
    by_name = {m["name"]: m for m in models}
    assert by_name["m"]["version_count"] == 2 and by_name["m"]["latest"] == "v2"
    assert by_name["m"]["aliases"] == {"production": "v1"}
    versions = requests.get(server.url + "/v2/lepton/registry/models/m/versions", headers=auth()).json()
    assert [v["version"] for v in versions] == ["v1", "v2"]
    v2 = versions[1]
    assert v2["parent"] == "m:v1" and v2["metrics"] == {"acc": 0.93, "loss": 0.2} and v2["tags"] == {"team": "ranking"}
    assert v2["sha256"] == reg.get("m:v2").sha256 and v2["size"] == reg.get("m:v2").size
    assert v2["signature"]["inputs"][0]["dtype"] == "float32"
    assert versions[0]["aliases"] == ["production"]
    other = requests.get(server.url + "/v2/lepton/registry/models/other/versions", headers=auth()).json()
    assert other[0]["parent"] == "m:v2"  # lineage across models
    history = requests.get(server.url + "/v2/lepton/registry/models/m/history", headers=auth()).json()
    assert [e["action"] for e in history] == ["register", "register", "set_alias"]
    assert history[-1]["reason"] == "first release" and history[-1]["to_version"] == "v1"
    last = requests.get(server.url + "/v2/lepton/registry/models/m/history?limit=1", headers=auth()).json()
    assert [e["id"] for e in last] == [history[-1]["id"]]


@pytest.mark.parametrize("path,status", [
    ("/v2/lepton/registry/models/nope/versions", 404),
    ("/v2/lepton/registry/models/m/history?limit=x", 400),
    ("/v2/lepton/registry/models/m/history?limit=1x", 400),
    ("/v2/lepton/registry/models/m/history?limit=-1", 400),
    ("/v2/lepton/registry/models/m", 404),
    ("/v2/lepton/registry/models/m/versions/v1", 404),
    ("/v2/lepton/registry/things", 404),
])
def test_registry_endpoints_refuse_what_they_do_not_know(server, path, status):
    r = requests.get(server.url + path, headers=auth())
    assert r.status_code == status and r.json()["error"]


def test_registry_endpoints_need_the_token_and_only_read(server):
    r = requests.get(server.url + "/v2/lepton/registry/models")
    assert r.status_code == 401
    r = requests.get(server.url + "/v2/lepton/registry/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = requests.post(server.url + "/v2/lepton/registry/models", headers=auth(), json={})
    assert r.status_code == 405


def test_a_change_over_http_is_recorded_as_the_actor_it_names(server, reg):
    r = requests.put(server.url + "/v2/lepton/models/m/aliases/production", headers=auth(**{"X-Lepton-Actor": "ann"}),
                     json={"version": "v2", "expected": "v1", "reason": "better acc"})
    assert r.status_code == 200, r.text
    entry = reg.history("m")[-1]
    assert (entry.action, entry.actor, entry.reason) == ("set_alias", "ann (http 127.0.0.1)", "better acc")
    # Without the header, the registry's own actor, as before.
    requests.post(server.url + "/v2/lepton/models/m/rollback", headers=auth(), json={"alias": "production"})
    assert reg.history("m")[-1].actor == reg.actor


@pytest.mark.parametrize("actor", ["", "x" * 65, "ann\tbob"])
def test_a_bad_actor_is_refused_and_changes_nothing(server, reg, actor):
    before = len(reg.history("m"))
    r = requests.put(server.url + "/v2/lepton/models/m/aliases/production", headers=auth(**{"X-Lepton-Actor": actor}),
                     json={"version": "v2"})
    assert r.status_code == 400 and "X-Lepton-Actor" in r.json()["error"]
    assert len(reg.history("m")) == before and reg.get("m@production").version == "v1"


def test_a_policy_set_over_http_is_in_the_audit_log(server, reg):
    policy = {"type": "weighted", "weights": {"v1": 3, "v2": 1}}
    r = requests.put(server.url + "/v2/lepton/models/m/policy", headers=auth(**{"X-Lepton-Actor": "ops"}), json=policy)
    assert r.status_code == 200, r.text
    entry = reg.history("m")[-1]
    assert entry.action == "set_policy" and entry.actor == "ops (http 127.0.0.1)"
    assert entry.details["policy"] == policy
    # A refused policy is not recorded.
    r = requests.put(server.url + "/v2/lepton/models/m/policy", headers=auth(), json={"type": "weighted"})
    assert r.status_code == 400 and reg.history("m")[-1].id == entry.id


def test_the_dashboard_is_served_without_the_token_with_a_strict_policy(server):
    assert server.ui_url == server.url + "/ui/"
    for path in ("/ui", "/ui/", "/ui/index.html"):
        r = requests.get(server.url + path)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        assert '<script defer src="/ui/app.js">' in r.text
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"
    js = requests.get(server.url + "/ui/app.js")
    assert js.status_code == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert requests.get(server.url + "/ui/app.css").headers["Content-Type"].startswith("text/css")
    # The root leads to the dashboard.
    r = requests.get(server.url + "/", allow_redirects=False)
    assert r.status_code == 308 and r.headers["Location"] == "/ui/"


@pytest.mark.parametrize("path", [
    "/ui/../registry.db", "/ui/%2e%2e/registry.db", "/ui/..%2fregistry.db", "/ui/a/index.html", "/ui/nope.js",
    "/ui/.hidden", "/ui/index.html%00.js", "/ui//etc/passwd", "/ui/..", "/ui/app.js/",
])
def test_the_dashboard_serves_nothing_but_its_own_files(server, path):
    # Sent as is: requests would normalise the dots away.
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    if path == "/ui/app.js/":
        assert r.status == 200 and body  # the same file: empty path segments are dropped
        return
    assert r.status == 404, (path, r.status)
    assert b"SQLite" not in body and b"root:" not in body


def test_methods_other_than_get_are_refused_on_the_dashboard(server):
    r = requests.post(server.url + "/ui/", data="x")
    assert r.status_code == 405 and r.headers["Allow"] == "GET"


def test_a_server_without_the_dashboard_says_so(reg, tmp_path):
    with lepton.serve(reg, port=0, token=TOKEN, only=True, ui=False) as s:
        assert s.ui_url is None
        r = requests.get(s.url + "/ui/")
        assert r.status_code == 404 and "no dashboard" in r.json()["error"]
        assert requests.get(s.url + "/", allow_redirects=False).status_code == 404
    with pytest.raises(lepton.InvalidArgument, match="holds no index.html"):
        lepton.serve(reg, port=0, token=TOKEN, only=True, ui=tmp_path)
    (tmp_path / "index.html").write_text("<p>mine</p>")
    (tmp_path / "notes.exe").write_text("not served")
    with lepton.serve(reg, port=0, token=TOKEN, only=True, ui=tmp_path) as s:
        assert requests.get(s.url + "/ui/").text == "<p>mine</p>"
        assert requests.get(s.url + "/ui/notes.exe").status_code == 404


def test_lepton_ui_opens_the_dashboard_on_a_registry_and_serves_no_models(reg, python_env):  # noqa: F811
    env = {**python_env, "LEPTON_TOKEN": TOKEN}
    with lepton_serve(["--registry", reg.path, "--port", "0"], env, command="ui") as (proc, url):
        assert url.endswith("/ui/")
        assert requests.get(url).status_code == 200
        base = url[: -len("/ui/")]
        assert requests.get(base + "/v2/lepton/models", headers=auth()).json() == []
        names = [m["name"] for m in requests.get(base + "/v2/lepton/registry/models", headers=auth()).json()]
        assert names == ["m", "other"]
        r = requests.put(base + "/v2/lepton/models/m/aliases/staging", headers=auth(**{"X-Lepton-Actor": "ann"}),
                         json={"version": "v2"})
        assert r.status_code == 200, r.text
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    assert reg.get("m@staging").version == "v2" and reg.history("m")[-1].actor == "ann (http 127.0.0.1)"


def test_the_live_pages_arithmetic():
    """web/test: rates, shares and latency quantiles from the server's cumulative counters (Node's
    own test runner; the bootstrap installs Node.js)."""
    import subprocess

    root = os.path.join(os.path.dirname(__file__), "..", "..", "web")
    r = subprocess.run(["node", "--test", "test/"], cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "# fail 0" in r.stdout
