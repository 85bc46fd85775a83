-- 0001 core: the grid, meters and their keys, readings, events, sessions, counters.
-- {db} is the database (ami by default). Times are UTC; reports convert to local time.
-- Analysts: these tables (except meter_keys) are a documented interface.

-- Grid nodes: republic, regions, districts, substations, feeders, transformers, gas
-- stations and segments. Re-imports replace rows (latest updated_at wins).
CREATE TABLE IF NOT EXISTS {db}.grid_nodes
(
    node_id String,
    parent_id String,
    level LowCardinality(String),
    commodity LowCardinality(String),
    name String,
    admin_unit String,
    lat Float64,
    lon Float64,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY node_id;

-- Meters. Keys are not here: see meter_keys.
CREATE TABLE IF NOT EXISTS {db}.meters
(
    serial String,
    kind LowCardinality(String),
    role LowCardinality(String),
    node_id String,
    account_id String,
    model LowCardinality(String),
    system_title String,
    lat Float64,
    lon Float64,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY serial;

-- Meter keys, each wrapped (AES-256-GCM) under the master key, which is never stored
-- here. Not readable through `headend sql`.
CREATE TABLE IF NOT EXISTS {db}.meter_keys
(
    serial String,
    system_title String,
    ek String,
    ak String,
    password String,
    master_key LowCardinality(String),
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY serial;

-- Readings: one value of one register of one meter at one time, scaled to the unit
-- shown (value x 10^scaler already applied). A meter re-sending the same reading
-- replaces it (use FINAL for exact counts of such re-sends); spool replays never
-- duplicate (insert deduplication).
CREATE TABLE IF NOT EXISTS {db}.readings
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
PARTITION BY toYYYYMM(ts)
ORDER BY (meter, obis, ts)
SETTINGS non_replicated_deduplication_window = 10000;

-- Events: tamper, power, supply and security events from meters, and everything the
-- head-end refused (category 'reject', name 'reject:<reason>').
CREATE TABLE IF NOT EXISTS {db}.events
(
    meter String CODEC(ZSTD(1)),
    ts DateTime('UTC') CODEC(DoubleDelta, ZSTD(1)),
    code UInt16,
    name LowCardinality(String),
    category LowCardinality(String),
    source LowCardinality(String),
    peer String CODEC(ZSTD(1)),
    detail String CODEC(ZSTD(1)),
    received_at DateTime('UTC') CODEC(DoubleDelta, ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (meter, ts, code)
SETTINGS non_replicated_deduplication_window = 10000;

-- Sessions: every meter connection's start and end, with its counters.
CREATE TABLE IF NOT EXISTS {db}.sessions
(
    ts DateTime64(3, 'UTC'),
    event Enum8('connect' = 1, 'disconnect' = 2),
    session_id UInt64,
    worker UInt16,
    peer String,
    framing LowCardinality(String),
    meters Array(String),
    bytes_in UInt64,
    frames UInt64,
    pushes UInt64,
    readings UInt64,
    errors UInt64,
    reason LowCardinality(String),
    duration_s Float64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (ts, worker, session_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Invocation counters per meter (system title, hex): the highest received from the
-- meter (-1: none yet) and the next one to send to it. Only ever raised; read with max().
CREATE TABLE IF NOT EXISTS {db}.invocation_counters
(
    system_title String,
    last_received SimpleAggregateFunction(max, Int64),
    next_sent SimpleAggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
ORDER BY system_title
SETTINGS non_replicated_deduplication_window = 10000;
