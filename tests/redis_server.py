"""A real redis-server (Debian's package, installed by `make sysdeps`) for the tests: started on a free port in
a temporary directory, stopped and restarted at will (the Redis-trouble tests), with a password so that the
URL form with credentials is what is exercised."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from tests.served_session import free_port

PASSWORD = "redis-secret-5b1e"  # distinctive, so the logs can be searched for it


class RedisServer:
    def __init__(self, workdir: Path):
        assert shutil.which("redis-server"), "redis-server is installed by `make sysdeps`"
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
             "--dir", str(self.dir), "--save", "", "--appendonly", "no"],
            stdout=open(self.dir / "redis.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = subprocess.run(["redis-cli", "-p", str(self.port), "-a", PASSWORD, "--no-auth-warning", "ping"],
                                 capture_output=True, text=True)
            if out.stdout.strip() == "PONG":
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start:\n" + (self.dir / "redis.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
