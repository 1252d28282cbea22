"""The package's type hints and the extension's stub (python/lepton/_core.pyi) are checked with
Debian's mypy: the stub matches the built module, and mypy is clean on the package and on user code
(the README's quickstart and a script that deploys, routes and serves)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

USER_SCRIPT = '''
import torch
import lepton

reg = lepton.Registry("./models")
v1 = reg.register("m", torch.nn.Linear(3, 2), version="v1", example_inputs=torch.zeros(1, 3))
reg.register("m", torch.nn.Linear(3, 2), version="v2", example_inputs=torch.zeros(1, 3))
with lepton.Deployment(reg, "m", ["v1", "v2"], max_batch_size=8, threads=2) as d:
    d.set_policy(lepton.Canary("v1", "v2", guardrails=lepton.Guardrails(min_requests=5)))
    p: lepton.Prediction = d.predict(torch.zeros(1, 3), key="user-1", timeout=1.0)
    print(p.version, p.latency, d.status()["primary"], d.metrics()["series"])
    d.feedback(p, 1.0)
    d.set_policy(lepton.Ensemble({"v1": 0.5, "v2": 0.5}, combine="mean"))
weights = lepton.weights.normalize([1.0, 3.0])
with lepton.serve(reg, port=0, models={"m": {"policy": lepton.Weighted({"v1": 1, "v2": 1})}}) as server:
    print(server.url, server.token, v1.sha256)
'''


def mypy(path, tmp_path):
    env = dict(os.environ, MYPYPATH=os.path.join(ROOT, "python"))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", os.path.join(ROOT, "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy-cache"), path],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def test_the_stub_matches_the_built_extension():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "stubs"), "--check"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_is_clean_on_the_package_and_on_user_code(tmp_path):
    package = mypy(os.path.join(ROOT, "python", "lepton"), tmp_path)
    assert package.returncode == 0, package.stdout + package.stderr
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    quickstart = re.search(r"## Python quickstart\n\n```python\n(.*?)```", readme, re.S).group(1)
    user = tmp_path / "user.py"
    user.write_text(quickstart + USER_SCRIPT)
    checked = mypy(str(user), tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # mypy does check: a wrong call is an error.
    user.write_text("import lepton\nlepton.Registry(3).register('m', 'x', version=2)\n")
    wrong = mypy(str(user), tmp_path)
    assert wrong.returncode != 0 and "version" in wrong.stdout, wrong.stdout
