-- 0019: gas balances on the corrected volume (issue 20). Balances count a gas meter's
-- temperature- and pressure-corrected volume (7.0.13.0.0.255) where it has one, the
-- volume at metering conditions (7.0.3.0.0.255) otherwise; `corrected` is how many of
-- the hour's measured meter-hours were on the corrected volume (equal to `measured`:
-- all corrected; 0: none; reports say corrected, uncorrected or mixed).
ALTER TABLE {db}.balances ADD COLUMN IF NOT EXISTS corrected UInt32 DEFAULT 0;
