//! The generated directory (EVENTS.md §3): regions with directors, reps spread over regions,
//! customers owned by one rep each. Also the per-customer facts the behaviour model needs
//! (tier, region of the owning rep), kept as dense vectors indexed by pair.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// The three directory CSVs, with exactly the headers of EVENTS.md §3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    pub reps_csv: String,
    pub customers_csv: String,
    pub regions_csv: String,
}

impl Directory {
    /// Writes `reps.csv`, `customers.csv` and `regions.csv` into `dir` (created if missing).
    pub fn write_to(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, text) in [
            ("reps.csv", &self.reps_csv),
            ("customers.csv", &self.customers_csv),
            ("regions.csv", &self.regions_csv),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

pub(super) const REPS_HEADER: &str = "rep_id,name,region,wecom_userid,dingtalk_staff_id";
pub(super) const CUSTOMERS_HEADER: &str = "customer_id,name,wecom_external_userid,tier";
pub(super) const REGIONS_HEADER: &str = "region,director,routes";

/// The chain's sales regions, each with the cities its reps visit.
const REGIONS: [(&str, &str, [&str; 3]); 8] = [
    ("east", "Chen Jie", ["Shanghai", "Hangzhou", "Nanjing"]),
    ("south", "Huang Li", ["Guangzhou", "Shenzhen", "Xiamen"]),
    ("north", "Zhao Gang", ["Beijing", "Tianjin", "Shijiazhuang"]),
    ("west", "Liu Yang", ["Chengdu", "Chongqing", "Kunming"]),
    ("central", "Sun Hong", ["Wuhan", "Changsha", "Zhengzhou"]),
    ("northeast", "Gao Peng", ["Shenyang", "Harbin", "Dalian"]),
    ("southwest", "Luo Na", ["Guiyang", "Nanning", "Lhasa"]),
    ("northwest", "Ma Jun", ["Xian", "Lanzhou", "Urumqi"]),
];
/// Cities for regions beyond the eight named ones.
const EXTRA_CITIES: [&str; 3] = ["Hefei", "Jinan", "Fuzhou"];

const SURNAMES: [&str; 20] = [
    "Li", "Wang", "Zhang", "Liu", "Chen", "Yang", "Zhao", "Huang", "Zhou", "Wu", "Xu", "Sun", "Hu",
    "Zhu", "Gao", "Lin", "He", "Guo", "Ma", "Luo",
];
const GIVEN: [&str; 24] = [
    "Wei", "Fang", "Min", "Jing", "Li", "Qiang", "Lei", "Jun", "Yang", "Yong", "Yan", "Jie", "Tao",
    "Ming", "Chao", "Xiu", "Xia", "Ping", "Gang", "Hui", "Na", "Hong", "Bo", "Ying",
];
const CUSTOMER_BRANDS: [&str; 12] = [
    "Kangda", "Renhe", "Yixin", "Jiankang", "Baicao", "Tongren", "Huaxia", "Anning", "Shoukang",
    "Minsheng", "Zhongyi", "Xinkang",
];
const CUSTOMER_TYPES: [&str; 6] = [
    "Clinic",
    "Community Health Center",
    "Hospital Pharmacy",
    "Elderly Care Home",
    "Corporate Health Office",
    "Pharmacy",
];

pub(super) struct Region {
    pub name: String,
    pub cities: [&'static str; 3],
}

/// Directory plus the dense per-pair facts the behaviour model reads.
pub(super) struct World {
    pub regions: Vec<Region>,
    /// Region index of each rep.
    pub rep_region: Vec<u32>,
    /// Tier of each customer (= pair): 0 = A, 1 = B, 2 = C.
    pub tier: Vec<u8>,
    pub reps: usize,
    pub customers_per_rep: usize,
    pub directory: Directory,
}

impl World {
    pub fn pairs(&self) -> usize {
        self.reps * self.customers_per_rep
    }

    pub fn build(
        regions: usize,
        reps: usize,
        customers_per_rep: usize,
        rng: &mut ChaCha8Rng,
    ) -> World {
        let mut region_list = Vec::with_capacity(regions);
        let mut regions_csv = String::with_capacity(64 + regions * 32);
        regions_csv.push_str(REGIONS_HEADER);
        regions_csv.push('\n');
        for i in 0..regions {
            let (name, director, cities) = match REGIONS.get(i) {
                Some(&(n, d, c)) => (n.to_owned(), d.to_owned(), c),
                None => (format!("region{}", i + 1), person_name(rng), EXTRA_CITIES),
            };
            // `routes` is left empty: the pipeline file decides where alerts go.
            let _ = writeln!(regions_csv, "{name},{director},");
            region_list.push(Region { name, cities });
        }

        // Regions differ in size; weights keep every region populated but uneven.
        let weights: Vec<f64> = (0..regions)
            .map(|_| 0.6 + 0.8 * rng.random::<f64>())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut rep_region = Vec::with_capacity(reps);
        let mut reps_csv = String::with_capacity(64 + reps * 48);
        reps_csv.push_str(REPS_HEADER);
        reps_csv.push('\n');
        for r in 0..reps {
            let region = if r < regions {
                r // the first reps guarantee each region at least one member
            } else {
                pick_weighted(&weights, total, rng)
            };
            rep_region.push(region as u32);
            let id = RepId(r as u32);
            let _ = writeln!(
                reps_csv,
                "{id},{},{},wx_{id},dt_{id}",
                person_name(rng),
                region_list[region].name
            );
        }

        let pairs = reps * customers_per_rep;
        let mut tier = Vec::with_capacity(pairs);
        let mut customers_csv = String::with_capacity(64 + pairs * 56);
        customers_csv.push_str(CUSTOMERS_HEADER);
        customers_csv.push('\n');
        for c in 0..pairs {
            let t: u8 = match rng.random_range(0..100u32) {
                0..20 => 0,
                20..55 => 1,
                _ => 2,
            };
            tier.push(t);
            let id = CustomerId(c as u32);
            let brand = CUSTOMER_BRANDS[rng.random_range(0..CUSTOMER_BRANDS.len())];
            let kind = CUSTOMER_TYPES[rng.random_range(0..CUSTOMER_TYPES.len())];
            let _ = writeln!(
                customers_csv,
                "{id},{brand} {kind} #{},wo_{id},{}",
                rng.random_range(1..100u32),
                ["A", "B", "C"][t as usize]
            );
        }

        World {
            regions: region_list,
            rep_region,
            tier,
            reps,
            customers_per_rep,
            directory: Directory {
                reps_csv,
                customers_csv,
                regions_csv,
            },
        }
    }
}

fn person_name(rng: &mut ChaCha8Rng) -> String {
    let s = SURNAMES[rng.random_range(0..SURNAMES.len())];
    let g = GIVEN[rng.random_range(0..GIVEN.len())];
    format!("{s} {g}")
}

fn pick_weighted(weights: &[f64], total: f64, rng: &mut ChaCha8Rng) -> usize {
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// `r0001`, `r0002`, … (index 0 is `r0001`).
#[derive(Clone, Copy)]
pub(super) struct RepId(pub u32);

impl std::fmt::Display for RepId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "r{:04}", u64::from(self.0) + 1)
    }
}

/// `c000001`, `c000002`, … (index 0 is `c000001`); customer index = pair index.
#[derive(Clone, Copy)]
pub(super) struct CustomerId(pub u32);

impl std::fmt::Display for CustomerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{:06}", u64::from(self.0) + 1)
    }
}
