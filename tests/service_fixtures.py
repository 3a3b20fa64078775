"""Helpers to run the real deletion service (``obliviate serve``) as a subprocess on a free loopback port and talk
to it over HTTP (tests/test_service_api.py)."""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
# small and fast: 2 SISA shards x 2 slices, no oracle retrain in the verification (the exact check still runs)
FAST_SETTINGS = ("verify_oracle=false", "shards=2", "slices=2")
TERMINAL = ("verified", "failed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_env(token: str | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OBLIVIATE_API_TOKEN", None)
    if token is not None:
        env["OBLIVIATE_API_TOKEN"] = token
    return env


def serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "obliviate", "serve", *map(str, args)]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    token: str | None
    data_dir: Path
    log: Path
    clients: list = field(default_factory=list)

    def client(self, token: str | None | bool = True, **kw) -> httpx.Client:
        """An httpx client; ``token=True`` the server's token, ``None``/``False`` none, a string that string."""
        tok = self.token if token is True else (token or None)
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kw)
        self.clients.append(c)
        return c

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 40.0) -> None:
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_server(data_dir: Path, *extra: str, token: str | None = None, insecure: bool = False,
                 settings: tuple[str, ...] = FAST_SETTINGS, timeout: float = 120.0, attempts: int = 3) -> Server:
    """Start ``obliviate serve`` on a free loopback port and wait until it answers *this* server's authenticated
    ``/v1/ledger/verify`` (another process could grab the port between our probe and uvicorn's bind: then the
    server exits and we retry on another port)."""
    if token is None and not insecure:
        token = "test-" + secrets.token_urlsafe(16)
    data_dir = Path(data_dir)
    log = data_dir.parent / f"{data_dir.name}.serve.log"
    sets = [a for s in settings for a in ("--set", s)]
    last = ""
    for _ in range(attempts):
        port = free_port()
        args = ["--data-dir", data_dir, "--port", port, *sets, *extra] + (["--insecure-dev"] if insecure else [])
        with open(log, "w") as fh:
            proc = subprocess.Popen(serve_cmd(*args), cwd=REPO, env=serve_env(None if insecure else token),
                                    stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        server = Server(proc, f"http://127.0.0.1:{port}", None if insecure else token, data_dir, log)
        headers = {"Authorization": f"Bearer {token}"} if token and not insecure else {}
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=server.url, headers=headers, timeout=5.0) as c:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if c.get("/v1/ledger/verify").status_code == 200:
                        return server
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        server.stop()
        last = server.log_text()
        if "address already in use" not in last.lower() and "cannot listen" not in last:
            break
    raise RuntimeError(f"obliviate serve did not come up; its output:\n{last[-4000:]}")


class RestartableServer:
    """``obliviate serve`` as a subprocess that can be SIGKILLed and restarted on the same data dir and port (the
    kill -9 test and the load benchmark)."""

    def __init__(self, data: Path, db: str | None, settings, token: str, logs: Path):
        self.data, self.db, self.settings, self.token, self.logs = Path(data), db, list(settings), token, Path(logs)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path: Path | None = None

    def spawn(self) -> None:
        self.starts += 1
        self.log_path = self.logs / f"serve-{self.starts}.log"
        args = ["--data-dir", self.data, "--port", self.port, "--quiet", *(["--db", self.db] if self.db else []),
                *[a for s in self.settings for a in ("--set", s)]]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(serve_cmd(*args), stdout=log, stderr=subprocess.STDOUT,
                                         env=serve_env(self.token))

    def start(self, timeout: float = 120) -> float:
        """Spawn and wait until ``/healthz`` answers (after the restart's recovery); return the seconds taken."""
        t0 = time.monotonic()
        self.spawn()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"obliviate serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"obliviate serve did not come up in {timeout} s:\n{self.log()}")

    def wait_file(self, path: Path, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if path.exists():
                return True
            time.sleep(0.005)
        return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self) -> None:
        """Graceful stop (SIGTERM: uvicorn shuts down, the worker thread is joined)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""


# -- talking to it ----------------------------------------------------------------------------------------------
def counts(client: httpx.Client) -> dict[str, int]:
    """Requests (by status, from /v1/status) and ledger events (from /v1/ledger/verify)."""
    health = client.get("/v1/status").json()["requests"]
    verify = client.get("/v1/ledger/verify").json()
    return {"requests": sum(health.values()), "events": verify["events"], "verify_requests": verify["requests"]}


def all_requests(client: httpx.Client, **params) -> list[dict]:
    """Every request in the ledger listing, following next_cursor."""
    out, cursor = [], 0
    while True:
        page = client.get("/v1/deletions", params={**params, "limit": 500, "cursor": cursor})
        page.raise_for_status()
        body = page.json()
        out += body["items"]
        if body["next_cursor"] is None:
            return out
        cursor = body["next_cursor"]


def settle(client: httpx.Client, timeout: float = 90.0) -> dict[str, int]:
    """Wait until the worker has finished every request (nothing queued, running or applied), so the ledger stays
    still while a test compares counts."""
    deadline = time.monotonic() + timeout
    while True:
        health = client.get("/v1/status").json()["requests"]
        busy = {k: v for k, v in health.items() if k not in TERMINAL and v}
        if not busy:
            return health
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker did not finish within {timeout:.0f} s: {health}")
        time.sleep(0.2)


def wait_status(client: httpx.Client, rid: str, statuses=TERMINAL, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/deletions/{rid}")
        assert r.status_code == 200, r.text
        body = r.json()
        if body["status"] in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"request {rid} still {body['status']} after {timeout:.0f} s")
        time.sleep(0.2)
