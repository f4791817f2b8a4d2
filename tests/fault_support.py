"""Helpers for the fault tests (test_faults.py): SSE streams read on their own
thread (so a test can act while a stream is in flight, and every wait is
bounded), checks that a stored record equals what its client saw, worker
`/load` probes, and a real redis-server with AOF that can be SIGKILLed and
restarted on the same port and directory."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from urllib.parse import urlsplit

from conftest import REDIS, free_port
from router_support import Http

TERMINAL_EVENTS = {"response.completed", "response.incomplete", "response.failed", "response.cancelled"}
TERMINAL_STATUSES = {"completed", "incomplete", "failed", "cancelled"}


class SseStream:
    """One SSE request (`POST /v1/responses` with `stream: true`, or a
    follower's `GET /v1/responses/{id}?stream=true`) read on a daemon thread.

    Events arrive in `events` (name, data) as they come; `done` is True after
    `[DONE]`. Every read is bounded by `read_timeout`, and `join` bounds the
    whole stream, so a misbehaving server fails a test instead of hanging it.
    """

    def __init__(self, base_url: str, method: str, path: str, body: dict | None = None,
                 read_timeout: float = 60, label: str = ""):
        u = urlsplit(base_url)
        self.host, self.port = u.hostname, u.port
        self.method, self.path, self.body = method, path, body
        self.read_timeout = read_timeout
        self.label = label or f"{method} {path}"
        self.status: int | None = None
        self.error_body = ""
        self.exception: BaseException | None = None
        self.events: list[tuple[str | None, dict]] = []
        self.done = False
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        # When the (first) terminal event arrived (time.monotonic()).
        self.terminal_at: float | None = None
        self._cond = threading.Condition()
        self._conn: http.client.HTTPConnection | None = None
        self.finished = threading.Event()
        threading.Thread(target=self._run, daemon=True, name=f"sse {self.label}").start()

    # -- reading

    def _run(self) -> None:
        try:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.read_timeout)
            self._conn = conn
            payload = json.dumps(self.body).encode() if self.body is not None else None
            headers = {"content-type": "application/json"} if payload is not None else {}
            conn.request(self.method, self.path, body=payload, headers=headers)
            r = conn.getresponse()
            self.status = r.status
            if r.status != 200:
                self.error_body = r.read().decode("utf-8", "replace")
                return
            name, data = None, []
            while True:
                raw = r.readline()
                if not raw:
                    break
                line = raw.decode("utf-8").rstrip("\r\n")
                if line == "":
                    if data:
                        self._frame(name, "\n".join(data))
                    name, data = None, []
                elif line.startswith("event:"):
                    name = line[len("event:"):].strip()
                elif line.startswith("data:"):
                    data.append(line[len("data:"):].lstrip(" "))
                # Lines starting with ':' are keep-alive comments.
            if data:
                self._frame(name, "\n".join(data))
        except BaseException as e:  # noqa: BLE001 - reported by check()
            self.exception = e
        finally:
            self.ended_at = time.monotonic()
            self.finished.set()
            with self._cond:
                self._cond.notify_all()

    def _frame(self, name: str | None, data: str) -> None:
        with self._cond:
            if data == "[DONE]":
                self.done = True
            else:
                event = json.loads(data)
                self.events.append((name, event))
                if event.get("type") in TERMINAL_EVENTS and self.terminal_at is None:
                    self.terminal_at = time.monotonic()
            self._cond.notify_all()

    # -- waiting

    def wait_for(self, pred, timeout: float, what: str) -> None:
        """Wait until `pred(self)`; fail when the stream ends first or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self):
                left = deadline - time.monotonic()
                if self.finished.is_set():
                    raise AssertionError(f"{self.label}: ended before {what}: {self.summary()}")
                if left <= 0:
                    raise AssertionError(f"{self.label}: no {what} within {timeout:.0f}s: {self.summary()}")
                self._cond.wait(min(left, 0.2))

    def wait_deltas(self, n: int, timeout: float = 60) -> None:
        self.wait_for(lambda s: len(s.deltas()) >= n, timeout, f"{n} text deltas")

    def join(self, timeout: float) -> "SseStream":
        """Wait for the end of the stream; after `timeout` the connection is
        closed and the test fails (a stream that never ends is a failure)."""
        if not self.finished.wait(timeout):
            self.close()
            raise AssertionError(f"{self.label}: did not end within {timeout:.0f}s: {self.summary()}")
        return self

    def close(self) -> None:
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- what the client saw

    @property
    def types(self) -> list[str]:
        return [d.get("type", n) for n, d in self.events]

    def deltas(self) -> list[str]:
        return [d["delta"] for _, d in list(self.events) if d.get("type") == "response.output_text.delta"]

    @property
    def text(self) -> str:
        return "".join(self.deltas())

    def terminals(self) -> list[dict]:
        return [d for _, d in self.events if d.get("type") in TERMINAL_EVENTS]

    def errors(self) -> list[dict]:
        return [d for _, d in self.events if d.get("type") == "error"]

    @property
    def response_id(self) -> str | None:
        for _, d in self.events:
            if isinstance(d.get("response"), dict) and d["response"].get("id"):
                return d["response"]["id"]
        return None

    @property
    def final(self) -> dict | None:
        """The response object of the (last) terminal event."""
        t = self.terminals()
        return t[-1]["response"] if t else None

    def summary(self) -> str:
        kinds = self.types
        head = kinds[:3]
        tail = kinds[-4:] if len(kinds) > 3 else []
        return (f"status={self.status} events={len(kinds)} {head}...{tail} done={self.done} "
                f"text={self.text[-80:]!r} exception={self.exception!r} body={self.error_body[:300]!r}")

    def check_one_terminal(self, statuses: set[str]) -> dict:
        """The stream ended cleanly: HTTP 200, exactly one terminal event, as the
        last event, with one of `statuses`, then `[DONE]`; returns its response."""
        assert self.finished.is_set(), f"{self.label}: still open: {self.summary()}"
        assert self.exception is None, f"{self.label}: broke: {self.summary()}"
        assert self.status == 200, f"{self.label}: {self.summary()}"
        terminals = self.terminals()
        assert len(terminals) == 1, f"{self.label}: {len(terminals)} terminal events: {self.summary()}"
        assert self.events[-1][1] is terminals[0], f"{self.label}: events after the terminal one: {self.summary()}"
        assert self.done, f"{self.label}: no [DONE] after the terminal event: {self.summary()}"
        seqs = [d.get("sequence_number") for _, d in self.events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"{self.label}: sequence numbers {seqs}"
        final = terminals[0]["response"]
        assert final["status"] in statuses, f"{self.label}: ended {final['status']} ({final.get('error')}), " \
                                            f"expected {sorted(statuses)}: {self.summary()}"
        return final


def create_stream(base_url: str, body: dict, label: str = "") -> SseStream:
    return SseStream(base_url, "POST", "/v1/responses", {**body, "stream": True}, label=label or body.get("input", "")[:30])


def follow_stream(base_url: str, response_id: str, starting_after: int | None = None, label: str = "") -> SseStream:
    q = "" if starting_after is None else f"&starting_after={starting_after}"
    return SseStream(base_url, "GET", f"/v1/responses/{response_id}?stream=true{q}", label=label or f"follow {response_id}")


# ------------------------------------------------------------------ records

def output_text(response: dict) -> str:
    """The text of a response object's output messages."""
    return "".join(part.get("text", "") for item in response.get("output") or [] if item.get("type") == "message"
                   for part in item.get("content") or [] if part.get("type") == "output_text")


def get_record(base_url: str, response_id: str, timeout: float = 10) -> dict:
    r = Http(base_url, timeout=timeout).get(f"/v1/responses/{response_id}")
    assert r.status_code == 200, f"GET {response_id}: {r.status_code} {r.text[:300]}"
    return r.json()


def wait_terminal(base_url: str, ids, timeout: float) -> dict[str, dict]:
    """Poll until every response in `ids` is terminal (or `timeout` passes);
    returns the last record read of each (the caller asserts on them)."""
    deadline = time.monotonic() + timeout
    records: dict[str, dict] = {}
    while True:
        for i in ids:
            if i in records and records[i].get("status") in TERMINAL_STATUSES:
                continue
            try:
                records[i] = get_record(base_url, i, timeout=5)
            except (AssertionError, OSError) as e:
                records[i] = {"id": i, "status": f"unreadable: {e}"}
        if all(r.get("status") in TERMINAL_STATUSES for r in records.values()) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def record_mismatch(record: dict, status: str, text: str | None) -> str | None:
    """Why a stored record differs from what its client saw (None when it does not)."""
    if record.get("status") != status:
        return f"{record.get('id')}: stored status {record.get('status')!r}, client saw {status!r}"
    if text is not None and output_text(record) != text:
        return (f"{record.get('id')}: stored output ({len(output_text(record))} chars) {output_text(record)[:80]!r}... "
                f"differs from the client's text ({len(text)} chars) {text[:80]!r}...")
    return None


def assert_record_matches(base_url: str, stream: SseStream, with_text=("completed", "incomplete", "failed")) -> dict:
    """GET the stream's record: same status as its terminal event, and the
    same output text as the client's deltas (for the statuses in `with_text`)."""
    final = stream.final
    assert final is not None, f"{stream.label}: no terminal event: {stream.summary()}"
    record = get_record(base_url, final["id"])
    text = stream.text if final["status"] in with_text else None
    problem = record_mismatch(record, final["status"], text)
    assert problem is None, problem
    if text is not None:
        assert output_text(final) == text, f"{stream.label}: terminal event's output differs from the deltas"
    return record


def logged_text(base_url: str, response_id: str) -> tuple[str, list[str]]:
    """A finished background response's event log replayed from the start:
    (text of its deltas, event types)."""
    s = follow_stream(base_url, response_id, starting_after=0).join(30)
    return s.text, s.types


# ------------------------------------------------------------------ workers

def worker_load(url: str) -> dict:
    r = Http(url, timeout=5).get("/load")
    assert r.status_code == 200, r.text
    return r.json()


def busy_worker(workers, timeout: float = 20):
    """The one worker (of `workers`, each with `.url`) running a sequence now."""
    deadline = time.monotonic() + timeout
    while True:
        running = [worker_load(w.url)["running"] for w in workers]
        busy = [w for w, n in zip(workers, running) if n > 0]
        if len(busy) == 1:
            return busy[0]
        assert time.monotonic() < deadline, f"no single busy worker: running={running}"
        time.sleep(0.05)


def metric_sum(url: str, name: str, **labels: str) -> float:
    """Sum of one metric's samples on `url`/metrics whose labels include `labels`."""
    text = Http(url, timeout=5).get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


# ------------------------------------------------------------------ redis

class RedisAof:
    """A real redis-server with an append-only file, on a free port (never
    6379), that can be SIGKILLed and restarted on the same port and directory
    (so it reloads its AOF)."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="spindle-redis-aof-")
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> None:
        # appendfsync everysec: a SIGKILLed redis-server loses nothing it
        # acknowledged (its AOF is written to the kernel before it replies);
        # only a machine crash would lose the last second.
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "everysec", "--daemonize", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ping():
            assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.05)

    def ping(self) -> bool:
        """True when it answers PING with PONG (not while it loads its AOF)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def signal(self, sig: int) -> None:
        """SIGSTOP freezes it (commands time out; what they sent waits in its
        socket buffers), SIGCONT thaws it."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(sig)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
