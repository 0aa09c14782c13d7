//! Reference data (EVENTS.md §3): reps, customers and regions from three CSV files. Resolves
//! WeCom and DingTalk ids to `rep_id` / `customer_id`, and ids to dense indices that the
//! operators use as keys (cheaper than strings on the hot path).

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::event::Body;

mod strindex;
use strindex::StrIndex;

#[derive(Debug, Clone, Deserialize)]
pub struct Rep {
    pub rep_id: String,
    pub name: String,
    pub region: String,
    pub wecom_userid: String,
    pub dingtalk_staff_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Customer {
    pub customer_id: String,
    pub name: String,
    pub wecom_external_userid: String,
    pub tier: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Region {
    pub region: String,
    pub director: String,
    /// Where alerts for the region go (receiver names, `;`-separated); may be empty.
    pub routes: String,
}

/// Which id names a rep or a customer: touchstream's own, WeCom's or DingTalk's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Id,
    Wecom,
    Dingtalk,
}

impl IdKind {
    /// The event field a rep's id of this kind comes from, as dead letters name it.
    pub fn rep_field(self) -> &'static str {
        match self {
            IdKind::Id => "rep_id",
            IdKind::Wecom => "WeCom wecom_userid",
            IdKind::Dingtalk => "DingTalk staff_id",
        }
    }
    /// The event field a customer's id of this kind comes from.
    pub fn customer_field(self) -> &'static str {
        match self {
            IdKind::Id => "customer_id",
            IdKind::Wecom => "WeCom external_userid",
            IdKind::Dingtalk => "DingTalk customer id",
        }
    }
}

/// An id of a rep or a customer in an event, and which kind of id it is.
pub type NamedBy<'a> = (IdKind, &'a str);

/// The ids that name an event's rep and customer, and which kind of id each is: exactly what
/// the engine resolves (and loads a few events early), and what the consent door reads.
pub fn pair_ids(body: &Body) -> (Option<NamedBy<'_>>, Option<NamedBy<'_>>) {
    match body {
        Body::CrmAction(a) => (
            Some((IdKind::Id, &a.rep_id)),
            Some((IdKind::Id, &a.customer_id)),
        ),
        Body::DingtalkApproval(a) => (
            Some((IdKind::Dingtalk, &a.staff_id)),
            a.customer_id.as_deref().map(|c| (IdKind::Id, c)),
        ),
        Body::WecomPresence(p) => (None, Some((IdKind::Wecom, &p.external_userid))),
        Body::WecomMessage(m) => (
            Some((IdKind::Wecom, &m.wecom_userid)),
            Some((IdKind::Wecom, &m.external_userid)),
        ),
        Body::PixelHit(_) | Body::WebHit(_) => (None, None),
    }
}

/// Index of a rep in `Directory::reps`.
pub type RepIx = u32;
/// Index of a customer in `Directory::customers`.
pub type CustomerIx = u32;

#[derive(Debug)]
struct RepKeys {
    rep_id: compact_str::CompactString,
    region: compact_str::CompactString,
}

#[derive(Debug, Default)]
pub struct Directory {
    pub reps: Vec<Rep>,
    pub customers: Vec<Customer>,
    pub regions: Vec<Region>,
    /// `customers[i].customer_id`, inline where short: outputs name customers by index, and a
    /// million customers' rows are cold.
    customer_ids: Vec<compact_str::CompactString>,
    /// `reps[i]`'s id and region, the same way, in one 48-byte entry: with 20 000 reps a `Rep`
    /// row (120 bytes, the strings behind pointers) cost two or three cache misses per output.
    rep_ids: Vec<RepKeys>,
    rep_by_id: StrIndex,
    rep_by_wecom: StrIndex,
    rep_by_dingtalk: StrIndex,
    customer_by_id: StrIndex,
    customer_by_wecom: StrIndex,
}

const REPS_HEADER: &[&str] = &[
    "rep_id",
    "name",
    "region",
    "wecom_userid",
    "dingtalk_staff_id",
];
const CUSTOMERS_HEADER: &[&str] = &["customer_id", "name", "wecom_external_userid", "tier"];
const REGIONS_HEADER: &[&str] = &["region", "director", "routes"];

fn read_csv<T: serde::de::DeserializeOwned>(
    path: &Path,
    header: &[&str],
) -> anyhow::Result<Vec<T>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let got: Vec<String> = r.headers()?.iter().map(str::to_string).collect();
    if got != header {
        bail!(
            "{}: header must be `{}`, found `{}`",
            path.display(),
            header.join(","),
            got.join(",")
        );
    }
    let mut out = Vec::new();
    for (i, row) in r.deserialize().enumerate() {
        out.push(row.with_context(|| format!("{}: row {}", path.display(), i + 2))?);
    }
    Ok(out)
}

impl Directory {
    /// Loads `reps.csv`, `customers.csv` and `regions.csv` from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Directory> {
        let reps = read_csv(&dir.join("reps.csv"), REPS_HEADER)?;
        let customers = read_csv(&dir.join("customers.csv"), CUSTOMERS_HEADER)?;
        let regions = read_csv(&dir.join("regions.csv"), REGIONS_HEADER)?;
        Self::new(reps, customers, regions)
    }

    /// Builds a directory from the three CSV texts (generated workloads, tests).
    pub fn from_csv(reps: &str, customers: &str, regions: &str) -> anyhow::Result<Directory> {
        fn parse<T: serde::de::DeserializeOwned>(
            text: &str,
            name: &str,
            header: &[&str],
        ) -> anyhow::Result<Vec<T>> {
            let mut r = csv::Reader::from_reader(text.as_bytes());
            let got: Vec<String> = r.headers()?.iter().map(str::to_string).collect();
            if got != header {
                bail!("{name}: header must be `{}`", header.join(","));
            }
            r.deserialize()
                .map(|row| row.with_context(|| name.to_string()))
                .collect()
        }
        Self::new(
            parse(reps, "reps.csv", REPS_HEADER)?,
            parse(customers, "customers.csv", CUSTOMERS_HEADER)?,
            parse(regions, "regions.csv", REGIONS_HEADER)?,
        )
    }

    pub fn new(
        reps: Vec<Rep>,
        customers: Vec<Customer>,
        regions: Vec<Region>,
    ) -> anyhow::Result<Self> {
        let mut d = Directory {
            reps,
            customers,
            regions,
            ..Default::default()
        };
        for (i, r) in d.reps.iter().enumerate() {
            let i = i as RepIx;
            if d.rep_by_id.insert(&r.rep_id, i).is_some() {
                bail!("reps.csv: rep_id `{}` appears twice", r.rep_id);
            }
            if !r.wecom_userid.is_empty() {
                d.rep_by_wecom.insert(&r.wecom_userid, i);
            }
            if !r.dingtalk_staff_id.is_empty() {
                d.rep_by_dingtalk.insert(&r.dingtalk_staff_id, i);
            }
        }
        d.rep_ids = d
            .reps
            .iter()
            .map(|r| RepKeys {
                rep_id: r.rep_id.as_str().into(),
                region: r.region.as_str().into(),
            })
            .collect();
        d.customer_ids = d
            .customers
            .iter()
            .map(|c| c.customer_id.as_str().into())
            .collect();
        for (i, c) in d.customers.iter().enumerate() {
            let i = i as CustomerIx;
            if d.customer_by_id.insert(&c.customer_id, i).is_some() {
                bail!(
                    "customers.csv: customer_id `{}` appears twice",
                    c.customer_id
                );
            }
            if !c.wecom_external_userid.is_empty() {
                d.customer_by_wecom.insert(&c.wecom_external_userid, i);
            }
        }
        let known: std::collections::HashSet<&str> =
            d.regions.iter().map(|r| r.region.as_str()).collect();
        if let Some(r) = d.reps.iter().find(|r| !known.contains(r.region.as_str())) {
            bail!(
                "reps.csv: rep `{}` names region `{}`, which regions.csv lacks",
                r.rep_id,
                r.region
            );
        }
        Ok(d)
    }

    pub fn rep(&self, rep_id: &str) -> Option<RepIx> {
        self.rep_by(IdKind::Id, rep_id)
    }
    /// The index of reps by ids of `kind`.
    fn reps_by(&self, kind: IdKind) -> &StrIndex {
        match kind {
            IdKind::Id => &self.rep_by_id,
            IdKind::Wecom => &self.rep_by_wecom,
            IdKind::Dingtalk => &self.rep_by_dingtalk,
        }
    }
    /// The index of customers by ids of `kind` (customers have no DingTalk id).
    fn customers_by(&self, kind: IdKind) -> Option<&StrIndex> {
        match kind {
            IdKind::Id => Some(&self.customer_by_id),
            IdKind::Wecom => Some(&self.customer_by_wecom),
            IdKind::Dingtalk => None,
        }
    }
    /// A rep by an id of `kind`.
    pub fn rep_by(&self, kind: IdKind, id: &str) -> Option<RepIx> {
        self.reps_by(kind).get(id)
    }
    /// A customer by an id of `kind`.
    pub fn customer_by(&self, kind: IdKind, id: &str) -> Option<CustomerIx> {
        self.customers_by(kind)?.get(id)
    }
    pub fn customer(&self, customer_id: &str) -> Option<CustomerIx> {
        self.customer_by(IdKind::Id, customer_id)
    }
    /// Asks the CPU to load what the lookup of a rep by `id` (of `kind`) a few events ahead
    /// will read.
    pub fn prefetch_rep(&self, kind: IdKind, id: &str) {
        self.reps_by(kind).prefetch(id);
    }
    /// Asks the CPU to load what the lookup of a customer by `id` (of `kind`) will read.
    pub fn prefetch_customer(&self, kind: IdKind, id: &str) {
        if let Some(index) = self.customers_by(kind) {
            index.prefetch(id);
        }
    }
    pub fn rep_id(&self, r: RepIx) -> &str {
        &self.rep_ids[r as usize].rep_id
    }
    /// Asks the CPU to load rep `r`'s id and region, which an output a few events ahead will name.
    pub fn prefetch_rep_id(&self, r: RepIx) {
        if let Some(keys) = self.rep_ids.get(r as usize) {
            crate::prefetch_all(keys);
        }
    }
    pub fn region_of(&self, r: RepIx) -> &str {
        &self.rep_ids[r as usize].region
    }
    /// A rep's name by `rep_id`.
    pub fn rep_name(&self, rep_id: &str) -> Option<&str> {
        self.rep(rep_id)
            .map(|r| self.reps[r as usize].name.as_str())
    }
    /// A customer's name by `customer_id`.
    pub fn customer_name(&self, customer_id: &str) -> Option<&str> {
        self.customer(customer_id)
            .map(|c| self.customers[c as usize].name.as_str())
    }
    pub fn region(&self, region: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.region == region)
    }
    pub fn customer_id(&self, c: CustomerIx) -> &str {
        &self.customer_ids[c as usize]
    }
    /// Asks the CPU to load customer `c`'s id, which an output a few events ahead will name.
    pub fn prefetch_customer_id(&self, c: CustomerIx) {
        if let Some(id) = self.customer_ids.get(c as usize) {
            crate::prefetch(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_directory_resolves_every_id_form() {
        let d = Directory::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/directory"
        )))
        .expect("example directory");
        let r1 = d.rep("r1").expect("r1");
        assert_eq!(d.rep_by(IdKind::Wecom, "wx_r1"), Some(r1));
        assert_eq!(d.rep_by(IdKind::Dingtalk, "dt_r1"), Some(r1));
        assert_eq!(d.region_of(r1), "east");
        let c1 = d.customer("c1").expect("c1");
        assert_eq!(d.customer_by(IdKind::Wecom, "wo_c1"), Some(c1));
        assert_eq!(d.rep("nobody"), None);
    }

    #[test]
    fn wrong_header_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("reps.csv"), "id,name\n").expect("write");
        let err = Directory::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("reps.csv") && err.contains("rep_id,name,region"),
            "{err}"
        );
    }
}
