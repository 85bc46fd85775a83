-- 0016: notices to consumers through the utility's notification gateway (issue 20):
-- the warning before a disconnection, sent as an HTTP POST to `[billing] notify_url`,
-- one row per change of its delivery (latest ts wins): pending, delivered (the
-- gateway's 2xx), or failed after `notify_attempts`, with the last status and error.
CREATE TABLE IF NOT EXISTS {db}.notifications
(
    notification_id String,
    kind LowCardinality(String),
    account_id String,
    serial String,
    payload String CODEC(ZSTD(1)),
    gateway String,
    state LowCardinality(String),
    attempts UInt16,
    status UInt16,
    error String,
    created_at DateTime64(3, 'UTC'),
    ts DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(ts)
ORDER BY notification_id
SETTINGS non_replicated_deduplication_window = 10000;
