-- 0013: outages (issue 20). Meters' power-down and power-up events grouped per
-- transformer (and per feeder when most of its transformers went down together).
--
-- One row per outage, rewritten as it develops (latest updated_at wins):
--   started_at  the first meter's power-down; ended_at the last meter's power-up
--               (1970-01-01: still out)
--   consumers   consumer meters under the node (those the outage cut off)
--   reported    meters that reported it; restored: those that reported power-up
--   balance_saw 1 when the node's balance meter saw it too, 0 when it did not,
--               -1 when the node has no balance meter
--   sustained   1 when it lasted at least [outages] sustained seconds (5 minutes):
--               counted in SAIDI and SAIFI; shorter ones are momentary
--   merged_into the feeder outage it became part of, once most of the feeder's
--               transformers were found down together ('' otherwise)
CREATE TABLE IF NOT EXISTS {db}.outages
(
    outage_id String,
    node_id String,
    level LowCardinality(String),
    region String,
    district String,
    started_at DateTime('UTC'),
    ended_at DateTime('UTC'),
    consumers UInt32,
    reported UInt32,
    restored UInt32,
    balance_saw Int8,
    sustained UInt8,
    merged_into String,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY outage_id
SETTINGS non_replicated_deduplication_window = 10000;

-- Restoration meter by meter: when each meter of an outage went down and came back
-- (1970-01-01: not yet).
CREATE TABLE IF NOT EXISTS {db}.outage_meters
(
    outage_id String,
    meter String,
    role LowCardinality(String),
    down_at DateTime('UTC'),
    up_at DateTime('UTC'),
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (outage_id, meter)
SETTINGS non_replicated_deduplication_window = 10000;
