"""Prefect's temporary server, tied to the process that needs it.

With no PREFECT_API_URL, Prefect 3.9 starts a temporary API server (a uvicorn child process,
~220 MB: prefect/server/api/server.py `SubprocessASGIServer`) and stops it from an `atexit`
hook. A process that is SIGKILLed (OOM killer, `kill -9`, a lost SSH session's group) runs no
`atexit`, and the server lived on, orphaned. Here:

1. `start_tied_server()` starts that server early, from the calling (main) thread, with
   PR_SET_PDEATHSIG=SIGTERM: the kernel stops it as soon as its parent dies, however it dies.
   It registers as Prefect's own singleton instance, so every later `get_client()` uses it.
2. Every server started that way is recorded in `$PREFECT_HOME/intern-temp-servers/<pid>.json`;
   `reap_stale_servers()` (run by `ml-intern run` and `ml-intern gc`) stops recorded servers whose
   owner is gone, and orphaned temporary servers that were started without this module (parent
   is PID 1), in case anything ever escapes (1).

Linux only for (1); on other systems the server is still recorded and reaped on the next run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

SERVER_APP = "prefect.server.api.server:create_app"
_PR_SET_PDEATHSIG = 1


def records_dir() -> Path:
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser() / "intern-temp-servers"


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _alive(pid: int, started: float | None) -> bool:
    """The process `pid` still exists and is the one that started at `started` (no pid reuse)."""
    now = _start_time(pid)
    if now is None:
        return False
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    return started is None or abs(now - started) < 1.0


def _libc():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not Linux: no PDEATHSIG; the record and the reaper still work
        return None


def _tie_to_parent(libc, parent: int) -> None:
    """preexec_fn: SIGTERM this child when its parent dies (also if it died during the fork).
    libc is loaded before the fork: nothing is dlopen-ed in the forked child."""
    if libc is not None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def _record(server_pid: int, port: int | None) -> Path:
    folder = records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{server_pid}.json"
    me = os.getpid()
    path.write_text(json.dumps({
        "server_pid": server_pid, "server_started": _start_time(server_pid), "port": port,
        "owner_pid": me, "owner_started": _start_time(me), "host": socket.gethostname(),
        "owner_cmd": " ".join(sys.argv)[:500],
    }))
    return path


def _server_class():
    from prefect.server.api.server import SubprocessASGIServer

    class TiedServer(SubprocessASGIServer):
        """Prefect's SubprocessASGIServer, started with PR_SET_PDEATHSIG and recorded.

        The command and environment are Prefect 3.9's `_run_uvicorn_command`, unchanged."""

        def _run_uvicorn_command(self) -> subprocess.Popen:
            import prefect
            from prefect.settings import get_current_settings

            server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
            parent, libc = os.getpid(), _libc()
            proc = subprocess.Popen(
                args=[sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                      "--factory", SERVER_APP, "--host", "127.0.0.1", "--port", str(self.port),
                      "--log-level", "error", "--lifespan", "on"],
                env={**os.environ, **server_env,
                     **get_current_settings().to_environment_variables(exclude_unset=True)},
                preexec_fn=lambda: _tie_to_parent(libc, parent),
            )
            self._intern_record = _record(proc.pid, self.port)
            return proc

        def stop(self) -> None:
            record = getattr(self, "_intern_record", None)
            super().stop()
            if record is not None:
                record.unlink(missing_ok=True)

    return TiedServer


def start_tied_server(timeout: int | None = None):
    """Start Prefect's temporary server now, tied to this process; None if a server is configured
    (PREFECT_API_URL) or one is already running in this process. Call it from the main thread:
    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, get_current_settings

    if PREFECT_API_URL.value() or not get_current_settings().server.ephemeral.enabled:
        return None
    if None in SubprocessASGIServer._instances:  # Prefect's singleton for the temporary server
        return None
    server = _server_class()()  # registers itself as SubprocessASGIServer._instances[None]
    server.start(timeout=timeout)
    return server


def _terminate(proc: psutil.Process, grace: float = 10.0) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.terminate()
        try:
            proc.wait(grace)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _orphaned_temp_servers() -> list[psutil.Process]:
    """Temporary Prefect servers of this user whose parent is gone (re-parented to PID 1)."""
    found = []
    me = os.getuid()
    for proc in psutil.process_iter(["pid", "ppid", "uids", "cmdline"]):
        try:
            info = proc.info
            if info["ppid"] != 1 or not info["uids"] or info["uids"].real != me:
                continue
            if SERVER_APP not in (info["cmdline"] or []):
                continue
            if proc.environ().get("PREFECT__SERVER_EPHEMERAL") != "1":
                continue  # a `prefect server start` someone runs on purpose is never touched
            found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def reap_stale_servers(grace: float = 10.0) -> list[int]:
    """Stop temporary Prefect servers left behind by processes that died; returns their pids."""
    reaped: list[int] = []
    folder = records_dir()
    host = socket.gethostname()
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if rec.get("host") != host:
            continue  # PREFECT_HOME on shared storage: another host's record
        if _alive(rec["owner_pid"], rec.get("owner_started")):
            continue
        pid = rec["server_pid"]
        if _alive(pid, rec.get("server_started")):
            log.warning("stopping temporary Prefect server %s (port %s) left by dead process %s (%s)",
                        pid, rec.get("port"), rec["owner_pid"], rec.get("owner_cmd", "")[:100])
            _terminate(psutil.Process(pid), grace)
            reaped.append(pid)
        path.unlink(missing_ok=True)
    for proc in _orphaned_temp_servers():
        if proc.pid not in reaped:
            log.warning("stopping orphaned temporary Prefect server %s", proc.pid)
            _terminate(proc, grace)
            reaped.append(proc.pid)
    return reaped


def temp_server_pids(owner_pid: int | None = None) -> list[int]:
    """Live temporary Prefect servers (optionally only the children of `owner_pid`)."""
    pids = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "status"]):
        info = proc.info
        if SERVER_APP in (info["cmdline"] or []) and info["status"] != psutil.STATUS_ZOMBIE:
            if owner_pid is None or info["ppid"] == owner_pid:
                pids.append(info["pid"])
    return pids


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Pids still alive (zombies count as gone) after up to `timeout` seconds."""
    deadline = time.time() + timeout
    left = list(pids)
    while left and time.time() < deadline:
        left = [p for p in left if _alive(p, None)]
        if left:
            time.sleep(0.2)
    return left
