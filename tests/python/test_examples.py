import pathlib
import subprocess
import sys

import lepton

SCRIPT = pathlib.Path(__file__).parents[2] / "examples" / "train_and_register.py"


def test_training_script_twice_makes_two_linked_versions(tmp_path, python_env):
    reg_path = tmp_path / "reg"
    first = subprocess.run([sys.executable, str(SCRIPT), "--registry", str(reg_path), "--epochs", "3"],
                           capture_output=True, text=True, env=python_env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "training from scratch" in first.stdout and "staging -> v1" in first.stdout
    second = subprocess.run([sys.executable, str(SCRIPT), "--registry", str(reg_path), "--epochs", "2"],
                            capture_output=True, text=True, env=python_env, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "continuing from digits:v1" in second.stdout and "metrics, v1 -> v2:" in second.stdout
    assert "accuracy" in second.stdout and "epoch" in second.stderr  # tqdm reports on stderr
    reg = lepton.Registry(reg_path)
    v1, v2 = reg.versions("digits")
    assert reg.get("digits@staging").version == "v2" and v2.parent == "digits:v1"
    assert 0.8 < v1.metrics["accuracy"] <= 1 and set(v2.metrics) == {"accuracy", "log_loss", "train_seconds"}
    assert v2.signature.inputs[0].shape == [-1, 64]
    assert [e.action for e in reg.history("digits") if e.alias == "staging"] == ["set_alias", "set_alias"]
