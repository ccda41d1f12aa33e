"""HAProxy as the local backend's load balancer (the part a Kubernetes Service plays).

One HAProxy process (foreground, one thread) listens on 127.0.0.1:``port`` and
spreads HTTP requests over a fixed pool of server *slots*. Slots start in
maintenance; the backend fills a slot with a replica's address through the
runtime API (the admin stats socket) once Triton reports the model ready, and
empties it again on scale-down (drain, then maintenance) or crash. Active
health checks (``GET /v2/health/ready`` every ``check_interval_ms``, one
failure marks a server down, ``on-marked-down shutdown-sessions``) take a
crashed replica out of rotation even before servesim notices the exit.

Like kube-proxy there is no retry to another replica: requests that were
routed to a replica as it died fail and are counted by the load generator.
Balancing is per request (HTTP keep-alive to the client, server picked for
every request): ``round_robin`` -> ``balance roundrobin``, ``random`` ->
``balance random``, ``least_outstanding`` -> ``balance leastconn``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from . import procs
from .errors import LoadBalancerError, PortInUseError

BALANCE = {"round_robin": "roundrobin", "random": "random", "least_outstanding": "leastconn"}
BACKEND = "triton"


def haproxy_bin() -> str:
    b = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    if not b:
        raise LoadBalancerError(
            "haproxy is not installed; the local backend needs it as its load balancer. "
            "Run `python -m cluster.setup` (installs it with apt-get) or `sudo apt-get install -y haproxy`.")
    return b


def haproxy_version() -> str:
    try:
        out = subprocess.run([haproxy_bin(), "-v"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].strip() if out else "unknown"
    except Exception:
        return "unknown"


def render_config(port: int, sock: str, slots: int, balance: str = "round_robin",
                  check_interval_ms: int = 500, host: str = "127.0.0.1", timeout_s: float = 120) -> str:
    if balance not in BALANCE:
        raise LoadBalancerError(f"load balancer {balance!r}: must be one of {', '.join(BALANCE)}")
    lines = [
        "global",
        f"    stats socket {sock} mode 600 level admin",
        "    nbthread 1",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        f"    timeout client {int(timeout_s)}s",
        f"    timeout server {int(timeout_s)}s",
        "    timeout http-keep-alive 60s",
        "    retries 0",
        "frontend fe",
        f"    bind {host}:{port}",
        f"    default_backend {BACKEND}",
        f"backend {BACKEND}",
        f"    balance {BALANCE[balance]}",
        "    option httpchk GET /v2/health/ready",
        "    http-check expect status 200",
        f"    default-server inter {check_interval_ms}ms fastinter {max(100, check_interval_ms // 2)}ms "
        f"downinter {check_interval_ms}ms rise 1 fall 1 on-marked-down shutdown-sessions",
    ]
    lines += [f"    server s{i} 127.0.0.1:9 check disabled" for i in range(slots)]
    return "\n".join(lines) + "\n"


class HAProxy:
    """A managed HAProxy process with ``slots`` server slots and a runtime-API client."""

    def __init__(self, workdir: str | Path, port: int = 0, slots: int = 8, balance: str = "round_robin",
                 check_interval_ms: int = 500, host: str = "127.0.0.1"):
        self.workdir = Path(workdir)
        self.port_fixed = port
        self.port = port
        self.slots = slots
        self.balance = balance
        self.check_interval_ms = check_interval_ms
        self.host = host
        # unix socket paths are limited to ~107 bytes: keep it in a short temp dir
        self._sockdir = tempfile.mkdtemp(prefix="ss-lb-")
        self.sock = os.path.join(self._sockdir, "admin.sock")
        self.proc: subprocess.Popen | None = None
        self.slot_of: dict[str, int] = {}        # replica name -> slot
        self.log_path = str(self.workdir / "haproxy.log")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "HAProxy":
        exe = haproxy_bin()
        procs.check_port_free(self.port_fixed, "load balancer (HAProxy)", "stack.lb_port", self.host)
        self.port = self.port_fixed or procs.free_port(self.host)
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(render_config(self.port, self.sock, self.slots, self.balance, self.check_interval_ms,
                                     self.host))
        chk = subprocess.run([exe, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
        if chk.returncode != 0:
            raise LoadBalancerError(f"haproxy rejected its generated config {cfg}:\n{chk.stdout}{chk.stderr}")
        with open(self.log_path, "ab") as log:
            self.proc = procs.spawn([exe, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                out = procs.tail(self.log_path, 10)
                procs.stop(self.proc)
                if "cannot bind" in out.lower() or "address already in use" in out.lower():
                    raise PortInUseError(f"load balancer (HAProxy): port {self.host}:{self.port} is "
                                               f"already in use (set stack.lb_port: 0 to pick a free port)")
                raise LoadBalancerError(f"haproxy exited at start (code {self.proc.returncode}):\n{out}")
            if os.path.exists(self.sock):
                try:
                    self.command("show info")
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise LoadBalancerError(f"haproxy did not come up within {timeout:.0f} s; log {self.log_path}")
            time.sleep(0.05)
        return self

    # -- runtime API
    def command(self, cmd: str, timeout: float = 2.0) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.sock)
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        return b"".join(chunks).decode("utf-8", "replace")

    def _free_slot(self) -> int:
        used = set(self.slot_of.values())
        for i in range(self.slots):
            if i not in used:
                return i
        raise LoadBalancerError(f"all {self.slots} load balancer slots are in use")

    def add(self, name: str, host: str, port: int) -> int:
        """Put replica ``name`` at ``host:port`` into rotation (health checks on)."""
        slot = self._free_slot()
        self.slot_of[name] = slot
        srv = f"{BACKEND}/s{slot}"
        for c in (f"set server {srv} addr {host} port {port}", f"set server {srv} weight 1",
                  f"set server {srv} state ready", f"enable health {srv}"):
            out = self.command(c).strip()
            if out and "changed" not in out.lower() and "no need" not in out.lower():
                raise LoadBalancerError(f"haproxy runtime API: '{c}' -> {out}")
        return slot

    def wait_up(self, name: str, timeout: float = 5.0) -> bool:
        """Wait until HAProxy's health check reports the replica UP (it then receives traffic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server_stats().get(name, {}).get("status", "").startswith("UP"):
                return True
            time.sleep(0.05)
        return False

    def drain(self, name: str) -> None:
        """No new requests to ``name``; requests in flight finish."""
        if name in self.slot_of:
            self.command(f"set server {BACKEND}/s{self.slot_of[name]} state drain")

    def remove(self, name: str) -> None:
        slot = self.slot_of.pop(name, None)
        if slot is not None and self.alive():
            self.command(f"set server {BACKEND}/s{slot} state maint")

    def server_stats(self) -> dict[str, dict]:
        """Per replica: status, scur (current sessions), qcur (queued), stot (total), ..."""
        txt = self.command("show stat")
        lines = [ln for ln in txt.splitlines() if ln.strip()]
        if not lines or not lines[0].startswith("# "):
            return {}
        hdr = lines[0][2:].split(",")
        by_slot = {}
        for ln in lines[1:]:
            row = dict(zip(hdr, ln.split(",")))
            if row.get("pxname") == BACKEND and row.get("svname", "").startswith("s"):
                try:
                    by_slot[int(row["svname"][1:])] = row
                except ValueError:
                    pass
        return {name: by_slot[s] for name, s in self.slot_of.items() if s in by_slot}

    def busy(self, name: str) -> int:
        r = self.server_stats().get(name)
        if not r:
            return 0
        return int(r.get("scur") or 0) + int(r.get("qcur") or 0)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, 5)
            self.proc = None
        shutil.rmtree(self._sockdir, ignore_errors=True)
