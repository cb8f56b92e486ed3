#!/usr/bin/env bash
# Runs the whole test suite against real RabbitMQ and PostgreSQL, setting everything up first (what CI runs).
# Extra arguments go to pytest (e.g. scripts/test.sh tests/shared -k outbox). Every test has one tier marker:
#   scripts/test.sh -m unit            the fast tier: pure code and in-memory fakes, under 30 s
#   scripts/test.sh -m "not system"    unit and integration (real servers), without the multi-process system tests
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh

status=0
"$VENV/bin/python" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure, not a pass" >&2
  exit 1
fi
exit "$status"
