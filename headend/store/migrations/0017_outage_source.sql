-- 0017: where an outage was seen: events (the meters' power-down and power-up) or
-- silence (meters that report no power events fell silent together, and came back).
ALTER TABLE {db}.outages ADD COLUMN IF NOT EXISTS source LowCardinality(String) DEFAULT 'events';
