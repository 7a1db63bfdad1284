//! Per-project quotas (admin).

use anyhow::Result;

use super::{Control, Quota, validate::validate_name};

impl Control {
    pub fn quota_set(&mut self, project: &str, floating_ips: u32) -> Result<Quota> {
        validate_name("project", project, 255)?;
        self.store.write(|tx| {
            tx.quota_set(project, floating_ips)?;
            Ok(tx.quota_row(project)?.into())
        })
    }

    pub fn quota_show(&mut self, project: &str) -> Result<Quota> {
        self.store.read(|tx| Ok(tx.quota_row(project)?.into()))
    }

    /// Every project with a quota or a floating IP.
    pub fn quota_list(&mut self) -> Result<Vec<Quota>> {
        self.store
            .read(|tx| Ok(tx.quota_list()?.into_iter().map(Quota::from).collect()))
    }
}
