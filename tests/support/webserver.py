"""A real `dagster-webserver` (or `dagster dev`) driven as the UI drives it: a free port, its GraphQL endpoint, and
waiting until it answers."""

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.support.processes import tail

STARTUP_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GraphQL:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/graphql"

    def __call__(self, query: str, **variables) -> dict:
        t0 = time.time()
        try:
            return self._post(query, variables)
        finally:
            if time.time() - t0 > 5:
                print(f"  slow GraphQL call ({time.time() - t0:.1f} s): {' '.join(query.split())[:80]}")

    def _post(self, query: str, variables: dict) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        try:
            payload = json.loads(urllib.request.urlopen(request, timeout=60).read())
        except urllib.error.HTTPError as exc:
            # The webserver answers HTTP 500 when a result holds a PythonError; the JSON body is the answer.
            body = exc.read().decode(errors="replace")
            try:
                payload = json.loads(body)
            except ValueError:
                pytest.fail(f"GraphQL HTTP {exc.code}: {body[:3000]}\nquery: {query}")
        assert not payload.get("errors"), f"{payload['errors']}\nquery: {query}"
        return payload["data"]


def wait_for_server(port: int, procs: dict, logs: dict, path: str = "/server_info") -> None:
    """Until http://127.0.0.1:<port><path> answers 200 (the Dagster webserver's /server_info by default); fails
    with a process's log if one of `procs` exits first."""
    deadline = time.time() + STARTUP_TIMEOUT
    while time.time() < deadline:
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{tail(logs[name])}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"127.0.0.1:{port} did not answer {path} within {STARTUP_TIMEOUT} s:\n"
                + "\n".join(f"{name}: {tail(log)}" for name, log in logs.items()))
