"""Start, list and stop ml-intern's long-running processes (workers) so that signals work.

    python deployments/proc.py start --dir DIR --name NAME -- COMMAND [ARGS...]
    python deployments/proc.py stop  --dir DIR [--timeout 15]
    python deployments/proc.py status --dir DIR

Why: `cmd &` from a non-interactive shell starts `cmd` with SIGINT ignored, and a Prefect worker
answers SIGTERM by sending itself SIGINT ("Received SIGTERM. Sending SIGINT..."), which then did
nothing: the workers never stopped. `start` runs COMMAND in a new session (its own process
group), with SIGINT/SIGTERM/SIGHUP/SIGQUIT at their defaults and no blocked signals, stdin from
/dev/null, output to DIR/NAME.log, and its pid in DIR/NAME.pid. It also puts
INTERN_PROC_GROUP=<DIR> in COMMAND's environment, which every descendant inherits: flow runs
(started by Prefect in sessions of their own), training processes, any sidecar a flow run spawns.

`stop` sends SIGTERM to every process of DIR at once: the started ones, their process groups,
their descendants, and every process of this user whose environment carries INTERN_PROC_GROUP=
<DIR> (so also re-parented or re-sessioned ones); whatever is left after --timeout seconds gets
SIGKILL. Running experiments are killed: their MLflow runs are marked interrupted and re-run
when the controller resumes. Linux (/proc); needs psutil (a dependency of accelerate).

To run another long-lived process with the workers (e.g. a per-GPU training sidecar), start it
with `proc.py start` from deployments/start_workers.sh, or let a worker's flow run spawn it with
the environment it inherited (keep INTERN_PROC_GROUP): `stop` finds it either way.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil

TAG = "INTERN_PROC_GROUP"
RESET = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE)


def _tag(folder: Path) -> str:
    return str(folder.resolve())


def _pidfile(folder: Path, name: str) -> Path:
    return folder / f"{name}.pid"


def _meta(folder: Path, name: str) -> Path:
    return folder / f"{name}.proc.json"


def _ours(proc: psutil.Process, tag: str) -> bool:
    try:
        return proc.environ().get(TAG) == tag
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _live(pid: int, tag: str) -> psutil.Process | None:
    """The process `pid` if it is alive and one of ours (not a recycled pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:
        return None
    return proc if _ours(proc, tag) else None


def _exec_child(cmd: list[str], log: Path, tag: str) -> None:
    """In the forked child: a new session, default signal handling, then exec."""
    os.setsid()
    for sig in RESET:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    devnull = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(devnull, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.environ[TAG] = tag
    # The started process (a Prefect worker) owns the persistent training workers its flow runs
    # start (mlintern.worker): they outlive each flow run and exit when it is gone.
    os.environ["INTERN_WORKER_OWNER_PID"] = str(os.getpid())
    try:
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        os.write(2, f"proc.py: cannot run {cmd[0]}: {exc}\n".encode())
        os._exit(127)


def start(folder: Path, name: str, cmd: list[str]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    tag = _tag(folder)
    pidfile = _pidfile(folder, name)
    if pidfile.exists():
        try:
            running = _live(int(pidfile.read_text().strip()), tag)
        except ValueError:
            running = None
        if running is not None:
            print(f"{name} is already running (pid {running.pid}); stop it first")
            return 0
    log = folder / f"{name}.log"
    pid = os.fork()
    if pid == 0:
        _exec_child(cmd, log, tag)
    pidfile.write_text(f"{pid}\n")
    _meta(folder, name).write_text(json.dumps({"pid": pid, "cmd": cmd, "started": time.time()}))
    time.sleep(0.5)
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print(f"{name} exited at once (status {status}); see {log}", file=sys.stderr)
        return 1
    print(f"started {name} (pid {pid}, log {log})")
    return 0


def members(folder: Path) -> list[psutil.Process]:
    """Every live process that belongs to this folder's workers."""
    tag = _tag(folder)
    found: dict[int, psutil.Process] = {}
    roots = []
    for pidfile in folder.glob("*.pid"):
        try:
            proc = _live(int(pidfile.read_text().strip()), tag)
        except ValueError:
            continue
        if proc is not None:
            roots.append(proc)
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}  # never this stop command
    for proc in psutil.process_iter():
        if proc.pid not in me and _ours(proc, tag):
            roots.append(proc)
    for root in roots:
        found[root.pid] = root
        try:  # descendants, also those that cleared their environment
            for child in root.children(recursive=True):
                found.setdefault(child.pid, child)
            pgid = os.getpgid(root.pid)
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
        if pgid == root.pid:  # a process group leader we started: its whole group
            for proc in psutil.process_iter():
                try:
                    if proc.pid not in me and os.getpgid(proc.pid) == pgid:
                        found.setdefault(proc.pid, proc)
                except (ProcessLookupError, psutil.NoSuchProcess):
                    continue
    alive = []
    for proc in found.values():
        try:
            if proc.pid not in me and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    return alive


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def stop(folder: Path, timeout: float) -> int:
    if not folder.exists():
        print(f"nothing to stop: {folder} does not exist")
        return 0
    procs = members(folder)
    if not procs:
        print(f"no process of {folder} is running")
    signaled: set[int] = set()
    deadline = time.time() + timeout
    while procs and time.time() < deadline:
        # one SIGTERM each (a Prefect worker takes a second SIGTERM as SIGKILL), also to any
        # process spawned while the others were stopping
        fresh = [p for p in procs if p.pid not in signaled]
        _signal_all(fresh, signal.SIGTERM)
        signaled |= {p.pid for p in fresh}
        time.sleep(0.3)
        procs = members(folder)
    killed = len(procs)
    if procs:
        _signal_all(procs, signal.SIGKILL)
        psutil.wait_procs(procs, timeout=5)
    left = members(folder)
    for pidfile in folder.glob("*.pid"):
        pidfile.unlink(missing_ok=True)
    for meta in folder.glob("*.proc.json"):
        meta.unlink(missing_ok=True)
    if left:
        print(f"could not stop: {[p.pid for p in left]}", file=sys.stderr)
        return 1
    print(f"stopped the workers of {folder}: {len(signaled)} process(es)"
          + (f", {killed} of them with SIGKILL after {timeout:.0f}s" if killed else ""))
    return 0


def status(folder: Path) -> int:
    procs = members(folder)
    for proc in sorted(procs, key=lambda p: p.pid):
        try:
            print(f"{proc.pid:>8} {' '.join(proc.cmdline())[:150]}")
        except psutil.NoSuchProcess:
            pass
    return 0 if procs else 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p_start = sub.add_parser("start")
    p_start.add_argument("--dir", type=Path, required=True)
    p_start.add_argument("--name", required=True)
    p_start.add_argument("cmd", nargs=argparse.REMAINDER)
    p_stop = sub.add_parser("stop")
    p_stop.add_argument("--dir", type=Path, required=True)
    p_stop.add_argument("--timeout", type=float, default=15.0, help="seconds before SIGKILL")
    p_status = sub.add_parser("status")
    p_status.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.action == "start":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("start: give the command after --")
        return start(args.dir, args.name, cmd)
    if args.action == "stop":
        return stop(args.dir, args.timeout)
    return status(args.dir)


if __name__ == "__main__":
    sys.exit(main())
