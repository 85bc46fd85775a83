-- 0015: meter replacements (issue 20). A work order closed with the outcome replaced
-- records when the meter was swapped and the two registers the crew read on site: the
-- old meter's last (old_final) and the new meter's first (new_initial), in the unit
-- on their displays (kWh; m³ for gas). They go into readings as manual readings at
-- replaced_at, so the consumer's consumption runs on from one meter to the other with
-- no gap and no spike; `meter_replacements` lists them (balances count a replaced
-- meter and its successor as one place; the old one is never silent or a suspect
-- after it was taken away).
ALTER TABLE {db}.work_order_log ADD COLUMN IF NOT EXISTS replaced_at DateTime('UTC') DEFAULT 0;
ALTER TABLE {db}.work_order_log ADD COLUMN IF NOT EXISTS old_final Float64 DEFAULT 0;
ALTER TABLE {db}.work_order_log ADD COLUMN IF NOT EXISTS new_initial Float64 DEFAULT 0;

CREATE VIEW IF NOT EXISTS {db}.meter_replacements AS
SELECT
    order_id,
    any(serial) AS old_serial,
    argMax(new_serial, ts) AS new_serial,
    argMax(replaced_at, ts) AS replaced_at,
    argMax(old_final, ts) AS old_final,
    argMax(new_initial, ts) AS new_initial,
    argMax(by, ts) AS recorded_by
FROM {db}.work_order_log
GROUP BY order_id
HAVING argMax(state, ts) = 'closed' AND argMax(outcome, ts) = 'replaced';
