"""Services (webserver, daemon, workers) started in their own session and stopped by process group,
shared by the operations tests and benchmarks: a plain SIGTERM to the leader leaves its children."""

import os
import signal
import subprocess
import time
from pathlib import Path
from tests.support.paths import REPO



def start_group(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """A process in its own session (its own process group), output to `log`, so the whole tree can be stopped."""
    with open(log, "wb") as handle:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the process group, SIGKILL if it is still there after `timeout`; waits for the group to go."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.time() + wait
        while group_alive(pgid) and time.time() < deadline:  # code servers and run workers of that group
            time.sleep(0.2)
        if not group_alive(pgid):
            return


def tail(log: Path, lines: int = 40) -> str:
    """The last lines of a log file, for failure messages."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"
