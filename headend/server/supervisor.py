"""``headend serve``: the supervisor.

Starts the store process, then W worker processes that share the meter port through
SO_REUSEPORT; restarts any that die (with a growing delay, reported in the log); on
SIGTERM or ``headend ctl drain`` stops the workers first (they stop accepting, close
connections and flush the spool), then the store (which ingests what is left), and
exits 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from headend import profiles
from headend.config import Config
from headend.errors import HeadendError
from headend.keys import load_master_key
from headend.server.access import lock_down
from headend.server.admin import AdminClient, ServerNotRunning

log = logging.getLogger("headend.supervisor")


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started: float = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, close_fds=True)
        self.started = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stopping = False

    def _prepare(self) -> Path:
        cfg = self.cfg
        # Everything the server and its children create is the service user's alone:
        # the settings (with secrets) in run/, the spool, the store's files, logs.
        os.umask(0o077)
        for d in (cfg.data_dir, cfg.run_dir, cfg.spool_dir, cfg.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        lock_down(cfg)
        try:
            AdminClient(cfg.admin_socket, timeout=2).call("ping")
        except ServerNotRunning:
            pass
        else:
            raise HeadendError(f"a server is already running on {cfg.data_dir}")
        load_master_key(cfg, create=True)
        profiles.load_all(cfg.profiles_dir)  # fail now, with the file's name
        path = cfg.run_dir / "config.json"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # an older one may be world-readable; the new one is 0600
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(cfg.to_dict(), indent=2))
        return path

    def _link_child(self) -> Child | None:
        """A region or centre node's NATS server (JetStream, the link's engine),
        configured from the node's settings; standalone nodes have none."""
        cfg = self.cfg
        if cfg.node.role == "standalone":
            return None
        from headend.link.keys import NodeSecrets, load_node_key, public_hex
        from headend.link.natsconf import write_server_config

        program = shutil.which(cfg.link.nats_server)
        if program is None:
            raise HeadendError(
                f"[link] nats_server {cfg.link.nats_server!r} is not installed "
                "(Debian: apt install nats-server)"
            )
        secrets = NodeSecrets.load(cfg, create=True)
        conf = write_server_config(cfg, secrets)
        log.info(
            "node %s (%s), node key %s",
            cfg.node.name,
            cfg.node.role,
            public_hex(load_node_key(cfg)),
        )
        return Child("nats", [program, "-c", str(conf)])

    def _signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("received %s: draining", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        cfg = self.cfg
        config_path = self._prepare()
        nats = self._link_child()
        py = sys.executable
        store = Child("store", [py, "-m", "headend.server.store", str(config_path)])
        workers = [
            Child(f"worker {i}", [py, "-m", "headend.server.worker", str(config_path), str(i)])
            for i in range(cfg.workers)
        ]
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        if nats is not None:
            nats.start()  # the store's link connects when it is up (and retries)
        store.start()
        # Workers start once the store listens (they would only retry until then).
        deadline = time.monotonic() + 120
        while not cfg.control_socket.exists() and store.alive() and time.monotonic() < deadline:
            if self.stopping:
                break
            time.sleep(0.05)
        if not store.alive():
            log.error(
                "the store exited at start (status %s)",
                store.proc.returncode if store.proc else "?",
            )
            return 1
        for w in workers:
            w.start()
        log.info(
            "headend serving meters on %s:%d with %d workers; data in %s",
            cfg.server.host,
            cfg.server.port,
            len(workers),
            cfg.data_dir,
        )
        children = [store, *workers, *([nats] if nats is not None else [])]
        while not self.stopping:
            for child in children:
                if child.alive() or child.proc is None:
                    continue
                now = time.monotonic()
                if child.next_start == 0.0:
                    code = child.proc.returncode
                    # Quick deaths back off (a crash loop must not spin); a child that
                    # ran for a minute restarts at once.
                    if now - child.started > 60:
                        child.restarts = 0
                    delay = min(30.0, 0.2 * (2**child.restarts))
                    child.restarts += 1
                    child.next_start = now + delay
                    log.error(
                        "%s exited with status %s; restarting in %.1f s", child.name, code, delay
                    )
                elif now >= child.next_start:
                    child.next_start = 0.0
                    child.start()
            time.sleep(0.1)
        return self._shutdown(store, workers, nats)

    def _shutdown(self, store: Child, workers: list[Child], nats: Child | None = None) -> int:
        for w in workers:
            if w.alive() and w.proc is not None:
                w.proc.send_signal(signal.SIGTERM)
        self._wait(workers, 30)
        if store.alive() and store.proc is not None:
            store.proc.send_signal(signal.SIGTERM)
        self._wait([store], 150)
        # The link's engine last: the store publishes to it until it stops.
        if nats is not None and nats.alive() and nats.proc is not None:
            nats.proc.send_signal(signal.SIGTERM)
            self._wait([nats], 30)
        log.info("headend stopped")
        return 0

    def _wait(self, children: list[Child], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for c in children:
            if c.proc is None:
                continue
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in time; killing it", c.name)
                c.proc.kill()
                c.proc.wait()
        os.sync()
