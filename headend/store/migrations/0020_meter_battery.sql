-- 0020: battery levels (issue 20). Battery-powered meters (gas) report their battery
-- voltage (0.0.96.6.3.255) with their pushes; this table keeps, per meter, the latest
-- voltage and the first one with their times, kept up to date by every insert into
-- readings, so tracking batteries (`headend report batteries`, the low-battery work
-- orders) reads one row per meter instead of months of readings. Read with
-- argMaxMerge / argMinMerge, grouped by meter.
CREATE TABLE IF NOT EXISTS {db}.meter_battery
(
    meter String,
    volts AggregateFunction(argMax, Float64, DateTime('UTC')),
    first_volts AggregateFunction(argMin, Float64, DateTime('UTC')),
    first_ts SimpleAggregateFunction(min, DateTime('UTC')),
    last_ts SimpleAggregateFunction(max, DateTime('UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY meter;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.meter_battery_mv TO {db}.meter_battery AS
SELECT meter, argMaxState(value, ts) AS volts, argMinState(value, ts) AS first_volts,
    min(ts) AS first_ts, max(ts) AS last_ts
FROM {db}.readings
WHERE obis = 1611006975
GROUP BY meter;

INSERT INTO {db}.meter_battery
SELECT meter, argMaxState(value, ts), argMinState(value, ts), min(ts), max(ts)
FROM {db}.readings WHERE obis = 1611006975 GROUP BY meter;
