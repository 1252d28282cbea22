"""What only a registry on PostgreSQL has: a URL and a shared artifact directory, passwords that
never show, other processes opening it by its location, and a server that restarts under it. (The
conformance suite, test_registry.py and test_processes.py, runs everything else on both
backends.)"""
import subprocess
import sys

import pytest
import torch

import lepton
import pg_server
from conftest import AddN, wait_for


@pytest.fixture
def url(postgres):
    return postgres.url(postgres.create_database())


def test_the_artifact_directory_must_be_named(url, tmp_path, monkeypatch):
    monkeypatch.delenv("LEPTON_BLOBS", raising=False)
    with pytest.raises(lepton.InvalidArgument, match=r"\?blobs=/path.*LEPTON_BLOBS"):
        lepton.Registry(url)
    # Any of the three ways names it.
    a = lepton.Registry(url, blobs=tmp_path / "a")
    assert a.path == str(tmp_path / "a")
    monkeypatch.setenv("LEPTON_BLOBS", str(tmp_path / "b"))
    assert lepton.Registry(url).path == str(tmp_path / "b")
    assert lepton.Registry(f"{url}?blobs={tmp_path / 'c'}").path == str(tmp_path / "c")


def test_a_password_is_never_shown(postgres, tmp_path):
    secret = "pw-9f3c1d"
    good = f"postgresql://{postgres.user}:{secret}@127.0.0.1:{postgres.port}/{postgres.create_database()}"
    reg = lepton.Registry(f"{good}?blobs={tmp_path}")  # the test server trusts local connections
    assert secret not in reg.location and secret not in repr(reg)
    assert reg.location.startswith(f"postgresql://{postgres.user}@127.0.0.1:")
    for bad in (f"postgresql://{postgres.user}:{secret}@127.0.0.1:{postgres.port}/no_such_db",
                f"postgresql://127.0.0.1:{postgres.port}/no_such_db?user={postgres.user}&password={secret}"):
        with pytest.raises(lepton.StorageError) as e:
            lepton.Registry(bad, blobs=tmp_path)
        assert "no_such_db" in str(e.value) and secret not in str(e.value)


def test_other_processes_open_it_by_its_location(url, tmp_path, python_env):
    reg = lepton.Registry(url, blobs=tmp_path / "shared")
    reg.register("m", AddN(1), example_inputs=torch.zeros(1, 4))
    out = subprocess.run([sys.executable, "-m", "lepton", "--registry", reg.location, "versions", "m"],
                         env=python_env, capture_output=True, text=True, check=True).stdout
    assert "v1" in out
    env = {**python_env, "LEPTON_HOME": reg.location}
    subprocess.run([sys.executable, "-m", "lepton", "alias", "set", "m", "prod", "v1"], env=env, check=True,
                   capture_output=True)
    assert reg.aliases("m") == {"prod": "v1"}
    assert [e.action for e in reg.history("m")][-1] == "set_alias"


def test_a_deployment_follows_an_alias_moved_through_another_connection(url, tmp_path):
    serving = lepton.Registry(url, blobs=tmp_path / "shared")
    for n in (1, 2):
        serving.register("m", AddN(n), example_inputs=torch.zeros(1, 4))
    serving.set_alias("m", "prod", "v1")
    elsewhere = lepton.Registry(serving.location, actor="release-bot")
    with lepton.Deployment(serving, "m", alias="prod") as d:
        assert d.predict(torch.zeros(1, 4)).version == "v1"
        elsewhere.set_alias("m", "prod", "v2", expected="v1")
        wait_for(lambda: d.predict(torch.zeros(1, 4)).version == "v2", timeout=10)


def test_a_restarted_server_loses_nothing_and_the_registry_carries_on(tmp_path):
    server = pg_server.PostgresServer().start()
    try:
        reg = lepton.Registry(server.url(server.create_database()), blobs=tmp_path)
        reg.register("m", AddN(1), example_inputs=torch.zeros(1, 4))
        server.restart()
        # The lost connection is found, opened again, and the call goes through.
        reg.register("m", AddN(2), example_inputs=torch.zeros(1, 4))
        assert [v.seq for v in reg.versions("m")] == [1, 2]
        server.stop()
        with pytest.raises(lepton.StorageError, match="PostgreSQL"):
            reg.versions("m")
        server.start_again()
        assert [v.version for v in reg.versions("m")] == ["v1", "v2"]
        assert reg.verify().ok
    finally:
        server.close()


def test_recover_is_for_directories(url):
    with pytest.raises(lepton.InvalidArgument, match="PostgreSQL's own backups"):
        lepton.recover(url)


def test_a_replica_that_loses_the_database_keeps_serving_and_catches_up(tmp_path):
    mark = max([e["seq"] for e in lepton.logs.recent_events(1)], default=0)
    server = pg_server.PostgresServer().start()
    try:
        reg = lepton.Registry(server.url(server.create_database()), blobs=tmp_path)
        for n in (1, 2):
            reg.register("m", AddN(n), example_inputs=torch.zeros(1, 4))
        reg.set_alias("m", "prod", "v1")
        with lepton.Deployment(reg, "m", alias="prod") as d:
            x = torch.zeros(1, 4)
            assert d.predict(x).version == "v1"
            server.stop()
            # The request path never touches the database; the alias's poll fails and says so.
            wait_for(lambda: "PostgreSQL" in d.status()["last_error"], timeout=30)
            assert d.status()["registry_unreachable"]
            for _ in range(50):
                assert d.predict(x).version == "v1"
            server.start_again()
            lepton.Registry(reg.location).set_alias("m", "prod", "v2")
            wait_for(lambda: d.predict(x).version == "v2", timeout=30)
            wait_for(lambda: d.status()["last_error"] == "", timeout=30)
            assert not d.status()["registry_unreachable"]
            said = [e["kind"] for e in lepton.logs.events(mark, model="m")]
            assert said.count("registry_unreachable") == 1 and said.count("registry_reachable") == 1
    finally:
        server.close()


def test_alias_moves_are_pushed_to_deployments_that_follow_them(tmp_path):
    server = pg_server.PostgresServer().start()
    try:
        reg = lepton.Registry(server.url(server.create_database()), blobs=tmp_path)
        for n in (1, 2, 3):
            reg.register("m", AddN(n), example_inputs=torch.zeros(1, 4))
        reg.set_alias("m", "prod", "v1")
        other = lepton.Registry(reg.location, actor="elsewhere")
        x = torch.zeros(1, 4)
        # A poll once a minute: only the push (LISTEN/NOTIFY) can make these moves arrive in time.
        with lepton.Deployment(reg, "m", alias="prod", alias_poll_interval=60) as d:
            assert d.predict(x).version == "v1"
            wait_for(lambda: d.status()["alias_pushed"], timeout=20)  # its connection is up
            other.set_alias("m", "prod", "v2")
            wait_for(lambda: d.predict(x).version == "v2", timeout=20)
            other.rollback("m", "prod")
            wait_for(lambda: d.predict(x).version == "v1", timeout=20)
            # The listening connection is lost and made again: what it may have missed is
            # looked up, and later moves are pushed again.
            server.restart()
            other.set_alias("m", "prod", "v3")
            wait_for(lambda: d.predict(x).version == "v3", timeout=30)
    finally:
        server.close()


def test_with_artifacts_in_the_database_a_replica_needs_only_postgresql(url, tmp_path, python_env):
    """artifacts=database: the registry holds the artifacts too; every machine keeps its own
    cache, filled on first use, so `lepton serve` elsewhere needs nothing but the URL."""
    reg = lepton.Registry(f"{url}?artifacts=database", blobs=tmp_path / "trainer-cache", actor="ci")
    reg.register("m", AddN(3), example_inputs=torch.zeros(1, 4))
    assert "artifacts=database" in reg.location
    machine = tmp_path / "serving-machine-cache"
    env = {**python_env, "LEPTON_CACHE": str(machine)}
    env.pop("LEPTON_BLOBS", None)
    code = ("import lepton, torch, sys; d = lepton.Deployment(lepton.Registry(sys.argv[1]), 'm', ['v1']); "
            "print(d.predict(torch.zeros(1, 4)).output.tolist()); d.close()")
    out = subprocess.run([sys.executable, "-c", code, f"{url}?artifacts=database"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[[3.0, 3.0, 3.0, 3.0]]"
    # Fetched once into that machine's cache, by its sha256.
    sha = reg.get("m:v1").sha256
    assert [p.name for p in machine.rglob(sha + "*")]
    assert reg.verify().ok
