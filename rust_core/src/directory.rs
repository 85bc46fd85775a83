//! The meters a worker knows, by system title, serial and link address, with their
//! keys and meter models: what a session asks on every push ("who sent it?"), filled
//! from the store's lookups, and remembering for a while the meters it does not know.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::profile::Profile;
use crate::security::{KeyTable, Keys, Policy, SystemTitle};
use crate::units::Ratios;

/// A meter the directory knows.
#[derive(Clone, Debug)]
pub struct MeterInfo {
    pub serial: String,
    pub profile: usize,
    pub system_title: Option<SystemTitle>,
    /// The meter has keys: it must cipher what it sends (plain APDUs are refused).
    pub ciphered: bool,
    /// Its instrument transformers: readings are stored as primary values.
    pub ratios: Ratios,
}

/// How a meter is looked up.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LookupKey {
    Title(SystemTitle),
    Serial(Vec<u8>),
}

/// The meters, models and keys a worker knows. Filled lazily from the store.
pub struct Directory {
    pub keys: KeyTable,
    pub policy: Policy,
    /// Leaf of a plain push that names its sender when nothing else does (the logical
    /// device name comes first in the push object lists of common models).
    pub device_leaf: u16,
    meters: Vec<MeterInfo>,
    // Looked up on every push; filled only with meters the store knows (a fast hash,
    // seeded per process; `unknown`, which peers fill, keeps SipHash).
    by_title: foldhash::HashMap<SystemTitle, u32>,
    by_serial: HashMap<Vec<u8>, u32>,
    profiles: Vec<Profile>,
    profile_by_name: HashMap<String, usize>,
    unknown: HashMap<LookupKey, i64>,
}

impl Default for Directory {
    fn default() -> Self {
        Directory {
            keys: KeyTable::new(),
            policy: Policy::default(),
            device_leaf: 0,
            meters: Vec::new(),
            by_title: foldhash::HashMap::default(),
            by_serial: HashMap::new(),
            profiles: Vec::new(),
            profile_by_name: HashMap::new(),
            unknown: HashMap::new(),
        }
    }
}

impl Directory {
    pub fn new() -> Self {
        Directory::default()
    }

    /// Adds or replaces a model profile.
    pub fn add_profile(&mut self, p: Profile) -> usize {
        match self.profile_by_name.get(&p.name) {
            Some(&i) => {
                self.profiles[i] = p;
                i
            }
            None => {
                self.profile_by_name.insert(p.name.clone(), self.profiles.len());
                self.profiles.push(p);
                self.profiles.len() - 1
            }
        }
    }

    pub fn profile(&self, i: usize) -> &Profile {
        &self.profiles[i]
    }

    pub fn profile_names(&self) -> Vec<String> {
        self.profiles.iter().map(|p| p.name.clone()).collect()
    }

    /// Adds or updates a meter. Keys (if any) go into the key table, which keeps the
    /// meter's counters across updates; `last_received` / `next_sent` raise them.
    pub fn add_meter(
        &mut self,
        serial: &str,
        model: &str,
        system_title: Option<SystemTitle>,
        keys: Option<Keys>,
        last_received: Option<u32>,
        next_sent: Option<u32>,
    ) -> Result<u32> {
        let profile = *self
            .profile_by_name
            .get(model)
            .ok_or_else(|| Error::encode("meter", format!("{serial}: unknown model {model:?}")))?;
        if keys.is_some() && system_title.is_none() {
            return Err(Error::encode("meter", format!("{serial}: keys without a system title")));
        }
        let info = MeterInfo {
            serial: serial.to_string(),
            profile,
            system_title,
            ciphered: keys.is_some(),
            ratios: Ratios::DIRECT,
        };
        let id = match self.by_serial.get(serial.as_bytes()) {
            Some(&id) => {
                if let Some(old) = self.meters[id as usize].system_title {
                    if Some(old) != system_title {
                        self.by_title.remove(&old);
                    }
                }
                self.meters[id as usize] = info;
                id
            }
            None => {
                let id = u32::try_from(self.meters.len()).map_err(|_| Error::encode("meter", "directory full"))?;
                self.meters.push(info);
                self.by_serial.insert(serial.as_bytes().to_vec(), id);
                id
            }
        };
        self.unknown.remove(&LookupKey::Serial(serial.as_bytes().to_vec()));
        if let Some(st) = system_title {
            self.by_title.insert(st, id);
            self.unknown.remove(&LookupKey::Title(st));
            match keys {
                Some(k) => {
                    self.keys.insert(st, k);
                    if let Some(ic) = last_received {
                        self.keys.raise_received_counter(&st, ic)?;
                    }
                    if let Some(n) = next_sent {
                        self.keys.raise_sent_counter(&st, n)?;
                    }
                }
                None => {
                    self.keys.remove(&st);
                }
            }
        }
        Ok(id)
    }

    /// Sets meter `id`'s CT and VT ratios (add_meter makes a meter direct).
    pub fn set_ratios(&mut self, id: u32, ct: f64, vt: f64) -> Result<()> {
        let serial = &self.meters[id as usize].serial;
        let r = Ratios::new(ct, vt).ok_or_else(|| {
            Error::encode("meter", format!("{serial}: CT ratio {ct} and VT ratio {vt} must be above 0 and at most 1e6"))
        })?;
        self.meters[id as usize].ratios = r;
        Ok(())
    }

    /// Records that the store does not know this meter, until `until` (Unix seconds).
    pub fn mark_unknown(&mut self, key: LookupKey, until: i64) {
        self.unknown.insert(key, until);
    }

    pub(crate) fn known_unknown(&mut self, key: &LookupKey, now: i64) -> bool {
        match self.unknown.get(key) {
            Some(&until) if until > now => true,
            Some(_) => {
                self.unknown.remove(key);
                false
            }
            None => false,
        }
    }

    pub fn meter(&self, id: u32) -> &MeterInfo {
        &self.meters[id as usize]
    }

    pub fn by_title(&self, st: &SystemTitle) -> Option<u32> {
        self.by_title.get(st).copied()
    }

    pub fn by_serial(&self, serial: &[u8]) -> Option<u32> {
        self.by_serial.get(serial).copied()
    }

    pub fn len(&self) -> usize {
        self.meters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meters.is_empty()
    }
}
