//! Per-customer CDI outside Prometheus (a customer id is never a label): every pair whose CDI
//! changed is published to `touch.cdi` and kept current in the key-value bucket
//! `touchstream_cdi`, key `<rep_id>.<customer_id>` (README "Outputs"); a pair that left the
//! window is deleted from the bucket.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt as _;

use crate::engine::Cdi;
use crate::sinks::nats::{CDI_SUBJECT, NatsSink, OutputRecord};
use crate::telemetry::CDI_PUBLISHED;

/// The bucket holding each pair's current CDI.
pub const BUCKET: &str = "touchstream_cdi";
/// KV writes in flight at once.
const CONCURRENT_PUTS: usize = 64;

/// A KV key for a pair: `<rep_id>.<customer_id>`, each id with every byte outside
/// `[A-Za-z0-9_-]` written as `=XX` (hex), since KV keys allow only `[-/_=.A-Za-z0-9]` and the
/// dot separates the two ids.
pub fn key(rep_id: &str, customer_id: &str) -> String {
    fn escape(id: &str, out: &mut String) {
        for b in id.bytes() {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                out.push(b as char);
            } else {
                out.push_str(&format!("={b:02X}"));
            }
        }
    }
    let mut k = String::with_capacity(rep_id.len() + customer_id.len() + 1);
    escape(rep_id, &mut k);
    k.push('.');
    escape(customer_id, &mut k);
    k
}

pub struct CdiPublisher {
    sink: NatsSink,
    kv: kv::Store,
}

impl CdiPublisher {
    pub async fn open(js: &jetstream::Context) -> anyhow::Result<CdiPublisher> {
        // No TTL: a pair's key lives until the pair leaves the window (then it is deleted).
        let kv = super::open_kv(js, BUCKET, Duration::ZERO).await?;
        Ok(CdiPublisher {
            sink: NatsSink::new(js.clone()),
            kv,
        })
    }

    /// Publishes the changed pairs' CDI and updates the bucket. `give_up` ends retries (on
    /// shutdown); what is not published now is published with the next change.
    pub async fn publish(
        &self,
        changed: Vec<(String, String, Option<Cdi>)>,
        give_up: impl Fn() -> bool,
    ) -> anyhow::Result<()> {
        let records: Vec<OutputRecord> = changed
            .iter()
            .filter_map(|(_, _, c)| c.as_ref())
            .map(|c| {
                let json = c.to_json();
                OutputRecord {
                    subject: CDI_SUBJECT.to_string(),
                    msg_id: format!("{}:{}:{}", c.rep_id, c.customer_id, c.as_of),
                    payload: Bytes::from(json),
                }
            })
            .collect();
        self.sink
            .publish_all(&records, give_up)
            .await
            .context("publishing CDI records")?;
        metrics::counter!(CDI_PUBLISHED).increment(records.len() as u64);
        let writes = futures::stream::iter(changed.into_iter().map(|(rep, customer, cdi)| {
            let kv = self.kv.clone();
            async move {
                let k = key(&rep, &customer);
                let written = match cdi {
                    Some(c) => kv
                        .put(&k, Bytes::from(c.to_json()))
                        .await
                        .map(|_| ())
                        .map_err(anyhow::Error::from),
                    None => kv.delete(&k).await.map_err(anyhow::Error::from),
                };
                written.with_context(|| format!("writing {k} to bucket {BUCKET}"))
            }
        }))
        .buffer_unordered(CONCURRENT_PUTS)
        .collect::<Vec<_>>()
        .await;
        writes.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn keys_are_valid_kv_keys_and_keep_ids_apart() {
        assert_eq!(key("r1", "c1"), "r1.c1");
        assert_eq!(key("r.1", "c 1/x"), "r=2E1.c=201=2Fx");
        // Chinese ids stay unique and valid.
        let k = key("张伟", "c1");
        assert!(
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
            "{k}"
        );
        assert_ne!(key("a.b", "c"), key("a", "b.c"));
    }
}
