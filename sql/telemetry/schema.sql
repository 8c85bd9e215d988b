-- Telemetry: equipment readings, written at a high rate, append-only in practice, kept in daily
-- Elasticsearch indexes (config/telemetry.toml). Run as the database owner:
--   psql "$DATABASE_URL" -f sql/telemetry/schema.sql
--
-- The reading time is part of the primary key: walcast names each document's index by `ts`
-- (`telemetry-{column:ts:%Y.%m.%d}`), and a DELETE carries only the replica identity, so `ts`
-- must be in it for the delete to reach the right daily index. `ts` never changes after the
-- insert (an UPDATE that changes it moves the document to the new day's index).

CREATE TABLE IF NOT EXISTS devices (
    device_id  integer PRIMARY KEY,
    site       text NOT NULL,
    model      text NOT NULL,
    installed  date NOT NULL DEFAULT current_date
);

CREATE TABLE IF NOT EXISTS readings (
    device_id      integer NOT NULL REFERENCES devices,
    ts             timestamptz NOT NULL,
    temperature_c  double precision,
    humidity_pct   real,
    pressure_hpa   double precision,
    vibration_mm_s real,
    power_w        integer,
    status         text NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'warn', 'fault', 'offline')),
    PRIMARY KEY (device_id, ts)
);

-- walcast's publication: exactly the tables of `source.tables`.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'walcast_telemetry') THEN
        CREATE PUBLICATION walcast_telemetry FOR TABLE devices, readings;
    END IF;
END $$;
