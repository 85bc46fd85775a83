-- 0014: payments as records (DESIGN.md section 7, issue 20). One row per payment,
-- idempotent by its id: the same payment sent again is not counted twice (a re-sent
-- id with other values is refused at import). An account's debt is what the billing
-- system last stated (billing_accounts) less the payments made after that statement
-- (headend/payments.py).
CREATE TABLE IF NOT EXISTS {db}.payments
(
    payment_id String,
    account_id String,
    amount Float64,
    paid_at DateTime64(3, 'UTC'),
    source LowCardinality(String),
    imported_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(imported_at)
ORDER BY payment_id
SETTINGS non_replicated_deduplication_window = 10000;
