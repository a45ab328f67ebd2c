"""`sinfusion-server` as a child process: start it, wait until it serves, stop it gracefully.

What the demo and the integration tests do with the real server; scripts can use it the same way.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited, or did not write its port file, before it served."""


def start_server_process(args: Sequence[str], port_file: Path, timeout: float = 120.0,
                         **popen) -> tuple[subprocess.Popen, int]:
    """Run `python -m sinfusion.server.cli ARGS --port-file PORT_FILE`; return (process, port) once it serves.

    The server writes the port file atomically once it accepts calls. `popen` goes to subprocess.Popen
    (stdout, stderr, env, cwd); a piped stderr is quoted in the error when the server fails to start.
    """
    port_file = Path(port_file)
    port_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "sinfusion.server.cli", *map(str, args), "--port-file", str(port_file)]
    proc = subprocess.Popen(cmd, **popen)
    deadline = time.monotonic() + timeout
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            exited = proc.poll() is not None
            if not exited:
                proc.kill()
                proc.wait()
            detail = ""
            if proc.stderr is not None:
                err = proc.stderr.read()
                detail = ": " + (err.decode(errors="replace") if isinstance(err, bytes) else err)[-2000:]
            state = (f"exited with status {proc.returncode}" if exited
                     else f"did not serve within {timeout:g} s")
            raise ServerStartError(f"sinfusion-server {state}{detail}")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def stop_server_process(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM (the server drains its streams), then kill after `timeout` seconds; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
