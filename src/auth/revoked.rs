//! Revoked session ids: a small trait, and the embedded store (redb in `data_dir`) that
//! survives a restart and forgets an id once its cookie would have expired.

use foldhash::{HashMap, HashMapExt};
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::RwLock;

use crate::clock::now;

/// Where revoked session ids are kept. A shared implementation (Redis/Valkey) can stand in
/// for the embedded one when several replicas must agree.
pub trait RevocationStore: Send + Sync {
    /// Remembers `id` as revoked until `until` (unix seconds).
    fn revoke(&self, id: &[u8; 16], until: u64) -> Result<(), String>;
    fn is_revoked(&self, id: &[u8; 16]) -> bool;
}

const REVOKED: TableDefinition<&[u8], u64> = TableDefinition::new("revoked_sessions");

/// redb file + an in-memory copy, so the per-request check touches no disk.
pub struct EmbeddedStore {
    db: Database,
    cache: RwLock<HashMap<[u8; 16], u64>>,
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/state.redb`, loading the ids still in force.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create data_dir `{}`: {e}", dir.display()))?;
        let path = dir.join("state.redb");
        let db = Database::create(&path)
            .map_err(|e| format!("cannot open `{}`: {e}", path.display()))?;
        let store = EmbeddedStore {
            db,
            cache: RwLock::new(HashMap::new()),
        };
        store.load()?;
        Ok(store)
    }

    fn load(&self) -> Result<(), String> {
        let now = now();
        let w = self.db.begin_write().map_err(|e| e.to_string())?;
        let mut live = HashMap::new();
        {
            let mut t = w.open_table(REVOKED).map_err(|e| e.to_string())?;
            let mut expired = Vec::new();
            for row in t.iter().map_err(|e| e.to_string())? {
                let (k, v) = row.map_err(|e| e.to_string())?;
                let until = v.value();
                match <[u8; 16]>::try_from(k.value()) {
                    Ok(id) if until > now => {
                        live.insert(id, until);
                    }
                    _ => expired.push(k.value().to_vec()),
                }
            }
            for k in expired {
                t.remove(k.as_slice()).map_err(|e| e.to_string())?;
            }
        }
        w.commit().map_err(|e| e.to_string())?;
        if let Ok(mut c) = self.cache.write() {
            *c = live;
        }
        Ok(())
    }
}

impl EmbeddedStore {
    /// Every revocation in force (for a shared store to write back to Redis after it lost
    /// its data).
    pub fn live(&self) -> Vec<([u8; 16], u64)> {
        let now = now();
        match self.cache.read() {
            Ok(c) => c
                .iter()
                .filter(|(_, u)| **u > now)
                .map(|(id, u)| (*id, *u))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl RevocationStore for EmbeddedStore {
    fn revoke(&self, id: &[u8; 16], until: u64) -> Result<(), String> {
        // Known to this process first: a failed write still refuses the session here.
        let now = now();
        if let Ok(mut c) = self.cache.write() {
            c.retain(|_, u| *u > now);
            c.insert(*id, until);
        }
        let w = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = w.open_table(REVOKED).map_err(|e| e.to_string())?;
            t.insert(id.as_slice(), until).map_err(|e| e.to_string())?;
        }
        w.commit().map_err(|e| e.to_string())
    }

    fn is_revoked(&self, id: &[u8; 16]) -> bool {
        match self.cache.read() {
            Ok(c) => c.get(id).is_some_and(|u| *u > now()),
            // A poisoned lock: refuse rather than let a revoked session through.
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_survive_a_reopen_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            s.revoke(&[1; 16], now() + 3600).unwrap();
            s.revoke(&[2; 16], now() - 1).unwrap();
            assert!(s.is_revoked(&[1; 16]));
            assert!(!s.is_revoked(&[2; 16]));
            assert!(!s.is_revoked(&[3; 16]));
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert!(s.is_revoked(&[1; 16]));
        assert!(!s.is_revoked(&[2; 16]));
    }
}
