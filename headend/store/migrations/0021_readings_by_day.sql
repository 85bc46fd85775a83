-- 0021: readings partitioned by day (issue 17).
--
-- `readings` was partitioned by month and ordered (meter, obis, ts): once ClickHouse
-- merged a month into one part, every part held every day of its meters, and the
-- periodic pass over the last six hours read the whole month of its meters to keep a
-- day (measured: 1.69 s on day 1 of a 200,000-meter store, 20.0 s on day 30 merged).
-- By day, a window reads the partitions of its own days however the parts are merged;
-- a meter's series is still one range of each partition, so the per-meter reads stay
-- index lookups (one per day they cover, so they name the days they need).
--
-- Retention (`[store] readings_ttl_days`) drops whole days' parts once all their rows
-- have expired (`ttl_only_drop_parts`) instead of rewriting parts row by row.
--
-- The table is rebuilt under the new layout: this creates it, and the migration step
-- `headend/store/db.py` (REBUILDS) copies the rows, swaps the two and drops the old
-- one, safely again if a start is killed half way. The views fed by `readings` follow
-- the name and keep firing on the new table.
CREATE TABLE IF NOT EXISTS {db}.readings_by_day
(
    meter String CODEC(ZSTD(1)),
    obis UInt64 CODEC(T64, ZSTD(1)),
    ts DateTime('UTC') CODEC(DoubleDelta, ZSTD(1)),
    value Float64 CODEC(Gorilla, ZSTD(1)),
    unit LowCardinality(String),
    status UInt8,
    source Enum8('push' = 1, 'poll' = 2, 'manual' = 3),
    quality Enum8('measured' = 1, 'estimated' = 2, 'invalid' = 3),
    received_at DateTime('UTC') CODEC(DoubleDelta, ZSTD(1)),
    obis_code String ALIAS concat(
        toString(bitShiftRight(obis, 40) % 256), '.', toString(bitShiftRight(obis, 32) % 256), '.',
        toString(bitShiftRight(obis, 24) % 256), '.', toString(bitShiftRight(obis, 16) % 256), '.',
        toString(bitShiftRight(obis, 8) % 256), '.', toString(obis % 256))
)
ENGINE = ReplacingMergeTree(received_at)
PARTITION BY toYYYYMMDD(ts)
ORDER BY (meter, obis, ts)
SETTINGS non_replicated_deduplication_window = 10000, ttl_only_drop_parts = 1;
