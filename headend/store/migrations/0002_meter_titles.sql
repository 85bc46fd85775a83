-- 0002: meters by system title. `meters` is ordered by serial, so finding the meter
-- that sent a ciphered push (by its system title) scanned the whole table: fine for
-- a thousand meters, one second of CPU per batch for millions. This index table is
-- ordered by title; a title found here is confirmed against `meters` (a meter
-- re-imported with a new title leaves its old title here, pointing to a meter that no
-- longer has it).
CREATE TABLE IF NOT EXISTS {db}.meter_titles
(
    system_title String,
    serial String,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY system_title;

INSERT INTO {db}.meter_titles
SELECT system_title, serial, updated_at FROM {db}.meters FINAL WHERE system_title != '';
