-- What a location is to the outside world (issue 16, point 6): the AQS /
-- AirNow-International site code the AQCSV export writes, and the offset
-- of the location's local standard time from UTC, which bounds its days
-- (EPA's daily values are by local standard time: a day in Beijing runs
-- from 16:00 UTC). Both are set by an operator (`aeris-gateway locations
-- set`); NULL keeps today's behaviour (site `000` + the location id, UTC
-- days).
--
-- The site code is AQCSV's twelve characters: the three-digit ISO 3166
-- numeric country code and the nine-digit monitor location code (for a US
-- site its AQS id: state 2, county 3, site 4 digits). The offset is whole
-- minutes, a multiple of 15, from -12:00 to +14:00.

ALTER TABLE api_locations
    ADD COLUMN aqs_site text CHECK (aqs_site ~ '^[0-9]{12}$'),
    ADD COLUMN utc_offset_min integer
        CHECK (utc_offset_min BETWEEN -720 AND 840 AND utc_offset_min % 15 = 0);

COMMENT ON COLUMN api_locations.aqs_site IS
    'AQCSV site: ISO 3166 numeric country (3 digits) + monitor location code (9; AQS id in the US); NULL: 000 + id';
COMMENT ON COLUMN api_locations.utc_offset_min IS
    'local standard time - UTC, minutes; bounds the location''s days; NULL: UTC';
