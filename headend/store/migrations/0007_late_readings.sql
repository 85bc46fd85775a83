-- 0007: readings that arrive late, so consumption and balances take them in.
--
-- The store recomputes the recent window (`[store] balance_window`) every
-- `balance_interval`; a reading older than that (a load profile read days later, a
-- backfill, a meter's buffer after an outage, a spool ingested after ClickHouse was
-- away) changes hours the window no longer covers. Every insert into `readings` passes
-- through this view: the rows whose time is more than an hour before the insert are
-- counted here per meter and hour, and the store recomputes those meters' hours
-- (`headend/balance.py`, `take_late`). In normal operation pushes arrive within
-- seconds, so the table stays small.
CREATE TABLE IF NOT EXISTS {db}.late_readings
(
    meter String,
    hour DateTime('UTC'),
    arrived DateTime('UTC'),
    rows UInt64
)
ENGINE = MergeTree
ORDER BY (arrived, hour, meter)
TTL arrived + INTERVAL 60 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.late_readings_mv TO {db}.late_readings AS
SELECT meter, toStartOfHour(ts) AS hour, now() AS arrived, count() AS rows
FROM {db}.readings
WHERE ts < now() - INTERVAL 1 HOUR
GROUP BY meter, hour;
