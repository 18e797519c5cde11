"""Where the repository, its test data and this interpreter's scripts are."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"  # real public imagery with provenance (tests/data/README.md)
BIN = Path(sys.executable).parent  # dagster, dagster-daemon, dagster-webserver of this environment
