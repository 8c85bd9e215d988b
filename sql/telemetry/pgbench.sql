-- pgbench script: one live reading per transaction, the time now (sustained insert load):
--   pgbench -n -c 8 -T 300 -f sql/telemetry/pgbench.sql "$DATABASE_URL"
\set device random(1, 100)
INSERT INTO readings (device_id, ts, temperature_c, humidity_pct, pressure_hpa, vibration_mm_s, power_w, status)
VALUES (:device, clock_timestamp(), 20 + random() * 5, 40 + random() * 30, 1010 + random() * 6, random() * 5, 500 + (random() * 250)::int,
        CASE WHEN random() < 0.001 THEN 'fault' WHEN random() < 0.01 THEN 'warn' ELSE 'ok' END)
ON CONFLICT DO NOTHING;
