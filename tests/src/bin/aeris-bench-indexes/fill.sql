-- One minute-range of synthetic readings, filled server-side: $1 devices
-- with $2 sensors each, one reading per sensor and minute, minutes
-- [$4, $5) after $3 (Unix ms). Arrival order (minute, device, sensor), as
-- a fleet sends them; a device's seqs count its readings from 1 without
-- gaps. Devices sit on a 40-wide grid of 0.1° x 0.08° cells from 6°E 46°N
-- (about Switzerland), their sensors 1 m apart.
INSERT INTO readings (device_id, seq, sensor_id, ts, geom, flags, pm25, pm10,
                      measurements, model_outputs)
SELECT 'q' || lpad(d::text, 5, '0'),
       m::int8 * $2 + s + 1,
       's' || (s + 1),
       'epoch'::timestamptz + ($3::int8 + m::int8 * 60000) * interval '1 millisecond',
       ST_SetSRID(ST_MakePoint(6.0 + (d % 40) * 0.1 + s * 0.00001, 46.0 + (d / 40) * 0.08), 4326),
       0,
       ((m * 7 + d * 13 + s) % 3000) / 20.0,
       ((m * 11 + d * 17 + s) % 5000) / 20.0,
       jsonb_build_object('rh', 30 + (m + d) % 60, 'temp', ((m + d * 3) % 400) / 10.0),
       '{}'::jsonb
FROM generate_series($4::int, $5::int - 1) m,
     generate_series(0, $1::int - 1) d,
     generate_series(0, $2::int - 1) s
