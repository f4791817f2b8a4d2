"""Fixtures that run real Spindle processes for the end-to-end suite.

Every server is the release binary (built by scripts/test before pytest),
started on a free port (`--port 0`); its URL is read from the
"spindle listening on" line it prints. Models come from ../shared/models.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path(os.environ.get("SPINDLE_MODELS_DIR", ROOT.parent / "shared" / "models"))
SMOLLM = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
STORIES = MODELS / "stories260K.gguf"
BIN = Path(os.environ.get("SPINDLE_BIN", ROOT / "target" / "release" / "spindle"))


class Proc:
    """A running spindle process and the URL it serves."""

    def __init__(self, args: list[str], timeout: float = 120):
        if not BIN.exists():
            raise RuntimeError(f"{BIN} is missing: run scripts/test (it builds the release binary)")
        self.args = args
        self.proc = subprocess.Popen(
            [str(BIN), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        self.log: list[str] = []
        found = threading.Event()
        self.url = ""

        def pump():
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"spindle listening on (http://\S+)", line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.time() + timeout
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"spindle {' '.join(args)} did not start:\n{''.join(self.log)}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def _starter():
    """A function that starts spindle processes, and the list it keeps them in."""
    started: list[Proc] = []

    def start(args: list[str]) -> Proc:
        p = Proc(args)
        started.append(p)
        return p

    return start, started


@pytest.fixture(scope="session")
def spindle():
    """Start extra processes in a test: `spindle(["worker", ...])`; all are killed at the end."""
    start, started = _starter()
    yield start
    for p in started:
        p.stop()


@pytest.fixture
def procs():
    """Like `spindle`, for one test: `procs(["router", ...])`; every process is
    killed when the test ends (also a stopped one), and a failing test shows
    the tail of each one's log."""
    start, started = _starter()
    yield start
    for p in started:
        p.stop()
        print(f"--- spindle {' '.join(p.args)} (exit {p.proc.returncode}):")
        print("".join(p.log[-30:]))


@pytest.fixture(scope="session")
def server_url(spindle) -> str:
    """`spindle serve` (router + worker + memory store) with SmolLM2."""
    return spindle(["serve", "--port", "0", "--model", str(SMOLLM), "--threads", "2"]).url


@pytest.fixture(scope="session")
def worker_url(spindle) -> str:
    """A standalone `spindle worker` with SmolLM2."""
    return spindle(["worker", "--port", "0", "--model", str(SMOLLM), "--threads", "2"]).url


@pytest.fixture(scope="module")
def api(server_url):
    """The official openai client on `spindle serve`."""
    from router_support import client

    return client(server_url)


@pytest.fixture(scope="module")
def model(server_url) -> str:
    from router_support import model_name

    return model_name(server_url)


# ---------------------------------------------------------------- redis

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"

def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 6379:
            return port


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server on a free port (never 6379): (process, port)."""
    port = free_port()
    d = tempfile.mkdtemp(prefix="spindle-redis-py-")
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no", "--dir", d],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield proc, port
    proc.kill()
    proc.wait()
    shutil.rmtree(d, ignore_errors=True)
