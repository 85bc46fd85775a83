-- 0009: people, their tokens and the audit trail (DESIGN.md section 10).
--
-- Accounts: one row per version, the newest wins. Passwords as Argon2id PHC strings
-- (never the password); people's SQL cannot read this table (headend.sqlguard).
CREATE TABLE IF NOT EXISTS {db}.users
(
    name String,
    display_name String,
    roles Array(LowCardinality(String)),
    regions Array(String),
    password_hash String,
    disabled UInt8,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC'),
    updated_by String
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY name;

-- Personal API tokens: only the SHA-256 of the secret is kept.
CREATE TABLE IF NOT EXISTS {db}.user_tokens
(
    token_id String,
    name String,
    digest String,
    label String,
    created_at DateTime64(3, 'UTC'),
    expires_at DateTime64(3, 'UTC'),
    revoked UInt8,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY token_id;

-- Every write and every login: who (name and roles at the time), from where, what,
-- on what, how it ended, and the details (before and after, where they apply).
-- Nothing in the head-end updates or deletes these rows; the API has no way to.
CREATE TABLE IF NOT EXISTS {db}.audit
(
    at DateTime64(3, 'UTC'),
    node LowCardinality(String),
    user String,
    roles LowCardinality(String),
    source String,
    action LowCardinality(String),
    target String,
    outcome LowCardinality(String),
    detail String CODEC(ZSTD(1))
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (at, user);
