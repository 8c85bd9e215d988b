-- Simulated readings: :rows readings spread evenly over :days days from :start (UTC), one
-- transaction. Example (1M readings over 3 days):
--   psql "$DATABASE_URL" -v rows=1000000 -v days=3 -v start="'2026-03-01'" -f sql/telemetry/readings.sql
INSERT INTO readings (device_id, ts, temperature_c, humidity_pct, pressure_hpa, vibration_mm_s, power_w, status)
SELECT 1 + i % 100,
       (:start)::timestamptz + (i::double precision * :days * 86400 / :rows) * interval '1 second',
       20 + 5 * sin(i / 1000.0),
       40 + (i % 30),
       1013 + (i % 7) - 3,
       (i % 50) / 10.0,
       500 + i % 250,
       CASE WHEN i % 997 = 0 THEN 'fault' WHEN i % 101 = 0 THEN 'warn' ELSE 'ok' END
FROM generate_series(0, :rows - 1) AS i
ON CONFLICT DO NOTHING;
