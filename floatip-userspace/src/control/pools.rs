//! Pools (admin): create, list, show, delete, with their trie entries in the maps.

use anyhow::Result;
use floatip_common::MAX_POOL_PREFIXES;

use super::{
    Control, Pool,
    group::{answer_nic, answer_nic_for},
    sync::{trie_add, trie_del},
    validate::{
        check_external_nic, check_no_gateway_addr, check_not_internal, check_not_reserved,
        get_pool, pool_info, stored_ranges, validate_iface, validate_name, validate_text,
    },
};
use crate::{addr::PoolRanges, error::fail, iface, store::PoolRow};

impl Control {
    /// `pool create`. Adds the pool's trie entries when the data plane is attached (otherwise
    /// `attach` adds them).
    pub fn pool_create(
        &mut self,
        name: &str,
        ranges: &PoolRanges,
        external: Option<&str>,
        description: Option<&str>,
    ) -> Result<Pool> {
        validate_name("pool name", name, 64)?;
        if let Some(d) = description {
            validate_text("description", d, 255)?;
        }
        if let Some(iface) = external {
            validate_iface(iface)?;
        }
        check_not_reserved(name, ranges)?;
        let entries = ranges.trie_entries();
        let nic = answer_nic_for(name, external);
        let (store, mut maps) = self.parts()?;
        if let Some(m) = maps.as_deref() {
            check_not_internal(name, ranges, m)?;
            if let Some(nic) = external {
                check_external_nic(nic, m)?;
            }
        }
        check_no_gateway_addr(name, ranges, &iface::addresses()?)?;
        let mut added = false;
        let result = store.write(|tx| {
            if tx.pool_get(name)?.is_some() {
                fail!(Conflict, "pool {name} already exists");
            }
            let mut trie_size = entries.len();
            for other in tx.pool_list()? {
                let other_ranges = stored_ranges(&other)?;
                if other_ranges.overlaps(ranges) {
                    fail!(Conflict, "pool {name} ({ranges}) overlaps pool {} ({other_ranges})", other.name);
                }
                trie_size += other_ranges.trie_entries().len();
            }
            if trie_size > MAX_POOL_PREFIXES as usize {
                fail!(Conflict, "pool {name} needs {} prefixes; with the existing pools that is {trie_size}, above the \
                     data plane's limit of {MAX_POOL_PREFIXES}",
                    entries.len()
                );
            }
            let row = tx.pool_insert(
                name,
                &ranges.ranges_text(),
                &ranges.excludes_text(),
                external,
                description,
            )?;
            if let Some(m) = maps.as_deref_mut() {
                trie_add(m, &entries, nic)?;
                added = true;
            }
            pool_info(tx, row)
        });
        if result.is_err() && added {
            // The commit failed after the maps took the entries: take them back out.
            if let Some(m) = maps {
                let _ = trie_del(m, &entries, nic);
            }
        }
        result
    }

    pub fn pool_list(&mut self) -> Result<Vec<Pool>> {
        self.store.read(|tx| {
            tx.pool_list()?
                .into_iter()
                .map(|p| pool_info(tx, p))
                .collect()
        })
    }

    pub fn pool_show(&mut self, name: &str) -> Result<Pool> {
        self.store.read(|tx| pool_info(tx, get_pool(tx, name)?))
    }

    /// `pool set NAME --description TEXT` (`None` clears it).
    pub fn pool_set_description(&mut self, name: &str, description: Option<&str>) -> Result<Pool> {
        if let Some(d) = description {
            validate_text("description", d, 255)?;
        }
        self.store.write(|tx| {
            let pool = get_pool(tx, name)?;
            tx.pool_set_description(name, description)?;
            pool_info(
                tx,
                PoolRow {
                    description: description.map(str::to_owned),
                    ..pool
                },
            )
        })
    }

    /// `pool delete`: only once no address is allocated from it.
    pub fn pool_delete(&mut self, name: &str) -> Result<()> {
        let (store, mut maps) = self.parts()?;
        store.write(|tx| {
            let pool = get_pool(tx, name)?;
            let allocated = tx.ip_count_in_pool(name)?;
            if allocated > 0 {
                let s = if allocated == 1 { "" } else { "s" };
                fail!(
                    Conflict,
                    "pool {name} has {allocated} allocated floating IP{s}; delete them first"
                );
            }
            tx.pool_delete(name)?;
            if let Some(m) = maps.as_deref_mut() {
                let nic = answer_nic(&pool);
                trie_del(m, &stored_ranges(&pool)?.trie_entries(), nic)?;
            }
            Ok(())
        })
    }
}
