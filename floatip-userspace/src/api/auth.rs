//! HTTP Basic authentication (what keystoneauth's `http_basic` plugin sends) against the
//! users table, with failed logins counted per client address and refused for a while once
//! too many.
//!
//! argon2 costs tens of milliseconds by design, and clients send the credentials with every
//! request; a verified password is therefore remembered as a keyed BLAKE2b digest (key random
//! per process) next to the stored hash it matched. Every request still reads the user's row,
//! so deleting a user or changing its password takes effect on the next request.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine;
use blake2::{Blake2b512, Digest};

use super::error::{ApiError, ApiResult};
use crate::{
    agent::Worker,
    control::users::{Role, verify_password},
};

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: String,
    pub project: String,
    pub role: Role,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The project the caller is confined to: `None` for an admin.
    pub fn scope(&self) -> Option<String> {
        (!self.is_admin()).then(|| self.project.clone())
    }

    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self, action: &str) -> ApiResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{action} is an admin action; user {} is a member",
                self.user
            )))
        }
    }
}

pub struct Auth {
    max_failures: u32,
    lockout: Duration,
    key: [u8; 32],
    /// Per client address: failures and when the first of them happened.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Per user: the stored hash and the digest of the password that matched it.
    verified: Mutex<HashMap<String, (String, Vec<u8>)>>,
}

fn unauthorized() -> ApiError {
    ApiError::unauthorized("authentication required: wrong or missing user name and password")
}

impl Auth {
    pub fn new(max_failures: u32, lockout_seconds: u64) -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self {
            max_failures,
            lockout: Duration::from_secs(lockout_seconds),
            key,
            failures: Mutex::new(HashMap::new()),
            verified: Mutex::new(HashMap::new()),
        }
    }

    fn digest(&self, user: &str, password: &str) -> Vec<u8> {
        let mut h = Blake2b512::new();
        h.update(self.key);
        h.update(user.as_bytes());
        h.update([0]);
        h.update(password.as_bytes());
        h.finalize().to_vec()
    }

    /// Whether `client` is locked out by its recent failures.
    fn locked_out(&self, client: IpAddr) -> bool {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(&client) {
            Some((_, since)) if since.elapsed() >= self.lockout => {
                failures.remove(&client);
                false
            }
            Some((n, _)) => *n >= self.max_failures,
            None => false,
        }
    }

    fn record_failure(&self, client: IpAddr, user: &str, why: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let entry = failures.entry(client).or_insert((0, Instant::now()));
        entry.0 += 1;
        eprintln!(
            "floatip agent: failed login for user '{}' from {client}: {why} ({} of {} before lockout)",
            user.escape_debug(),
            entry.0,
            self.max_failures
        );
    }

    /// Checks the `Authorization` header of a request from `client`.
    pub async fn authenticate(
        &self,
        worker: &Worker,
        header: Option<&str>,
        client: IpAddr,
    ) -> ApiResult<Caller> {
        if self.locked_out(client) {
            eprintln!("floatip agent: refused a login from {client}: too many failed logins");
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "HTTPTooManyRequests",
                format!("too many failed logins from {client}; try again later"),
            ));
        }
        let Some(header) = header else {
            return Err(unauthorized());
        };
        let Some((user, password)) = parse_basic(header) else {
            self.record_failure(client, "", "malformed Authorization header");
            return Err(unauthorized());
        };
        let lookup = user.clone();
        let found = worker
            .run(move |c| c.user_credentials(&lookup))
            .await
            .map_err(|e| ApiError::from_control(&e, "HTTPNotFound"))?;
        let Some((record, hash)) = found else {
            // Spend the time of a real check so that user names cannot be probed by timing.
            let _ =
                tokio::task::spawn_blocking(move || verify_password(DUMMY_HASH, &password)).await;
            self.record_failure(client, &user, "no such user");
            return Err(unauthorized());
        };
        let digest = self.digest(&user, &password);
        let known = {
            let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            verified
                .get(&user)
                .is_some_and(|(h, d)| *h == hash && *d == digest)
        };
        if !known {
            let h = hash.clone();
            let ok = tokio::task::spawn_blocking(move || verify_password(&h, &password))
                .await
                .unwrap_or(false);
            if !ok {
                self.record_failure(client, &user, "wrong password");
                return Err(unauthorized());
            }
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(user.clone(), (hash, digest));
        }
        Ok(Caller {
            user: record.name,
            project: record.project,
            role: record.role,
        })
    }
}

/// A valid argon2id hash of a random password, checked against when the user does not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$4tS4pcGzx4xyCCQ0WVvCwU7ZxrfCXsPdfKjYQnQ3c0A";

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header() {
        assert_eq!(
            parse_basic("Basic YWxpY2U6czNjcjN0OmV4dHJh"),
            Some(("alice".into(), "s3cr3t:extra".into()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
        assert_eq!(parse_basic("Basic YWxpY2U="), None, "no colon");
    }

    #[test]
    fn dummy_hash_parses() {
        assert!(argon2::PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!verify_password(DUMMY_HASH, "anything"));
    }
}
