#!/usr/bin/env bash
# Runs warp-loop as supervised local processes against RabbitMQ and PostgreSQL on this host: sets up the
# environment, creates the database, migrates it, and starts every service in the Procfile (Ctrl-C stops all).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh

export WARP_DATABASE_URL=${WARP_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/warp}
export WARP_BROKER_URL=${WARP_BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/}
# A short training budget so the demo (python -m tools.demo) shows a release within minutes; compose and
# production keep the 50-minute default. Set WARP_BUDGET_MINUTES to override.
export WARP_BUDGET_MINUTES=${WARP_BUDGET_MINUTES:-3}

"$VENV/bin/python" - <<'PY'
import asyncio, os
import asyncpg
from sqlalchemy.engine import make_url

url = make_url(os.environ["WARP_DATABASE_URL"])
async def ensure_database():
    admin = await asyncpg.connect(url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False))
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database):
            await admin.execute(f'CREATE DATABASE "{url.database}"')
            print(f"run: created database {url.database}")
    finally:
        await admin.close()
asyncio.run(ensure_database())
PY
"$VENV/bin/python" -m migrations

export PATH="$PWD/$VENV/bin:$PATH"
echo "run: ingest on http://${WARP_HOST:-127.0.0.1}:${WARP_PORT:-8000} (API docs at /docs); Ctrl-C stops everything"
exec honcho start -f Procfile
