-- 0011: the meter security lifecycle (issue 19). A meter's keys change by rotation.
--
-- meter_keys keeps one row per meter (latest updated_at wins) and now also:
--   kek           the meter's master key (key-encryption key), wrapped under the
--                 deployment's master key like ek and ak (purpose "kek"): new keys are
--                 sent to the meter wrapped under it (RFC 3394).
--   pending_ek/ak new keys being sent, written before the meter is told, so a crash
--                 between the two never leaves a meter with keys nobody has.
--   previous_ek/ak the keys before the last rotation, still accepted for frames until
--                 previous_until (late pushes from the meter's buffer).
--   source        'import' (from a meters file) or 'rotation' (set by the head-end: a
--                 re-import of an older meters file does not put the old keys back).
ALTER TABLE {db}.meter_keys ADD COLUMN IF NOT EXISTS kek String DEFAULT '';
ALTER TABLE {db}.meter_keys ADD COLUMN IF NOT EXISTS pending_ek String DEFAULT '';
ALTER TABLE {db}.meter_keys ADD COLUMN IF NOT EXISTS pending_ak String DEFAULT '';
ALTER TABLE {db}.meter_keys ADD COLUMN IF NOT EXISTS previous_ek String DEFAULT '';
ALTER TABLE {db}.meter_keys ADD COLUMN IF NOT EXISTS previous_ak String DEFAULT '';
ALTER TABLE {db}.meter_keys ADD COLUMN IF NOT EXISTS previous_until DateTime('UTC') DEFAULT 0;
ALTER TABLE {db}.meter_keys ADD COLUMN IF NOT EXISTS source LowCardinality(String) DEFAULT 'import';

-- Waves: a key rotation or firmware upgrade over many meters, run in steps with
-- limits. One row per change of state (latest ts wins); the commands it queued carry
-- its id in their args, so a wave resumes after a restart from what is recorded.
CREATE TABLE IF NOT EXISTS {db}.waves
(
    wave_id String,
    kind LowCardinality(String),
    region String,
    params String,
    requested_by String,
    reason String,
    state LowCardinality(String),
    detail String,
    ts DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(ts)
ORDER BY wave_id;
