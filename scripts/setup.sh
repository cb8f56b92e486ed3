#!/usr/bin/env bash
# Prepares this checkout on a fresh machine, idempotently: a virtual environment (.venv) with every pinned
# dependency, and RabbitMQ and PostgreSQL answering on 127.0.0.1. Sourced by scripts/run.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${WARP_VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  links=()
  # torch 2.13.0 must come from a local CPU wheel: from the index it drags in gigabytes of CUDA.
  [ -d /opt/wheels ] && links=(--find-links /opt/wheels)
  echo "setup: installing dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${links[@]}" torch==2.13.0
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${links[@]}" -e ".[all,test]"
  touch "$stamp"
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {  # name port seconds
  for _ in $(seq "$3"); do port_open "$2" && return 0; sleep 1; done
  echo "setup: $1 did not answer on 127.0.0.1:$2 within $3 s" >&2
  return 1
}

if [ -z "${WARP_TEST_DATABASE_URL:-}" ] && ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    echo "setup: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  else
    echo "setup: PostgreSQL is not running and not installed; install it (apt-get install postgresql) or set WARP_DATABASE_URL/WARP_TEST_DATABASE_URL" >&2
    exit 1
  fi
  wait_for_port PostgreSQL 5432 60
fi

if [ -z "${WARP_TEST_BROKER_URL:-}" ] && ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null; then
    echo "setup: starting RabbitMQ"
    rabbitmq-server -detached || true
  else
    echo "setup: RabbitMQ is not running and not installed; install it (apt-get install rabbitmq-server) or set WARP_BROKER_URL/WARP_TEST_BROKER_URL" >&2
    exit 1
  fi
  wait_for_port RabbitMQ 5672 90
fi
