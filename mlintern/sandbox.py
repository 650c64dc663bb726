"""Run code an LLM proposed (e.g. a GRPO reward function) in a separate, locked-down process.

The child is a fresh interpreter (`python -I -S`: no site-packages, no user paths, standard
library only) that gets the source and its inputs on stdin and answers on stdout. Before it
runs any of that code it:
  - leaves the network: a new, empty network namespace (unshare CLONE_NEWNET), so not even
    loopback reaches a service; where that is not permitted the sandbox refuses to run (fails
    closed) unless INTERN_SANDBOX_ALLOW_NETWORK=1;
  - drops root to `nobody`, so evaluation files (written 0600 by the benchmark code) and
    anything else not world-readable are out of reach;
  - caps memory (RLIMIT_AS), CPU seconds and open files, in an empty temporary working folder
    with an empty environment; and a wall-clock timeout kills it.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile

CLONE_NEWNET = 0x40000000
NOBODY = 65534

_CHILD = r'''
import json, sys
req = json.loads(sys.stdin.read())
scope = {"__name__": "reward_sandbox"}
exec(compile(req["code"], "<llm-proposed>", "exec"), scope)
fn = scope.get(req["function"])
if not callable(fn):
    raise SystemExit(f"no function named {req['function']!r} in the proposed code")
out = [float(fn(**row)) for row in req["rows"]]
sys.stdout.write(json.dumps(out))
'''


class SandboxError(RuntimeError):
    """The proposed code failed, timed out, or the sandbox could not be set up."""


def _lock_down(memory_mb: int, cpu_s: int) -> None:  # runs in the child before exec
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0 and os.environ.get("INTERN_SANDBOX_ALLOW_NETWORK") != "1":
        os._exit(86)  # cannot isolate the network: refuse rather than run with it
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def _interpreter() -> str:
    """A Python the unprivileged child can execute: the system one where it exists (a venv's
    interpreter often sits under /root, which `nobody` cannot enter). Only the standard
    library is used, so any Python 3 will do."""
    if os.getuid() == 0:
        for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
            if os.access(candidate, os.X_OK):
                return candidate
    return sys.executable


def run_untrusted(code: str, function: str, rows: list[dict], *, timeout_s: float = 10.0,
                  memory_mb: int = 512) -> list[float]:
    """Call `function(**row)` for each row inside the sandbox; returns the floats it gave."""
    request = json.dumps({"code": code, "function": function, "rows": rows})
    with tempfile.TemporaryDirectory(prefix="intern-sandbox-") as cwd:
        os.chmod(cwd, 0o777)
        try:
            proc = subprocess.run(
                [_interpreter(), "-I", "-S", "-c", _CHILD], input=request, capture_output=True, text=True,
                timeout=timeout_s, cwd=cwd, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                preexec_fn=lambda: _lock_down(memory_mb, max(1, int(timeout_s))),
            )
        except subprocess.TimeoutExpired:
            raise SandboxError(f"proposed {function}() exceeded its {timeout_s:.0f}s limit and was killed") from None
    if proc.returncode == 86:
        raise SandboxError("cannot isolate the network for proposed code (unshare not permitted); "
                           "refusing to run it. Run as root or with CAP_SYS_ADMIN.")
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        raise SandboxError(f"proposed {function}() failed (exit {proc.returncode}): {' | '.join(tail)[:500]}")
    values = json.loads(proc.stdout)
    if len(values) != len(rows):
        raise SandboxError(f"proposed {function}() returned {len(values)} values for {len(rows)} rows")
    return values
