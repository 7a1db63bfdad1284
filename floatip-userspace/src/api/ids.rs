//! Resource ids of the Neutron API. Floating IPs carry their row id (never reused: the table
//! is AUTOINCREMENT) in a fixed UUID frame, so a lookup by id is one indexed query; pools and
//! internal networks have names, and their ids are name-based UUIDs (v5), stable across
//! restarts. Ports have random UUIDs stored with them.

use uuid::Uuid;

use crate::control::ports::TenantSubnet;

/// Namespace of the name-based ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x6f1e_a7c0_5a1d_4c3e_9b7f_0f10_a71e_0000);

/// First 24 characters of every floating IP id; the last 12 are the row id in hex.
const FLOATING_PREFIX: &str = "f10a71e0-0000-4000-8000-";

fn named(kind: &str, name: &str) -> String {
    Uuid::new_v5(&NAMESPACE, format!("{kind}/{name}").as_bytes()).to_string()
}

pub fn pool_network(pool: &str) -> String {
    named("pool", pool)
}

pub fn pool_subnet(pool: &str) -> String {
    named("pool-subnet", pool)
}

pub fn internal_network(iface: &str) -> String {
    named("internal", iface)
}

pub fn internal_subnet(iface: &str, s: &TenantSubnet) -> String {
    named(
        "internal-subnet",
        &format!("{iface}/{}/{}", s.network, s.prefix_len),
    )
}

pub fn floating(row: i64) -> String {
    format!("{FLOATING_PREFIX}{row:012x}")
}

/// The row id in a floating IP id; `None` for anything else.
pub fn parse_floating(id: &str) -> Option<i64> {
    let hex = id.strip_prefix(FLOATING_PREFIX)?;
    if hex.len() != 12
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    i64::from_str_radix(hex, 16).ok().filter(|n| *n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floating_ids_round_trip() {
        for n in [1, 42, 0xffff_ffff_ffff] {
            let id = floating(n);
            assert!(Uuid::parse_str(&id).is_ok(), "{id}");
            assert_eq!(parse_floating(&id), Some(n));
        }
        for bad in [
            "",
            "203.0.113.5",
            "f10a71e0-0000-4000-8000-000000000000",
            "f10a71e0-0000-4000-8000-00000000002A",
        ] {
            assert_eq!(parse_floating(bad), None, "{bad}");
        }
        assert_ne!(pool_network("public"), pool_network("public2"));
        assert_ne!(pool_network("x"), internal_network("x"));
    }
}
