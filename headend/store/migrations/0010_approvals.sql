-- 0010: four eyes (DESIGN.md section 10). What one person asks and another approves.
--
-- A command carries who approved it (empty: it needed nobody's approval).
ALTER TABLE {db}.commands ADD COLUMN IF NOT EXISTS approved_by String DEFAULT '';

DROP VIEW IF EXISTS {db}.command_status;

CREATE VIEW IF NOT EXISTS {db}.command_status AS
SELECT
    command_id,
    any(serial) AS serial,
    any(kind) AS kind,
    any(args) AS args,
    any(requested_by) AS requested_by,
    any(approved_by) AS approved_by,
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

-- The billing system's category of an account ('' when it sends none): disconnecting
-- an account of a category in [approval] categories (large consumers, critical
-- services) needs a second person, as a protected one does.
ALTER TABLE {db}.billing_accounts ADD COLUMN IF NOT EXISTS category LowCardinality(String) DEFAULT '';

-- Requests waiting for a second person: a batch of disconnections over the size, a
-- disconnection of a protected, large or critical account, a change of a meter's
-- keys. One row per state (pending, approved, rejected, expired); the newest wins.
-- Keys in a request are already wrapped under the master key.
CREATE TABLE IF NOT EXISTS {db}.approvals
(
    approval_id String,
    kind LowCardinality(String),
    requested_by String,
    requester_roles Array(LowCardinality(String)),
    requester_regions Array(String),
    regions Array(String),
    why String,
    summary String,
    payload String CODEC(ZSTD(1)),
    requested_at DateTime64(3, 'UTC'),
    expires_at DateTime64(3, 'UTC'),
    state LowCardinality(String),
    decided_by String,
    decided_at DateTime64(3, 'UTC'),
    note String,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY approval_id;
