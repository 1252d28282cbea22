"""A real PostgreSQL server for the tests: Debian's binaries, `initdb` into a temporary directory
as an unprivileged user (the `postgres` account when the tests run as root), listening on a free
local port and a socket in that directory, stopped and removed at the end."""
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid


def _bin(name):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def available():
    return _bin("initdb") is not None and _bin("pg_ctl") is not None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="lepton-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self.user = "lepton"
        self._as = []
        if os.geteuid() == 0:  # initdb refuses root: run as Debian's postgres account
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args, **kw):
        return subprocess.run([*self._as, *args], check=True, capture_output=True, text=True, **kw)

    def start(self):
        self._run(_bin("initdb"), "-D", self.data, "-U", self.user, "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.start_again()
        return self

    def start_again(self):
        """Starts a stopped server on the same data and port (its output goes to the log file, so
        that nothing holds this process's pipes open)."""
        self._run(_bin("pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                        "-c max_connections=200", "start")

    def stop(self):
        try:
            self._run(_bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")
        except subprocess.CalledProcessError:
            pass

    def restart(self):
        self.stop()
        self.start_again()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self, name=None):
        name = name or "db_" + uuid.uuid4().hex[:12]
        self._run(_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return name

    def url(self, database):
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def log(self):
        try:
            with open(os.path.join(self.dir, "log")) as f:
                return f.read()
        except OSError:
            return ""
