#!/bin/sh
# docker-entrypoint-initdb.d script (docker-compose.yml): runs once, after the movies schema and
# data, as the superuser. Creates the least-privilege role walcast streams with and the
# publication it reads (sql/roles.sql explains each grant), and lets the role open replication
# connections from the compose network. The password comes from the environment, never from a file
# in the repository.
set -eu

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v walcast_password="$WALCAST_PG_PASSWORD" <<'SQL'
CREATE ROLE walcast WITH LOGIN REPLICATION PASSWORD :'walcast_password';
GRANT CONNECT ON DATABASE movies TO walcast;
GRANT USAGE ON SCHEMA content TO walcast;
GRANT SELECT ON ALL TABLES IN SCHEMA content TO walcast;
ALTER DEFAULT PRIVILEGES IN SCHEMA content GRANT SELECT ON TABLES TO walcast;
CREATE PUBLICATION walcast FOR TABLES IN SCHEMA content;
SQL

# The image's pg_hba.conf admits remote clients to every database ("host all all all"), which
# covers walcast's replication connection too: a logical replication connection matches the
# database lines (`host replication` lines are for physical replication only).
