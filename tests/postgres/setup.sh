#!/usr/bin/env bash
# Install Debian's PostgreSQL, start it on 127.0.0.1 and create the role and
# database of the @pytest.mark.postgres tests. Needs root and apt-get; run by
# .ci/run, never by the test suite. Safe to run again: it changes only what
# is missing, and takes well under a second when everything is there.
#
#   127.0.0.1:5432  database carepost_test, owned by role carepost_test
#                   (password carepost_test, scram-sha-256 over TCP)
#
# The tests read CAREPOST_TEST_POSTGRES_URL and default to this database.
set -euo pipefail

ROLE=carepost_test
DATABASE=carepost_test
PORT=5432

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)

if ! pg_lsclusters -h | awk '{print $1 "/" $2}' | grep -qx "$VERSION/main"; then
    pg_createcluster "$VERSION" main --port "$PORT" >/dev/null
fi

# Listen on loopback only. Debian's pg_hba.conf already lets a role with a
# password log in over TCP from 127.0.0.1.
CONF_D=/etc/postgresql/$VERSION/main/conf.d
mkdir -p "$CONF_D"
echo "listen_addresses = '127.0.0.1'" > "$CONF_D/carepost-test.conf"
if pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $4}' \
        | grep -qx online; then
    listening=$(su postgres -c "psql -p $PORT -Atc 'SHOW listen_addresses'")
    if [ "$listening" != 127.0.0.1 ]; then
        pg_ctlcluster "$VERSION" main restart
    fi
else
    pg_ctlcluster "$VERSION" main start
fi

psql_admin() {
    su postgres -c "psql -p $PORT -v ON_ERROR_STOP=1 -Atq $*"
}
if [ -z "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'\"")" ]; then
    psql_admin "-c \"CREATE ROLE $ROLE LOGIN PASSWORD '$ROLE'\""
fi
if [ -z "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname = '$DATABASE'\"")" ]; then
    psql_admin "-c \"CREATE DATABASE $DATABASE OWNER $ROLE\""
fi
echo "== postgresql $VERSION on 127.0.0.1:$PORT, database $DATABASE for role $ROLE"
