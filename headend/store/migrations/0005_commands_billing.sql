-- 0005: commands to meters (the audit trail) and the billing system's accounts.

-- Every command to a meter, one row per state it went through: queued, running,
-- retry, done, failed, expired, cancelled. Who or what asked (an operator, the
-- billing policy, the scheduler), why, when, the result and the verified state
-- (for disconnect/reconnect: the meter's output and control state read back).
CREATE TABLE IF NOT EXISTS {db}.commands
(
    command_id String,
    serial String,
    kind LowCardinality(String),
    args String,
    requested_by String,
    reason String,
    priority UInt8,
    requested_at DateTime64(3, 'UTC'),
    expires_at DateTime64(3, 'UTC'),
    state LowCardinality(String),
    attempts UInt16,
    worker Int16,
    result String,
    error String,
    verified_state LowCardinality(String),
    ts DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(requested_at)
ORDER BY (serial, requested_at, command_id, ts);

-- The latest state of each command.
CREATE VIEW IF NOT EXISTS {db}.command_status AS
SELECT
    command_id,
    any(serial) AS serial,
    any(kind) AS kind,
    any(args) AS args,
    any(requested_by) AS requested_by,
    any(reason) AS reason,
    any(priority) AS priority,
    any(requested_at) AS requested_at,
    any(expires_at) AS expires_at,
    argMax(state, ts) AS state,
    max(attempts) AS attempts,
    argMax(result, ts) AS result,
    argMax(error, ts) AS error,
    argMax(verified_state, ts) AS verified_state,
    max(ts) AS updated_at
FROM {db}.commands
GROUP BY command_id;

-- Accounts as the billing system last reported them (CSV import or HTTP): the debt
-- (positive: owed), since when it is overdue, and whether the account is protected
-- from disconnection (hospitals, medical need). Latest updated_at wins.
CREATE TABLE IF NOT EXISTS {db}.billing_accounts
(
    account_id String,
    debt Float64,
    overdue_since Nullable(Date),
    protected Bool,
    note String,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY account_id;

-- What the disconnection policy decided for each account and when: warned,
-- disconnect, reconnect (with the command it queued).
CREATE TABLE IF NOT EXISTS {db}.policy_actions
(
    ts DateTime64(3, 'UTC'),
    account_id String,
    serial String,
    action LowCardinality(String),
    reason String,
    command_id String
)
ENGINE = MergeTree
ORDER BY (account_id, ts);
