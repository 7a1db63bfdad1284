//! The gateway group in etcd: which gateways are alive, which revision of the state each has
//! applied, which gateway owns each pool, and the stream of state changes every gateway
//! applies. Async, for the agent's runtime; the keys live beside the state, not under its
//! prefix, so that a gateway's heartbeat never conflicts with the state's compare-and-swap.
//!
//! - `/floatip-gateways/live/NAME`: `{"applied_revision": R}`, put with NAME's lease: the key
//!   disappears when the lease expires, which is how the others learn a gateway is gone.
//! - `/floatip-gateways/owner/POOL`: `NAME`, created only where absent, with NAME's lease: the
//!   one gateway that answers ARP for POOL's addresses. Released by deleting it only while it
//!   still names the releaser, and freed by etcd when the owner's lease expires.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result, anyhow};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use serde::{Deserialize, Serialize};

use super::{FloatingIpRow, PoolRow, etcd};

pub(super) const GROUP: &str = "/floatip-gateways/";
const LIVE: &str = "/floatip-gateways/live/";
const OWNER: &str = "/floatip-gateways/owner/";

/// What a live gateway publishes about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Heartbeat {
    applied_revision: i64,
}

/// One gateway as the group shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayInfo {
    pub name: String,
    /// Whether its lease is alive (a gateway that is only named as an owner is not listed
    /// without it: the two keys share the lease).
    pub alive: bool,
    /// The last revision of the state it has applied to its maps.
    pub applied_revision: i64,
    /// The pools it answers for.
    pub pools: Vec<String>,
}

/// The group at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupView {
    /// Live gateways and the revision each has applied.
    pub live: BTreeMap<String, i64>,
    /// Pool -> owning gateway.
    pub owners: BTreeMap<String, String>,
    /// The store's revision when read.
    pub revision: i64,
}

impl GroupView {
    pub(super) fn decode(kvs: &[etcd_client::KeyValue], revision: i64) -> Self {
        let mut view = Self {
            revision,
            ..Self::default()
        };
        for kv in kvs {
            let Ok(key) = std::str::from_utf8(kv.key()) else {
                continue;
            };
            if let Some(name) = key.strip_prefix(LIVE) {
                let hb: Heartbeat = serde_json::from_slice(kv.value()).unwrap_or_default();
                view.live.insert(name.to_owned(), hb.applied_revision);
            } else if let Some(pool) = key.strip_prefix(OWNER) {
                let owner = String::from_utf8_lossy(kv.value()).into_owned();
                view.owners.insert(pool.to_owned(), owner);
            }
        }
        view
    }

    /// Every gateway the view names, with what it owns.
    pub fn gateways(&self) -> Vec<GatewayInfo> {
        let mut out: BTreeMap<&str, GatewayInfo> = BTreeMap::new();
        for (name, rev) in &self.live {
            out.insert(
                name,
                GatewayInfo {
                    name: name.clone(),
                    alive: true,
                    applied_revision: *rev,
                    pools: Vec::new(),
                },
            );
        }
        for (pool, owner) in &self.owners {
            out.entry(owner)
                .or_insert_with(|| GatewayInfo {
                    name: owner.clone(),
                    alive: false,
                    applied_revision: 0,
                    pools: Vec::new(),
                })
                .pools
                .push(pool.clone());
        }
        out.into_values().collect()
    }
}

/// One change of the state, decoded from a watch event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Pool {
        name: String,
        now: Option<PoolRow>,
        before: Option<PoolRow>,
    },
    Ip {
        address: Ipv4Addr,
        now: Option<FloatingIpRow>,
        before: Option<FloatingIpRow>,
    },
    /// The generation the state has after this revision.
    Generation(u64),
}

/// What a state watch yields.
#[derive(Debug)]
pub enum StateEvent {
    /// The changes of the revisions up to `revision`, in order.
    Changes { revision: i64, changes: Vec<Change> },
    /// The history from the requested revision is compacted away: only a full resync can
    /// bring the maps up to date.
    Compacted,
}

/// A gateway's lease.
#[derive(Clone, Copy, Debug)]
pub struct Lease {
    pub id: i64,
    /// As granted (etcd raises a TTL below its minimum).
    pub ttl: Duration,
}

/// A client of the gateway group; see the module.
pub struct GroupClient {
    client: Client,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

/// etcd did not answer in time: as unavailable as a refused connection.
async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| anyhow!("etcd did not answer within {limit:?}"))?
        .map_err(|e| anyhow!("{}", e.to_string().lines().next().unwrap_or("").trim()))
}

impl GroupClient {
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let urls: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        // HTTP/2 pings: a watch on a connection that died silently (a link down, a member
        // gone without a reset) fails within seconds instead of waiting forever.
        let options = ConnectOptions::new()
            .with_connect_timeout(etcd::CONNECT_TIMEOUT)
            .with_timeout(etcd::REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let client = tokio::time::timeout(
            etcd::CONNECT_TIMEOUT + etcd::REQUEST_TIMEOUT,
            Client::connect(&urls, Some(options)),
        )
        .await
        .map_err(|_| anyhow!("cannot connect to etcd at {}", endpoints.join(",")))?
        .with_context(|| format!("cannot connect to etcd at {}", endpoints.join(",")))?;
        Ok(Self {
            client,
            keeper: None,
        })
    }

    /// A fresh lease of `ttl` and this gateway's live key on it.
    pub async fn join(&mut self, name: &str, ttl: Duration, applied: i64) -> Result<Lease> {
        let limit = etcd::REQUEST_TIMEOUT;
        let grant = timed(limit, self.client.lease_grant(ttl.as_secs() as i64, None)).await?;
        let lease = Lease {
            id: grant.id(),
            ttl: Duration::from_secs(grant.ttl().max(1) as u64),
        };
        self.keeper = None;
        self.heartbeat(name, lease, applied).await?;
        Ok(lease)
    }

    /// Publishes the revision this gateway has applied.
    pub async fn heartbeat(&mut self, name: &str, lease: Lease, applied: i64) -> Result<()> {
        let value = serde_json::to_vec(&Heartbeat {
            applied_revision: applied,
        })?;
        let put = self.client.put(
            format!("{LIVE}{name}"),
            value,
            Some(PutOptions::new().with_lease(lease.id)),
        );
        timed(etcd::REQUEST_TIMEOUT, put).await?;
        Ok(())
    }

    /// One keep-alive round trip; the TTL left (zero: the lease has expired and is gone).
    pub async fn keep_alive(&mut self, lease: Lease, limit: Duration) -> Result<i64> {
        if self.keeper.is_none() {
            self.keeper = Some(timed(limit, self.client.lease_keep_alive(lease.id)).await?);
        }
        let (keeper, stream) = self.keeper.as_mut().expect("set above");
        let sent = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match timed(limit, sent).await {
            Ok(Some(r)) => Ok(r.ttl()),
            Ok(None) => {
                self.keeper = None;
                Err(anyhow!("the keep-alive stream ended"))
            }
            Err(e) => {
                // A stream that timed out or broke is not reused: its answers may be late.
                self.keeper = None;
                Err(e)
            }
        }
    }

    /// The group now.
    pub async fn view(&mut self, limit: Duration) -> Result<GroupView> {
        let get = self
            .client
            .get(GROUP, Some(GetOptions::new().with_prefix()));
        let resp = timed(limit, get).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        Ok(GroupView::decode(resp.kvs(), revision))
    }

    /// Takes `pool` for `name` if nobody owns it; whether it did.
    pub async fn claim(&mut self, pool: &str, name: &str, lease: Lease) -> Result<bool> {
        let key = format!("{OWNER}{pool}");
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                name,
                Some(PutOptions::new().with_lease(lease.id)),
            )]);
        Ok(timed(etcd::REQUEST_TIMEOUT, self.client.txn(txn))
            .await?
            .succeeded())
    }

    /// Gives `pool` up if `name` still owns it.
    pub async fn release(&mut self, pool: &str, name: &str) -> Result<()> {
        let key = format!("{OWNER}{pool}");
        let txn = Txn::new()
            .when([Compare::value(key.as_str(), CompareOp::Equal, name)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        timed(etcd::REQUEST_TIMEOUT, self.client.txn(txn)).await?;
        Ok(())
    }

    /// Revokes the lease: the live key and every pool owned go at once (a clean stop).
    pub async fn leave(&mut self, lease: Lease) -> Result<()> {
        timed(etcd::REQUEST_TIMEOUT, self.client.lease_revoke(lease.id)).await?;
        Ok(())
    }

    /// Watches the state from revision `from` on.
    pub async fn watch_state(&mut self, from: i64) -> Result<StateWatch> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(from);
        let stream = timed(
            etcd::REQUEST_TIMEOUT,
            self.client.watch(etcd::PREFIX, Some(options)),
        )
        .await?;
        Ok(StateWatch { stream })
    }

    /// Watches the group's keys from revision `from` on; any event means "look again".
    pub async fn watch_group(&mut self, from: i64) -> Result<WatchStream> {
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        timed(
            etcd::REQUEST_TIMEOUT,
            self.client.watch(GROUP, Some(options)),
        )
        .await
    }
}

/// A watch of the state's keys.
pub struct StateWatch {
    stream: WatchStream,
}

impl StateWatch {
    /// The next changes; an error when the stream broke (etcd unreachable): watch again from
    /// the last revision applied.
    pub async fn next(&mut self) -> Result<StateEvent> {
        loop {
            let resp = self
                .stream
                .message()
                .await
                .map_err(|e| anyhow!("the watch broke: {e}"))?
                .ok_or_else(|| anyhow!("the watch ended"))?;
            if resp.compact_revision() > 0 {
                return Ok(StateEvent::Compacted);
            }
            if resp.canceled() {
                return Err(anyhow!("the watch was canceled: {}", resp.cancel_reason()));
            }
            if resp.events().is_empty() {
                // The creation answer, or a progress note.
                continue;
            }
            let mut revision = 0;
            let mut changes = Vec::with_capacity(resp.events().len());
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                revision = revision.max(kv.mod_revision());
                let deleted = event.event_type() == EventType::Delete;
                let (now, before) = (
                    (!deleted).then(|| kv.value()),
                    event.prev_kv().map(|p| p.value()),
                );
                let key = std::str::from_utf8(kv.key()).unwrap_or("");
                if let Some(c) = decode_change(key, now, before)? {
                    changes.push(c);
                }
            }
            return Ok(StateEvent::Changes { revision, changes });
        }
    }
}

/// The change to one state key; `None` for the keys the maps do not depend on.
fn decode_change(key: &str, now: Option<&[u8]>, before: Option<&[u8]>) -> Result<Option<Change>> {
    fn row<T: for<'de> Deserialize<'de>>(v: Option<&[u8]>, key: &str) -> Result<Option<T>> {
        v.map(|v| serde_json::from_slice(v).with_context(|| format!("malformed etcd key {key}")))
            .transpose()
    }
    if key == etcd::META {
        #[derive(Deserialize)]
        struct Generation {
            generation: u64,
        }
        return Ok(row::<Generation>(now, key)?.map(|m| Change::Generation(m.generation)));
    }
    let Some(rest) = key.strip_prefix(etcd::PREFIX) else {
        return Ok(None);
    };
    if let Some(name) = rest.strip_prefix("pool/") {
        return Ok(Some(Change::Pool {
            name: name.to_owned(),
            now: row(now, key)?,
            before: row(before, key)?,
        }));
    }
    if let Some(a) = rest.strip_prefix("ip/") {
        let address = a.parse().map_err(|_| anyhow!("malformed etcd key {key}"))?;
        return Ok(Some(Change::Ip {
            address,
            now: row(now, key)?,
            before: row(before, key)?,
        }));
    }
    Ok(None)
}
