-- 0003: consumption and balances (DESIGN.md sections 5 and 6).
--
-- consumption: per meter, register and hour, the energy (kWh) or volume (m³) in the
-- interval, with its quality and the VEE flags that explain it (bits: 1 gap, 2 reset,
-- 4 negative, 8 spike, 16 rollover, 32 duplicate conflict, 64 profile, 128 supply off,
-- 256 consumed while off). Recomputation writes a newer computed_at; read with FINAL.
CREATE TABLE IF NOT EXISTS {db}.consumption
(
    meter String,
    obis UInt64,
    interval_start DateTime('UTC'),
    value Float64,
    unit LowCardinality(String),
    quality Enum8('measured' = 1, 'estimated' = 2, 'invalid' = 3),
    flags UInt16,
    computed_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(interval_start)
ORDER BY (meter, obis, interval_start);

-- balances: per grid node and hour, input (its balance meters), output (the inputs of
-- its children that have balance meters, plus the consumption of the meters below it
-- that no such child accounts for), loss and completeness (measured meter-hours /
-- expected meter-hours). Days, months and years are sums of hours in Asia/Tashkent
-- time (view balances_period). Read with FINAL.
CREATE TABLE IF NOT EXISTS {db}.balances
(
    node_id String,
    level LowCardinality(String),
    commodity LowCardinality(String),
    admin_unit String,
    period_start DateTime('UTC'),
    input Float64,
    output Float64,
    loss Float64,
    measured UInt32,
    expected UInt32,
    has_input UInt8,
    computed_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
PARTITION BY toYYYYMM(period_start)
ORDER BY (node_id, period_start);
