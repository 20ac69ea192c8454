//! Forgetting what the console no longer needs: sessions past their expiry,
//! sign-in codes past theirs, and sign-in history older than the retention
//! period. Each call removes at most `limit` records and says how many, so
//! the retention sweeper can pace itself; nothing here is money, and these
//! trees are written outside the ledger writer (see `people.rs`).

use super::{LoginCode, SessionRecord};
use crate::codec::{decode, read_u64};
use crate::error::StorageError;
use crate::ids::AccountId;
use crate::store::Store;

impl Store {
    /// Removes up to `limit` sessions that expired at or before `now_ms`.
    pub fn purge_expired_sessions(&self, now_ms: u64, limit: usize) -> Result<usize, StorageError> {
        let mut purged = 0;
        for item in self.trees.sessions.iter() {
            if purged == limit {
                break;
            }
            let (hash, bytes) = item.map_err(StorageError::sled("scan sessions"))?;
            let session: SessionRecord = decode("sessions", &bytes)?;
            if session.expires_ms > now_ms {
                continue;
            }
            let Ok(hash) = <[u8; 32]>::try_from(hash.as_ref()) else {
                continue;
            };
            self.delete_session(&hash)?;
            purged += 1;
        }
        Ok(purged)
    }

    /// Removes up to `limit` sign-in codes that expired at or before `now_ms`.
    pub fn purge_expired_login_codes(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<usize, StorageError> {
        let mut purged = 0;
        for item in self.trees.login_codes.iter() {
            if purged == limit {
                break;
            }
            let (email, bytes) = item.map_err(StorageError::sled("scan login_codes"))?;
            let code: LoginCode = decode("login_codes", &bytes)?;
            if code.expires_ms > now_ms {
                continue;
            }
            // Only if it is still that code: a new one may have replaced it.
            let swapped = self
                .trees
                .login_codes
                .compare_and_swap(&email, Some(bytes), None::<&[u8]>)
                .map_err(StorageError::sled("purge login_codes"))?;
            purged += usize::from(swapped.is_ok());
        }
        Ok(purged)
    }

    /// Removes up to `limit` sign-in records dated before `cutoff_ms`.
    pub fn purge_signins_before(
        &self,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<usize, StorageError> {
        let mut purged = 0;
        for item in self.trees.signins.iter().keys() {
            if purged == limit {
                break;
            }
            let key = item.map_err(StorageError::sled("scan signins"))?;
            if read_u64(&key, 8).is_some_and(|at_ms| at_ms < cutoff_ms) {
                self.trees
                    .signins
                    .remove(&key)
                    .map_err(StorageError::sled("purge signins"))?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// Whether `account` has any session left (for tests and the sweeper's
    /// checks after a purge).
    pub fn has_sessions(&self, account: AccountId) -> bool {
        self.trees
            .account_sessions
            .scan_prefix(account.to_key())
            .next()
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SignInRecord, login_code_hash};
    use super::*;

    fn session(account: u64, expires_ms: u64) -> SessionRecord {
        SessionRecord {
            account: AccountId::new(account),
            created_ms: 0,
            expires_ms,
            csrf: "c".repeat(64),
            ip: "127.0.0.1".into(),
            user_agent: "test".into(),
            method: "email".into(),
        }
    }

    #[test]
    fn expired_sessions_codes_and_old_signins_go_the_rest_stay() {
        let store = Store::temporary().unwrap();
        store.put_session(&[1; 32], &session(1, 100)).unwrap();
        store.put_session(&[2; 32], &session(1, 300)).unwrap();
        store.put_session(&[3; 32], &session(2, 50)).unwrap();
        assert_eq!(store.purge_expired_sessions(200, 1).unwrap(), 1);
        assert_eq!(store.purge_expired_sessions(200, 10).unwrap(), 1);
        assert_eq!(store.purge_expired_sessions(200, 10).unwrap(), 0);
        assert!(store.session(&[2; 32]).unwrap().is_some());
        assert!(store.has_sessions(AccountId::new(1)));
        assert!(!store.has_sessions(AccountId::new(2)));

        let code = |expires_ms| LoginCode {
            code_hash: login_code_hash("a@example.com", "123456"),
            expires_ms,
            tries_left: 5,
            created_ms: 0,
        };
        store.put_login_code("a@example.com", &code(100)).unwrap();
        store.put_login_code("b@example.com", &code(300)).unwrap();
        assert_eq!(store.purge_expired_login_codes(200, 10).unwrap(), 1);
        assert!(store.login_code("a@example.com").unwrap().is_none());
        assert!(store.login_code("b@example.com").unwrap().is_some());

        let signin = |at_ms| SignInRecord {
            at_ms,
            method: "email".into(),
            ip: "127.0.0.1".into(),
            user_agent: "test".into(),
        };
        store
            .record_signin(AccountId::new(1), &signin(100))
            .unwrap();
        store
            .record_signin(AccountId::new(1), &signin(300))
            .unwrap();
        assert_eq!(store.purge_signins_before(200, 10).unwrap(), 1);
        let left = store.signins(AccountId::new(1), 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].at_ms, 300);
    }
}
