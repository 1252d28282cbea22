import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import lepton
from lepton.cli import cli
from conftest import save_scripted


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()
    home = str(tmp_path / "home")

    def invoke(*args, code=0):
        result = runner.invoke(cli, ["--registry", home, "--actor", "cli-test", *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result.output

    invoke.home = home
    return invoke


def test_register_list_show_alias_rollback_history(run, tmp_path):
    model = save_scripted(tmp_path / "m.pt", 1)
    out = run("register", "clf", model, "--version", "v1.0", "--metric", "accuracy=0.9", "--tag", "team=ml",
              "--description", "first", "--alias", "production")
    assert "registered clf:v1.0 (seq 1" in out
    run("register", "clf", save_scripted(tmp_path / "m2.pt", 2), "--version", "v1.1", "--parent", "v1.0")
    assert "clf" in run("models") and "production->v1.0" in run("models")
    table = run("versions", "clf")
    assert "v1.0" in table and "accuracy=0.9" in table and "clf:v1.0" in table
    shown = json.loads(run("show", "clf@production"))
    assert shown["version"] == "v1.0" and shown["tags"] == {"team": "ml"} and shown["aliases"] == ["production"]
    assert json.loads(run("versions", "clf", "--json"))[1]["parent"] == "clf:v1.0"
    assert "clf@production -> v1.1" in run("alias", "set", "clf", "production", "v1.1", "--expected", "v1.0",
                                          "--reason", "better")
    assert "production  v1.1" in run("alias", "list", "clf")
    assert "-> v1.0 (rolled back)" in run("rollback", "clf", "production", "--reason", "oops")
    hist = run("history", "clf")
    assert "rollback" in hist and "oops" in hist and "cli-test" in hist
    run("update", "clf:v1.1", "--metric", "accuracy=0.95", "--untag", "none")
    assert lepton.Registry(run.home).get("clf:v1.1").metrics == {"accuracy": 0.95}


def test_verify_gc_delete(run, tmp_path):
    for n in range(4):
        run("register", "m", save_scripted(tmp_path / f"{n}.pt", n))
    assert "checked 4 versions" in run("verify")
    assert "would delete m:v1" in run("gc", "--keep", "2", "--dry-run")
    assert "deleted 2 versions" in run("gc", "--keep", "2")
    assert "deleted m:v4" in run("delete", "m")
    reg = lepton.Registry(run.home)
    v3 = reg.get("m:v3")
    blob = os.path.join(reg.path, "blobs", "sha256", v3.sha256[:2], v3.sha256)
    os.remove(blob)
    out = CliRunner(mix_stderr=False).invoke(cli, ["--registry", run.home, "verify"])
    assert out.exit_code == 1 and "missing: m:v3" in out.stderr


def test_errors_are_one_line_and_exit_1(run, tmp_path):
    (tmp_path / "junk.pt").write_text("junk")
    out = CliRunner(mix_stderr=False).invoke(cli, ["--registry", run.home, "register", "m", str(tmp_path / "junk.pt")])
    assert out.exit_code == 1
    assert out.stderr.startswith("error: InvalidArgument: ") and "TorchScript" in out.stderr
    out = CliRunner(mix_stderr=False).invoke(cli, ["--registry", run.home, "show", "m@prod"])
    assert out.exit_code == 1 and "NotFound" in out.stderr
    out = CliRunner(mix_stderr=False).invoke(cli, ["--registry", run.home, "register", "m", "x", "--metric", "a=b"])
    assert out.exit_code == 2 and "not a number" in out.stderr


def test_console_script_and_lepton_home(tmp_path, python_env):
    env = dict(python_env, LEPTON_HOME=str(tmp_path / "envhome"))
    lepton_cmd = os.path.join(os.path.dirname(sys.executable), "lepton")
    out = subprocess.run([lepton_cmd, "--version"], capture_output=True, text=True, env=env, check=True)
    assert lepton.__version__ in out.stdout
    subprocess.run([lepton_cmd, "init"], capture_output=True, text=True, env=env, check=True)
    assert os.path.exists(tmp_path / "envhome" / "registry.db")


def test_demo_runs(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--registry", str(tmp_path / "demo")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "rolled back: production -> v1.1" in result.output
    assert "verify: 3 versions checked, ok=True" in result.output
    assert "answered by ['v1.0', 'v1.1']" in result.output
    assert "the deployment followed" in result.output
    (tmp_path / "not-a-registry").mkdir()
    (tmp_path / "not-a-registry" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["demo", "--registry", str(tmp_path / "not-a-registry")])
    assert result.exit_code != 0 and (tmp_path / "not-a-registry" / "keep.txt").exists()
