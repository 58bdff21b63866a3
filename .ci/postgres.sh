# Sourced by .ci/run: make sure a PostgreSQL server answers on 127.0.0.1:5432 and export its URL for the tests
# (BATCHER_TEST_PG_URL). On this project's machines one usually runs already, with trust authentication and a
# database `test`; elsewhere this installs Debian's server, starts it and gives the postgres role a password.
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
if ! command -v pg_isready >/dev/null 2>&1 || ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  version=$(ls /etc/postgresql | sort -V | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
pg_up || { echo ".ci/postgres.sh: no PostgreSQL server on 127.0.0.1:5432" >&2; exit 1; }
if [ -z "${BATCHER_TEST_PG_URL:-}" ]; then
  if psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
    export BATCHER_TEST_PG_URL=postgresql://postgres@127.0.0.1:5432/test
  else  # a fresh install asks for a password over TCP: set one, and make the database
    su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    su postgres -c "createdb test" 2>/dev/null || true
    export BATCHER_TEST_PG_URL=postgresql://postgres:postgres@127.0.0.1:5432/test
  fi
fi
echo "PostgreSQL for the tests: ${BATCHER_TEST_PG_URL%%@*}@${BATCHER_TEST_PG_URL#*@}" | sed 's/:[^:@/]*@/:***@/'
