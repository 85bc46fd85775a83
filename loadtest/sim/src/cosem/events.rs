//! The event codes the simulated firmware uses in its alarms, event notifications and
//! event log (the head-end's model profiles name them: `protocols/profiles/`).

pub const EV_POWER_DOWN: u16 = 1;
pub const EV_POWER_UP: u16 = 2;
pub const EV_CLOCK_OLD: u16 = 4;
pub const EV_CLOCK_NEW: u16 = 5;
pub const EV_TERMINAL_COVER_OPENED: u16 = 40;
pub const EV_MAGNETIC: u16 = 42;
pub const EV_SUPPLY_DISCONNECTED: u16 = 70;
pub const EV_SUPPLY_RECONNECTED: u16 = 71;
pub const EV_GAS_VALVE_CLOSED: u16 = 80;
pub const EV_GAS_VALVE_OPENED: u16 = 81;
pub const EV_GAS_MAGNETIC: u16 = 83;
pub const EV_GAS_CASE_OPENED: u16 = 84;
