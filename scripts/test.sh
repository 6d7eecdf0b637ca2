#!/usr/bin/env bash
# The project's test command: installs everything (scripts/install.sh), makes sure PostgreSQL runs, checks the
# import contracts (lint-imports), then runs pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/ensure_postgres.sh
export TOTALREG_TEST_STRICT=1  # a missing Orthanc, PostgreSQL or Chromium fails the run (tests/tools.py require)
export TOTALREG_TEST_PG="${TOTALREG_TEST_PG:-postgresql://postgres@127.0.0.1:5432/test}"
lint-imports  # the import contracts of pyproject.toml ([tool.importlinter]): fails on a forbidden import
set +e
python3 -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when no test was selected; that is a failure of the suite, not a pass.
exit $rc
