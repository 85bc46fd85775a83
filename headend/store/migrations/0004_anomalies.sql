-- 0004: suspicious consumers (headend/anomalies.py). One row per meter and window
-- examined, with the rules that fired and their evidence (JSON); `anomalies` is the
-- view analysts read (the latest finding per meter and window).
CREATE TABLE IF NOT EXISTS {db}.anomaly_findings
(
    window_start DateTime('UTC'),
    window_end DateTime('UTC'),
    meter String,
    node_id String,
    score UInt16,
    rules Array(LowCardinality(String)),
    evidence String,
    node_loss_pct Float64,
    computed_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (window_start, window_end, meter);

CREATE VIEW IF NOT EXISTS {db}.anomalies AS
SELECT window_start, window_end, meter, node_id, score, rules, evidence, node_loss_pct
FROM {db}.anomaly_findings FINAL
WHERE score >= 2;
