-- Least-privilege setup for walcast. Run as a superuser, in the database walcast streams from.
-- Replace the password; walcast reads it from the environment (source.password_env) or a file.

-- LOGIN + REPLICATION: walcast opens a replication connection. It needs no superuser rights.
CREATE ROLE walcast WITH LOGIN REPLICATION PASSWORD 'change-me';

-- Connect to the database and read the published tables (snapshots and `walcast check` read them).
GRANT CONNECT ON DATABASE app TO walcast;
GRANT USAGE ON SCHEMA public TO walcast;
GRANT SELECT ON public.orders, public.customers TO walcast;

-- The publication: create it here, as its owner, so walcast does not need to own the tables
-- (CREATE PUBLICATION ... FOR TABLE needs table ownership; FOR TABLES IN SCHEMA / ALL TABLES need
-- a superuser). Then set source.create_publication = false, or leave it true: an existing
-- publication is used as it is.
CREATE PUBLICATION walcast FOR TABLE public.orders, public.customers;

-- pg_hba.conf must let the role in twice: once for the database, once for replication, e.g.
--   host  app          walcast  10.0.0.0/8  scram-sha-256
--   host  replication  walcast  10.0.0.0/8  scram-sha-256
