//! Crash-safe id allocation without a flush per id: each kind reserves a
//! range of ids durably (one small write and one flush per range), hands the
//! range out from memory, and after a restart starts at the end of the last
//! reserved range. Ids may skip after a crash; they never repeat.

use std::sync::Mutex;

use crate::error::StorageError;
use crate::store::IdKind;

/// Ids reserved per durable write. Holds are the busiest kind: one flush
/// per 4,096 requests is noise next to the writer's flushes.
const RESERVE: u64 = 4096;

pub(crate) struct IdAllocator {
    db: sled::Db,
    tree: sled::Tree,
    /// `[next, limit)` per kind; a mutex because reserving a range must not
    /// race with handing out its ids.
    ranges: Mutex<[Range; 3]>,
}

#[derive(Clone, Copy)]
struct Range {
    next: u64,
    limit: u64,
}

impl IdAllocator {
    pub(crate) fn open(db: sled::Db, tree: sled::Tree) -> Result<IdAllocator, StorageError> {
        let mut ranges = [Range { next: 1, limit: 1 }; 3];
        for kind in [IdKind::Account, IdKind::Key, IdKind::Hold] {
            let stored = tree
                .get(kind_key(kind))
                .map_err(StorageError::sled("read ids"))?;
            if let Some(limit) = stored.and_then(|bytes| crate::codec::read_u64(&bytes, 0)) {
                ranges[slot(kind)] = Range { next: limit, limit };
            }
        }
        Ok(IdAllocator {
            db,
            tree,
            ranges: Mutex::new(ranges),
        })
    }

    pub(crate) fn next(&self, kind: IdKind) -> Result<u64, StorageError> {
        let mut ranges = self.ranges.lock().map_err(|_| StorageError::IdsPoisoned)?;
        let range = &mut ranges[slot(kind)];
        if range.next >= range.limit {
            let limit = range.next.saturating_add(RESERVE);
            self.tree
                .insert(kind_key(kind), &limit.to_be_bytes())
                .map_err(StorageError::sled("reserve ids"))?;
            self.db
                .flush()
                .map_err(StorageError::sled("flush reserved ids"))?;
            range.limit = limit;
        }
        let id = range.next;
        range.next += 1;
        Ok(id)
    }
}

fn slot(kind: IdKind) -> usize {
    match kind {
        IdKind::Account => 0,
        IdKind::Key => 1,
        IdKind::Hold => 2,
    }
}

fn kind_key(kind: IdKind) -> &'static [u8] {
    match kind {
        IdKind::Account => b"account",
        IdKind::Key => b"key",
        IdKind::Hold => b"hold",
    }
}
