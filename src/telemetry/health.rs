//! Exports the per-rep process-health snapshot (README "Business metrics") as the
//! `touchstream_rep_*` gauges. Every rep of the directory is exported on every snapshot, so the
//! series set is fixed by the directory; an undefined rate (nothing in its denominator) is NaN.

use crate::config::HealthSection;
use crate::directory::Directory;
use crate::operators::health::{Band, RepHealth};

use super::{
    REP_ASSETS_OPENED, REP_ASSETS_SENT, REP_CDI_MEAN, REP_CUSTOMERS, REP_CUSTOMERS_MESSAGED,
    REP_CUSTOMERS_REPLIED, REP_CUSTOMERS_RETOUCHED, REP_CUSTOMERS_TOUCHED, REP_FOLLOWUP_RATE,
    REP_HEALTH, REP_LEADS_DUE, REP_LEADS_FOLLOWED_UP, REP_OPEN_RATE, REP_REPLY_RATE,
    REP_SECOND_TOUCH_RATE,
};

/// Gauges per rep: 1 CDI mean, 3 bands, 4 × (numerator, denominator, rate), 3 statuses.
pub const GAUGES_PER_REP: usize = 1 + 3 + 4 * 3 + 3;

pub fn export(reps: &[RepHealth], dir: &Directory, cfg: &HealthSection) {
    let rate = |r: Option<f64>| r.unwrap_or(f64::NAN);
    for h in reps {
        let rep = dir.rep_id(h.rep).to_string();
        let region = dir.region_of(h.rep).to_string();
        let labels = [("rep", rep.clone()), ("region", region.clone())];
        let set = |name: &'static str, v: f64| metrics::gauge!(name, &labels).set(v);
        set(REP_CDI_MEAN, rate(h.cdi_mean()));
        for b in Band::ALL {
            metrics::gauge!(REP_CUSTOMERS, "rep" => rep.clone(), "region" => region.clone(),
                "band" => b.as_str())
            .set(h.bands[b as usize] as f64);
        }
        set(REP_ASSETS_SENT, h.assets_sent as f64);
        set(REP_ASSETS_OPENED, h.assets_opened as f64);
        set(REP_OPEN_RATE, rate(h.open_rate()));
        set(REP_CUSTOMERS_MESSAGED, h.customers_messaged as f64);
        set(REP_CUSTOMERS_REPLIED, h.customers_replied as f64);
        set(REP_REPLY_RATE, rate(h.reply_rate()));
        set(REP_CUSTOMERS_TOUCHED, h.customers_touched as f64);
        set(REP_CUSTOMERS_RETOUCHED, h.customers_retouched as f64);
        set(REP_SECOND_TOUCH_RATE, rate(h.second_touch_rate()));
        set(REP_LEADS_DUE, h.leads_due as f64);
        set(REP_LEADS_FOLLOWED_UP, h.leads_followed_up as f64);
        set(REP_FOLLOWUP_RATE, rate(h.followup_rate()));
        for (metric, status) in h.statuses(cfg) {
            metrics::gauge!(REP_HEALTH, "rep" => rep.clone(), "region" => region.clone(),
                "metric" => metric)
            .set(status.map_or(f64::NAN, |s| s as u8 as f64));
        }
    }
}
