"""The `ops` harness per module: each daemon test module gets its own throwaway database, champion and daemon,
so the modules run on separate workers in any order."""

import pytest

from tests.support.daemon import running_ops


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    with running_ops(tmp_path_factory.mktemp("ops_daemon")) as harness:
        yield harness
