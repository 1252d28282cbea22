"""lepton installs with pip into an environment that uses Debian's torch, and `pip check` stays clean."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_pip_check_is_clean_in_this_environment():
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_pip_install_into_a_users_venv_resolves_its_requirements(tmp_path):
    """Without --no-deps: torch, numpy and click must be found satisfied by Debian's packages
    (torch 1.13.0a0 is a pre-release, which `torch>=1.13` would not accept)."""
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_NO_DEPS")}
    env["PIP_NO_INDEX"] = "1"  # everything it needs is already on the machine
    # The install reuses this checkout's CMake build; configured as scripts/bootstrap does, so
    # that it leaves the GoogleTest suite and the benchmarks in that build.
    env["LEPTON_BUILD_TESTS"] = env["LEPTON_BUILD_BENCHMARKS"] = "ON"
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-build-isolation", "--disable-pip-version-check", "-q", ROOT],
        capture_output=True, text=True, env=env, timeout=1200,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stdout
    used = subprocess.run([python, "-c", "import lepton, sys; print(lepton.__file__)"], capture_output=True,
                          text=True, env=env, cwd=str(tmp_path))
    assert used.returncode == 0 and used.stdout.startswith(str(venv)), used.stdout + used.stderr


def test_the_package_has_no_import_cycle():
    """Each module of lepton imports only modules below it (function-level imports included)."""
    import ast

    package = os.path.join(ROOT, "python", "lepton")
    modules = {f[:-3] for f in os.listdir(package) if f.endswith(".py")}
    imports = {}
    for name in modules:
        with open(os.path.join(package, name + ".py")) as f:
            tree = ast.parse(f.read())
        imports[name] = {
            (node.module or "").split(".")[0] or alias.name
            for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1
            for alias in node.names
        } & modules - {name}

    def cycle_from(start, path):
        for nxt in imports[path[-1]]:
            if nxt == start:
                return path + [nxt]
            if nxt not in path:
                found = cycle_from(start, path + [nxt])
                if found:
                    return found
        return None

    for name in sorted(modules - {"__init__", "__main__"}):
        assert cycle_from(name, [name]) is None, " -> ".join(cycle_from(name, [name]))


SMOKE = r"""
import os, sys, tempfile, json, urllib.request
import torch, lepton
assert not lepton.__file__.startswith(sys.argv[1]), lepton.__file__  # the installed copy, not the tree
reg = lepton.Registry(tempfile.mkdtemp())
reg.register("m", torch.nn.Linear(3, 2).eval(), version="v1", example_inputs=torch.zeros(1, 3))
with lepton.Deployment(reg, "m", ["v1"]) as d:
    assert d.predict(torch.zeros(1, 3)).output.shape == (1, 2)
# The worker program ships beside the module and runs against the same torch.
with lepton.Deployment(reg, "m", ["v1"], placement="process") as d:
    assert d.predict(torch.zeros(1, 3)).output.shape == (1, 2)
    assert d.status()["versions"][0]["worker"]["state"] == "running"
with lepton.serve(reg, port=0, token="t" * 32) as s:
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [0, 0, 0]}]})
    r = urllib.request.urlopen(urllib.request.Request(s.url + "/v2/models/m/infer", body.encode(),
                                                      {"Content-Type": "application/json"}))
    assert json.load(r)["outputs"][0]["shape"] == [1, 2]
print("smoke ok")
"""


def build_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_NO_DEPS", "LEPTON_BUILD_DIR")}
    env["PIP_NO_INDEX"] = "1"
    env.update(extra)
    return env


def test_the_sdist_carries_every_file_the_build_reads_and_configures_on_its_own(tmp_path):
    """`python3 -m build --sdist` holds every tracked file the wheel is built from (the C++ core,
    its tests and benchmarks, the protocol files, the package, the dashboard's sources and lock),
    and CMake configures from the unpacked sdist alone with every target on, so no source that a
    target lists is missing."""
    import tarfile

    import shutil

    # From the tracked files alone (and the dashboard's build), as a clean clone has them: what an
    # earlier build left in the checkout (its egg-info's file list) must not fill the gaps.
    clean = tmp_path / "clean"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.split():
        (clean / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), clean / name)
    shutil.copytree(os.path.join(ROOT, "python", "lepton", "ui"), clean / "python" / "lepton" / "ui")
    dist = tmp_path / "dist"
    env = build_env()
    sdist = subprocess.run(["/usr/bin/python3", "-m", "build", "--sdist", "--no-isolation", "--outdir", str(dist),
                            str(clean)], capture_output=True, text=True, env=env, timeout=600)
    assert sdist.returncode == 0, sdist.stdout[-3000:] + sdist.stderr[-3000:]
    [archive] = dist.glob("lepton-*.tar.gz")
    with tarfile.open(archive) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
        if hasattr(tarfile, "data_filter"):
            t.extractall(tmp_path / "unpacked", filter="data")
        else:
            t.extractall(tmp_path / "unpacked")
    tracked = subprocess.run(["git", "ls-files", "cpp", "tests/cpp", "python/lepton", "web/src"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert len(tracked) > 100, tracked
    inputs = set(tracked) | {"CMakeLists.txt", "VERSION", "setup.py", "pyproject.toml", "web/package.json",
                             "web/package-lock.json", "web/build.mjs", "benchmarks/CMakeLists.txt"}
    inputs |= {f"benchmarks/{f}" for f in os.listdir(os.path.join(ROOT, "benchmarks")) if f.endswith(".cpp")}
    assert not inputs - names, sorted(inputs - names)
    # The dashboard's build ships too (the wheel's copy comes from it).
    assert {"python/lepton/ui/index.html", "python/lepton/ui/app.js"} <= names
    [src] = (tmp_path / "unpacked").iterdir()
    configure = subprocess.run(
        ["cmake", "-S", str(src), "-B", str(tmp_path / "configured"), "-DLEPTON_BUILD_PYTHON=ON",
         "-DLEPTON_BUILD_TESTS=ON", "-DLEPTON_BUILD_BENCHMARKS=ON",
         f"-DPython3_EXECUTABLE={os.path.realpath('/usr/bin/python3')}"],
        capture_output=True, text=True, env=env, timeout=600)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]


def test_the_wheel_works_in_a_fresh_venv_and_refuses_another_torch(tmp_path):
    """`python3 -m build --wheel` (from this checkout's CMake build, configured as
    scripts/bootstrap configures it): the wheel installs into a fresh venv over Debian's torch,
    passes a smoke test from outside the source tree, and refuses a torch other than the one it
    was built against."""
    dist = tmp_path / "dist"
    env = build_env(LEPTON_BUILD_TESTS="ON", LEPTON_BUILD_BENCHMARKS="ON")
    build = subprocess.run(["/usr/bin/python3", "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), ROOT],
                           capture_output=True, text=True, env=env, timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = sorted(dist.glob("lepton-*.whl"))
    assert len(wheels) == 1, os.listdir(dist)
    import zipfile

    with zipfile.ZipFile(wheels[0]) as z:
        # The dashboard's build ships in the wheel.
        assert {"lepton/ui/index.html", "lepton/ui/app.js", "lepton/ui/app.css"} <= set(z.namelist())
        # The worker program of versions placed in their own process, executable once installed.
        assert z.getinfo("lepton/lepton-worker").external_attr >> 16 & 0o111
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheels[0])],
                             capture_output=True, text=True, env=env, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    run = dict(cwd=str(tmp_path), capture_output=True, text=True, env=env, timeout=300)
    smoke = subprocess.run([python, "-c", SMOKE, ROOT], **run)
    assert smoke.returncode == 0 and "smoke ok" in smoke.stdout, smoke.stdout + smoke.stderr
    version = subprocess.run([str(venv / "bin" / "lepton"), "--version"], **run)
    with open(os.path.join(ROOT, "VERSION")) as f:
        assert version.returncode == 0 and f.read().strip() in version.stdout, version.stdout + version.stderr
    # Built against another torch: refused at import with the reason, before the extension loads.
    info = subprocess.run([python, "-c", "import lepton._build_info as b; print(b.__file__)"], **run).stdout.strip()
    with open(info) as f:
        text = f.read()
    with open(info, "w") as f:
        f.write(text.replace('TORCH_VERSION = "', 'TORCH_VERSION = "9.8.7+other # was '))
    refused = subprocess.run([python, "-c", "import lepton"], **run)
    assert refused.returncode != 0 and "built against torch 9.8.7" in refused.stderr, refused.stderr


def test_the_build_refuses_a_libtorch_of_another_release_than_pythons_torch(tmp_path):
    """A Python whose torch is 2.1.0 (a stand-in package first on its path, with no LibTorch of
    its own) next to the system's LibTorch 1.13: configuring stops and names both."""
    fake = tmp_path / "site" / "torch"
    (fake / "utils").mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "2.1.0"\n')
    (fake / "utils" / "__init__.py").write_text(f'cmake_prefix_path = "{tmp_path / "none"}"\n')
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    out = subprocess.run(
        ["cmake", "-S", ROOT, "-B", str(tmp_path / "build"), "-DPython3_EXECUTABLE=/usr/bin/python3",
         "-DLEPTON_BUILD_TESTS=OFF"],
        capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode != 0
    assert "imports torch 2.1.0" in out.stderr and "is 1.13" in out.stderr, out.stderr[-2000:]
