-- 100 devices on 4 sites (re-runnable).
INSERT INTO devices (device_id, site, model)
SELECT d, 'site-' || (d % 4), CASE WHEN d % 3 = 0 THEN 'pump-x2' ELSE 'fan-a1' END
FROM generate_series(1, 100) AS d
ON CONFLICT (device_id) DO NOTHING;
