-- 0018: meters on instrument transformers (issue 20). A large consumer's meter measures
-- through a current transformer (CT, e.g. 200/5 A = 40) and a voltage transformer (VT,
-- e.g. 10,000/100 V = 100); it reports secondary values. The ratios come with the
-- meter (meters.csv `ct_ratio`, `vt_ratio`), and the head-end stores every reading of
-- the meter as a primary value (energy and power × CT × VT, current × CT, voltage ×
-- VT), pushed or polled, by the same Rust code. 1 and 1: a direct meter.
ALTER TABLE {db}.meters ADD COLUMN IF NOT EXISTS ct_ratio Float64 DEFAULT 1;
ALTER TABLE {db}.meters ADD COLUMN IF NOT EXISTS vt_ratio Float64 DEFAULT 1;
