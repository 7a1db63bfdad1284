//! API users: `floatip user create/list/delete` and the credential check of the agent.
//! Passwords are stored as argon2id PHC strings (random salt, the crate's default cost).

use std::str::FromStr;

use anyhow::{Result, anyhow};
use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
};
use password_hash::rand_core::OsRng;
use serde::Serialize;

use super::{Control, validate::validate_name};
use crate::{
    error::{ErrorKind, error},
    store::UserRow,
};

/// What a user may do: an admin everything, a member its own project's resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }
}

impl FromStr for Role {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "admin" => Ok(Self::Admin),
            "member" => Ok(Self::Member),
            _ => Err(error(
                ErrorKind::Invalid,
                format!("role '{s}' is neither admin nor member"),
            )),
        }
    }
}

/// A user as commands print it (never the hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    pub project: String,
    pub role: Role,
    pub created_at: String,
}

impl TryFrom<&UserRow> for User {
    type Error = anyhow::Error;

    fn try_from(r: &UserRow) -> Result<Self> {
        Ok(Self {
            name: r.name.clone(),
            project: r.project.clone(),
            role: r.role.parse()?,
            created_at: r.created_at.clone(),
        })
    }
}

/// Longest password accepted: hashing cost is bounded, and nobody types more.
const MAX_PASSWORD: usize = 1024;

/// The argon2id PHC string of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow!("cannot hash the password: {e}"))
}

/// Whether `password` matches the PHC string `hash`. Slow by design (tens of ms): callers
/// serving requests run it off their event loop.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

impl Control {
    /// `user create`: fails if the name is taken.
    pub fn user_create(
        &mut self,
        name: &str,
        project: &str,
        role: Role,
        password: &str,
    ) -> Result<User> {
        validate_name("user name", name, 64)?;
        validate_name("project", project, 255)?;
        if password.is_empty() || password.len() > MAX_PASSWORD {
            return Err(error(
                ErrorKind::Invalid,
                format!("the password must be 1 to {MAX_PASSWORD} bytes long"),
            ));
        }
        let hash = hash_password(password)?;
        self.store.write(|tx| {
            if tx.user_get(name)?.is_some() {
                return Err(error(
                    ErrorKind::Conflict,
                    format!("user {name} already exists"),
                ));
            }
            tx.user_insert(name, project, role.as_str(), &hash)?;
            User::try_from(&tx.user_get(name)?.expect("just inserted"))
        })
    }

    pub fn user_list(&mut self) -> Result<Vec<User>> {
        self.store
            .read(|tx| tx.user_list()?.iter().map(User::try_from).collect())
    }

    pub fn user_delete(&mut self, name: &str) -> Result<()> {
        self.store.write(|tx| {
            if !tx.user_delete(name)? {
                return Err(error(ErrorKind::NotFound, format!("user {name} not found")));
            }
            Ok(())
        })
    }

    /// The user and its password hash, for a credential check by [`verify_password`].
    pub fn user_credentials(&mut self, name: &str) -> Result<Option<(User, String)>> {
        self.store.read(|tx| {
            tx.user_get(name)?
                .map(|r| Ok((User::try_from(&r)?, r.password_hash)))
                .transpose()
        })
    }

    /// Every project the state names (users, quotas, floating IPs, ports).
    pub fn project_names(&mut self) -> Result<Vec<String>> {
        self.store.read(|tx| tx.project_names())
    }
}
