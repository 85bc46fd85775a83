-- 0008: regions and the link between region nodes and the centre (DESIGN.md section 9).
--
-- Each grid node and meter records its region: the region-level grid node above it
-- (its node_id, e.g. 'UZ-SA'), or '' above the regions (republic, generation,
-- substations feeding several regions). Imports fill it; a node acts only on the
-- regions it owns. Rows imported before this migration have '' until re-imported
-- (a standalone node owns everything, so nothing changes for it).
ALTER TABLE {db}.grid_nodes ADD COLUMN IF NOT EXISTS region String DEFAULT '';
ALTER TABLE {db}.meters ADD COLUMN IF NOT EXISTS region String DEFAULT '';

-- Tables that travel on the link are inserted at the receiving end with the sender's
-- deduplication token, so a record applied twice (a node killed between its insert
-- and its acknowledgement) is stored once: they keep a deduplication window, as the
-- spooled tables always did.
ALTER TABLE {db}.grid_nodes MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE {db}.meters MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE {db}.meter_keys MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE {db}.meter_titles MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE {db}.consumption MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE {db}.balances MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE {db}.anomaly_findings MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE {db}.commands MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE {db}.billing_accounts MODIFY SETTING non_replicated_deduplication_window = 10000;
ALTER TABLE {db}.policy_actions MODIFY SETTING non_replicated_deduplication_window = 10000;
