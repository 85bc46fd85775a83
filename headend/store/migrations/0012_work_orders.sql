-- 0012: field work (issue 20). Service centres, the work orders they are sent, when
-- each meter was last heard, and the accounts a confirmed inspection flagged.

-- Meter service centres: which districts (grid nodes of level district) each covers.
-- Imported like the grid (`headend centres import`); latest updated_at wins.
CREATE TABLE IF NOT EXISTS {db}.service_centres
(
    centre_id String,
    name String,
    region String,
    districts Array(String),
    phone String,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY centre_id
SETTINGS non_replicated_deduplication_window = 10000;

-- Work orders: one row per change (created, assigned, visited, closed), each row the
-- whole order as it stood, so the history is the rows and nothing is updated in
-- place. `work_orders` (the view) is each order's latest state.
--   cause     theft_suspect, silent, tamper, switch_failed, clock_uncorrected,
--             low_battery, manual
--   since     when the evidence begins (its window, the last time the meter was heard,
--             the alarm): a cause finds a meter again only with evidence after the
--             last order for it was closed
--   state     open, assigned, visited, closed
--   outcome   on closing: theft_confirmed, no_fault, repaired, replaced, unreachable
CREATE TABLE IF NOT EXISTS {db}.work_order_log
(
    order_id String,
    cause LowCardinality(String),
    serial String,
    account_id String,
    node_id String,
    district String,
    region String,
    centre_id String,
    priority UInt8,
    since DateTime('UTC'),
    due_at DateTime('UTC'),
    evidence String CODEC(ZSTD(1)),
    state LowCardinality(String),
    assignee String,
    outcome LowCardinality(String),
    new_serial String,
    note String,
    by String,
    ts DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (serial, cause, order_id, ts)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE VIEW IF NOT EXISTS {db}.work_orders AS
SELECT
    order_id,
    any(cause) AS cause,
    any(serial) AS serial,
    any(account_id) AS account_id,
    any(node_id) AS node_id,
    any(district) AS district,
    any(region) AS region,
    argMax(centre_id, ts) AS centre_id,
    argMax(priority, ts) AS priority,
    any(since) AS since,
    argMax(due_at, ts) AS due_at,
    any(evidence) AS evidence,
    argMax(state, ts) AS state,
    argMax(assignee, ts) AS assignee,
    argMax(outcome, ts) AS outcome,
    argMax(new_serial, ts) AS new_serial,
    argMax(note, ts) AS note,
    argMax(by, ts) AS updated_by,
    min(ts) AS created_at,
    max(ts) AS updated_at
FROM {db}.work_order_log
GROUP BY order_id;

-- When each meter was last heard: the newest reading time and arrival per meter, kept
-- by every insert into readings, so finding silent meters reads one row per meter
-- instead of the month's readings.
CREATE TABLE IF NOT EXISTS {db}.meter_seen
(
    meter String,
    last_ts SimpleAggregateFunction(max, DateTime('UTC')),
    last_received SimpleAggregateFunction(max, DateTime('UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY meter;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.meter_seen_mv TO {db}.meter_seen AS
SELECT meter, max(ts) AS last_ts, max(received_at) AS last_received
FROM {db}.readings
GROUP BY meter;

INSERT INTO {db}.meter_seen
SELECT meter, max(ts), max(received_at) FROM {db}.readings GROUP BY meter;

-- Accounts flagged by field work: a confirmed theft (with its order) for billing to
-- act on. Rows are never changed; a flag is cleared by a later row with cleared = 1.
CREATE TABLE IF NOT EXISTS {db}.account_flags
(
    account_id String,
    flag LowCardinality(String),
    serial String,
    order_id String,
    cleared UInt8,
    by String,
    at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (account_id, at)
SETTINGS non_replicated_deduplication_window = 10000;
