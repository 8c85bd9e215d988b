-- Least-privilege setup for walcast. Run as a superuser (or the owner of the tables), connected
-- to the database walcast streams from. Replace `app`, the schema and the table names with yours.
-- deploy/postgres/10-walcast-role.sh does the same for the docker-compose demo.
--
-- What walcast does with the server, and the right each needs:
--   replication connection, START_REPLICATION, creating the slot      REPLICATION attribute
--   pg_replication_slot_advance (final position at a clean stop)      REPLICATION attribute
--   snapshots, `walcast check`, primary-key lookups (pg_index)        SELECT on the tables, USAGE on the schema
--   slot monitor (pg_replication_slots, pg_current_wal_lsn())         nothing: readable by every role
--   heartbeat, mode "message" (pg_logical_emit_message)               nothing: executable by every role
--   heartbeat, mode "table"                                           CREATE on its schema (or create the table
--                                                                     yourself, owned by walcast, and publish it)
--   HA lease (pg_try_advisory_lock, [ha] enabled)                     nothing: executable by every role
-- walcast needs no superuser, no table ownership, and no write access to any published table.

-- LOGIN + REPLICATION. Prefer a password from your secret store; walcast reads it from the
-- environment (source.password_env) or a file (source.password_file), never from its config.
-- walcast opens a handful of connections (replication, slot monitor / heartbeat, catalog
-- lookups, HA lease, final confirmation): a CONNECTION LIMIT below 10 can starve it.
CREATE ROLE walcast WITH LOGIN REPLICATION PASSWORD 'change-me';

-- Connect, and read the published tables (and only those).
GRANT CONNECT ON DATABASE app TO walcast;
GRANT USAGE ON SCHEMA public TO walcast;
GRANT SELECT ON public.orders, public.customers TO walcast;
-- Streaming a whole schema (source.tables = ["shop.*"])? Cover tables created later too:
--   GRANT USAGE ON SCHEMA shop TO walcast;
--   GRANT SELECT ON ALL TABLES IN SCHEMA shop TO walcast;
--   ALTER DEFAULT PRIVILEGES IN SCHEMA shop GRANT SELECT ON TABLES TO walcast;

-- The publication decides what is streamed, so it stays with whoever owns the data. Create it
-- here, as its owner: CREATE PUBLICATION ... FOR TABLE needs ownership of every listed table,
-- FOR TABLES IN SCHEMA and FOR ALL TABLES need a superuser - rights walcast should not have.
-- Then set source.create_publication = false in walcast's config (with true, an existing
-- publication is used as it is, never altered). Do not transfer ownership to walcast: an owner
-- could add any table it owns to the stream. Adding a table later is the owner's
-- `ALTER PUBLICATION walcast ADD TABLE ...` plus a GRANT SELECT above.
CREATE PUBLICATION walcast FOR TABLE public.orders, public.customers;

-- Replica identity: updates and deletes carry the key walcast needs with the default identity
-- (the primary key). Tables without one need REPLICA IDENTITY FULL or USING INDEX (table owner).

-- pg_hba.conf must let the role into the database, e.g.
--   host  app  walcast  10.0.0.0/8  scram-sha-256
-- walcast's replication connection is a logical one: it matches the same lines as its SQL
-- sessions (a `replication` line is for physical replication only and is not needed).
-- Authentication: trust, password, md5 or scram-sha-256.
-- and the server needs wal_level = logical and a free slot and WAL sender (max_replication_slots,
-- max_wal_senders). `walcast check --config FILE` checks wal_level, slots and senders, the role's
-- rights, the publication and its tables, with a fix for each problem it finds.
