import hashlib
import os
import threading
import time
from datetime import datetime, timezone

import pytest
import torch

import lepton
from conftest import AddN, Untraceable, assert_releases_gil, save_scripted


# The conformance suite: every test that takes `registry` runs on both backends.
@pytest.fixture
def registry(registry_location):
    return lepton.Registry(registry_location, actor="tester")


def test_register_module_and_load_back(registry, mlp):
    x = torch.randn(3, 4)
    v = registry.register("clf", mlp, version="v1.0", metrics={"accuracy": 0.9}, tags={"team": "ml"})
    assert (v.name, v.version, v.seq, v.format) == ("clf", "v1.0", 1, "torchscript")
    assert v.metrics == {"accuracy": 0.9}
    assert v.tags == {"team": "ml"}
    assert isinstance(v.created_at, datetime) and v.created_at.tzinfo == timezone.utc
    loaded = registry.load("clf:v1.0")
    assert isinstance(loaded, torch.jit.ScriptModule)
    torch.testing.assert_close(loaded(x), mlp(x))
    data = registry.read_artifact(v)
    assert hashlib.sha256(data).hexdigest() == v.sha256 and len(data) == v.size


def test_register_script_module_and_path(registry, tmp_path):
    scripted = torch.jit.script(AddN(2))
    a = registry.register("adder", scripted)
    b = registry.register("adder", save_scripted(tmp_path / "three.pt", 3))
    c = registry.register("adder", tmp_path / "three.pt", version="again")
    d = registry.register("adder", (tmp_path / "three.pt").read_bytes(), version="bytes")
    assert (a.version, b.version, c.version) == ("v1", "v2", "again")
    assert b.sha256 == c.sha256 == d.sha256  # identical artifacts are stored once
    with pytest.raises(lepton.InvalidArgument, match="TorchScript"):
        registry.register("adder", b"not a model")
    assert registry.load("adder:v2")(torch.zeros(1)).item() == 3.0


def test_unscriptable_module_is_traced_with_example_inputs(registry):
    x = torch.ones(2, 3)
    with pytest.raises(lepton.InvalidArgument, match="example_inputs"):
        registry.register("tr", Untraceable())
    v = registry.register("tr", Untraceable(), example_inputs=x)
    torch.testing.assert_close(registry.load(v)(x), x * 2)
    assert v.signature.inputs[0].shape == [-1, 3]


def test_signature_is_inferred_from_example_inputs(registry, mlp):
    v = registry.register("clf", mlp, example_inputs=torch.randn(5, 4))
    sig = v.signature
    assert sig.inputs == [lepton.TensorSpec("input", "float32", [-1, 4])]
    assert sig.outputs == [lepton.TensorSpec("output", "float32", [-1, 2])]
    assert registry.get("clf").signature == sig
    explicit = lepton.Signature([lepton.TensorSpec("x", "float32", [-1, 4])])
    assert registry.register("clf", mlp, signature=explicit).signature == explicit
    with pytest.raises(lepton.InvalidArgument, match="dtype"):
        lepton.Signature([lepton.TensorSpec("x", "float99", [1])])


def test_references(registry, tmp_path):
    for n in range(3):
        registry.register("m", AddN(n), version=f"v{n}.0")
    registry.set_alias("m", "production", "v1.0")
    assert registry.get("m").version == "v2.0"
    assert registry.get("m@latest").version == "v2.0"
    assert registry.get("m:v0.0").seq == 1
    prod = registry.get("m@production")
    assert prod.version == "v1.0" and prod.aliases == ["production"]
    assert registry.get(prod) == prod
    with pytest.raises(lepton.NotFound, match="no alias 'staging'.*production"):
        registry.get("m@staging")
    with pytest.raises(lepton.NotFound):
        registry.get("m:v9")
    with pytest.raises(lepton.NotFound, match="does not exist"):
        registry.get("nope")
    for bad in ["", "m:", "@x", "a/b", "../x", "m:a@b", "m:" + "x" * 129]:
        with pytest.raises(lepton.InvalidArgument):
            registry.get(bad)
    with pytest.raises(lepton.InvalidArgument):
        registry.get(42)


def test_versions_and_models(registry):
    for n in range(3):
        registry.register("a", AddN(n), metrics={"acc": n / 10})
    registry.register("b", AddN(9))
    registry.set_alias("a", "production", "v2")
    versions = registry.versions("a")
    assert [v.seq for v in versions] == [1, 2, 3]
    assert versions[1].aliases == ["production"]
    assert versions[2].metrics == {"acc": 0.2}
    models = {m.name: m for m in registry.models()}
    assert models["a"].version_count == 3 and models["a"].latest == "v3"
    assert models["a"].aliases == {"production": "v2"}
    assert models["b"].version_count == 1
    with pytest.raises(lepton.NotFound):
        registry.versions("c")


def test_alias_compare_and_swap_and_rollback(registry):
    for n in range(3):
        registry.register("m", AddN(n))
    registry.set_alias("m", "production", "v1", expected="", reason="first")
    with pytest.raises(lepton.Conflict, match="expected it not to exist"):
        registry.set_alias("m", "production", "v2", expected="")
    with pytest.raises(lepton.Conflict, match="points to 'v1', expected 'v3'"):
        registry.set_alias("m", "production", "v2", expected="v3")
    registry.set_alias("m", "production", "v2", expected="v1", reason="better")
    registry.set_alias("m", "production", registry.get("m:v3"), reason="best")
    assert registry.aliases("m") == {"production": "v3"}
    assert registry.rollback("m", "production", reason="regression").version == "v2"
    assert registry.rollback("m", "production").version == "v1"
    with pytest.raises(lepton.Conflict, match="no previous target"):
        registry.rollback("m", "production")
    with pytest.raises(lepton.InvalidArgument, match="latest"):
        registry.set_alias("m", "latest", "v1")
    registry.remove_alias("m", "production", reason="retired")
    assert registry.aliases("m") == {}


def test_history_is_an_audit_trail(registry):
    registry.register("m", AddN(0), reason="initial training")
    registry.register("m", AddN(1))
    registry.set_alias("m", "production", "v1", reason="go live")
    registry.set_alias("m", "production", "v2", reason="promote")
    registry.rollback("m", "production", reason="errors up")
    registry.update("m:v2", metrics={"acc": 0.5}, reason="evaluated")
    registry.delete("m:v2", reason="bad")
    h = registry.history("m")
    assert [e.action for e in h] == ["register", "register", "set_alias", "set_alias", "rollback", "update", "delete"]
    assert h[0].reason == "initial training" and h[0].details["seq"] == 1
    assert all(e.actor == "tester" for e in h)
    rb = h[4]
    assert (rb.alias, rb.from_version, rb.to_version, rb.reason) == ("production", "v2", "v1", "errors up")
    assert h[5].details == {"metrics": {"acc": 0.5}}
    assert [e.action for e in registry.history("m", limit=2)] == ["update", "delete"]
    assert h == sorted(h, key=lambda e: e.id)


def test_update_metadata(registry):
    v = registry.register("m", AddN(0), tags={"a": "1", "b": "2"}, metrics={"acc": 0.1})
    time.sleep(0.01)
    u = registry.update(v, tags={"a": "10", "b": None}, metrics={"loss": 0.3}, description="tuned")
    assert u.tags == {"a": "10"}
    assert u.metrics == {"acc": 0.1, "loss": 0.3}
    assert u.description == "tuned"
    assert u.updated_at > v.updated_at and u.created_at == v.created_at
    assert u.sha256 == v.sha256
    with pytest.raises(lepton.InvalidArgument, match="not a number"):
        registry.update(v, metrics={"acc": "high"})
    with pytest.raises(lepton.InvalidArgument, match="finite"):
        registry.update(v, metrics={"acc": float("nan")})
    with pytest.raises(lepton.InvalidArgument, match="mapping"):
        registry.update(v, tags=["a"])
    assert registry.get(v).metrics == {"acc": 0.1, "loss": 0.3}


def test_lineage(registry):
    registry.register("base", AddN(0), version="v1")
    registry.register("base", AddN(1), version="v2", parent="v1")
    child = registry.register("distilled", AddN(2), parent="base:v2")
    assert registry.get("base:v2").parent == "base:v1"
    assert child.parent == "base:v2"
    with pytest.raises(lepton.NotFound):
        registry.register("base", AddN(3), parent="v9")
    assert len(registry.versions("base")) == 2


def test_delete_and_gc(registry):
    for n in range(6):
        registry.register("m", AddN(n))
    registry.set_alias("m", "production", "v2")
    with pytest.raises(lepton.Conflict, match="production"):
        registry.delete("m:v2")
    dry = registry.gc(2, dry_run=True)
    assert dry.deleted_versions == ["m:v1", "m:v3", "m:v4"] and dry.dry_run
    assert len(registry.versions("m")) == 6
    report = registry.gc(2)
    assert report.deleted_versions == ["m:v1", "m:v3", "m:v4"]
    assert report.blobs_removed == 3 and report.bytes_freed > 0
    assert [v.version for v in registry.versions("m")] == ["v2", "v5", "v6"]
    registry.delete("m:v2", force=True)
    assert registry.aliases("m") == {}
    assert registry.register("m", AddN(7)).seq == 7  # seqs are never reused
    with pytest.raises(lepton.InvalidArgument):
        registry.gc(-1)
    with pytest.raises(lepton.InvalidArgument):
        registry.gc("2")


def test_verify_and_integrity_errors(registry):
    a = registry.register("m", AddN(0))
    b = registry.register("m", AddN(1))
    assert registry.verify().ok
    blob = os.path.join(registry.path, "blobs", "sha256", b.sha256[:2], b.sha256)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.seek(10)
        f.write(b"\x00garbage\x00")
    report = registry.verify()
    assert not report.ok
    assert [(p.ref, p.problem) for p in report.problems] == [("m:v2", "corrupted")]
    with pytest.raises(lepton.IntegrityError, match="corrupted"):
        registry.load("m:v2")
    assert registry.load(a)(torch.zeros(1)).item() == 0.0
    os.remove(blob)
    assert registry.verify().problems[0].problem == "missing"
    with pytest.raises(lepton.IntegrityError, match="missing"):
        registry.load("m:v2")
    assert len(registry.versions("m")) == 2  # metadata is intact


def test_bad_input_is_typed_and_loses_nothing(registry, tmp_path):
    registry.register("m", AddN(0))
    (tmp_path / "notes.txt").write_text("hello")
    torch.save({"w": torch.zeros(2)}, tmp_path / "state_dict.pt")
    cases = [
        (lambda: registry.register("bad/name", AddN(1)), lepton.InvalidArgument, "'/'"),
        (lambda: registry.register("..", AddN(1)), lepton.InvalidArgument, "dots"),
        (lambda: registry.register("m", AddN(1), version="a b"), lepton.InvalidArgument, "' '"),
        (lambda: registry.register("m", tmp_path / "missing.pt"), lepton.NotFound, "does not exist"),
        (lambda: registry.register("m", tmp_path / "notes.txt"), lepton.InvalidArgument, "not a TorchScript"),
        (lambda: registry.register("m", tmp_path / "state_dict.pt"), lepton.InvalidArgument, "torch.jit.save"),
        (lambda: registry.register("m", tmp_path), lepton.InvalidArgument, "regular file"),
        (lambda: registry.register("m", 42), lepton.InvalidArgument, "nn.Module"),
        (lambda: registry.register("m", AddN(1), version="v1"), lepton.Conflict, "already has"),
        (lambda: registry.register("m", AddN(1), metrics={"a": "x"}), lepton.InvalidArgument, "number"),
        (lambda: registry.register("m", AddN(1), tags="x"), lepton.InvalidArgument, "mapping"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    assert [v.version for v in registry.versions("m")] == ["v1"]
    report = registry.verify()
    assert report.ok and report.orphan_blobs == []


def test_error_hierarchy():
    assert issubclass(lepton.InvalidArgument, lepton.LeptonError)
    assert issubclass(lepton.InvalidArgument, ValueError)
    assert issubclass(lepton.NotFound, LookupError)
    assert issubclass(lepton.Timeout, TimeoutError)
    for cls in (lepton.Conflict, lepton.IntegrityError, lepton.Overloaded, lepton.StorageError):
        assert issubclass(cls, lepton.LeptonError)
    assert lepton.NotFound.__module__ == "lepton"


def test_registry_path_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(lepton.InvalidArgument, match="not a directory"):
        lepton.Registry(tmp_path / "file")


def test_default_path_from_lepton_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_HOME", str(tmp_path / "home"))
    assert lepton.Registry().path == str(tmp_path / "home")


def test_diff_metrics(registry):
    a = registry.register("m", AddN(0), metrics={"acc": 0.5, "loss": 1.0})
    b = registry.register("m", AddN(1), metrics={"acc": 0.75, "f1": 0.4})
    assert lepton.diff_metrics(a, b) == {
        "acc": (0.5, 0.75, 0.25),
        "f1": (None, 0.4, None),
        "loss": (1.0, None, None),
    }


def test_threads_share_a_registry(registry):
    errors = []

    def work(t):
        try:
            for i in range(10):
                registry.register("m", AddN(t * 100 + i))
                registry.get("m")
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [v.seq for v in registry.versions("m")] == list(range(1, 41))


def test_calls_release_the_gil(registry):
    registry.register("big", torch.nn.Linear(4096, 4096))  # a 64 MiB artifact to rehash
    assert_releases_gil(lambda: [registry.verify() for _ in range(3)])
