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
