-- 0006: where the head-end reaches a meter that listens instead of connecting in.
-- Empty for meters that connect to the head-end (the usual case); otherwise
-- `host:port`, `wrapper://host:port[/wport]` or `hdlc://host:port[/logical/physical]`
-- (see headend/meter_address.py). Commands and scheduled reads for such a meter are
-- run over a connection the head-end opens.
ALTER TABLE {db}.meters ADD COLUMN IF NOT EXISTS address String DEFAULT '';
