#!/usr/bin/env bash
# Make sure the local services the tests talk to (PostgreSQL, Redis) are up (start any that is down) and that the
# PostgreSQL server has PostGIS (Debian's package for the running major version).
set -euo pipefail

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q; }
major="$(ls /etc/postgresql | sort -V | tail -n1)"

if [ ! -f "/usr/share/postgresql/${major}/extension/postgis.control" ]; then
  echo "installing PostGIS for PostgreSQL ${major}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "postgresql-${major}-postgis-3" >/dev/null
fi

if ! pg_up; then
  echo "starting PostgreSQL ${major}"
  pg_ctlcluster --skip-systemctl-redirect "${major}" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
pg_up || { echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1; }
psql -h 127.0.0.1 -U postgres -d postgres -qAtc "SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'" | grep -q 1 \
  || { echo "PostGIS is not available to PostgreSQL ${major}" >&2; exit 1; }
echo "PostgreSQL ${major} is up with PostGIS available"

# Redis: the Celery broker of tests/test_operations_celery.py.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis"
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save "" >/dev/null
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { echo "Redis is not reachable on 127.0.0.1:6379" >&2; exit 1; }
echo "Redis is up"
