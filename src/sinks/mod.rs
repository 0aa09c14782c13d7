//! Where outputs go. `nats` publishes alerts, sessions and dead letters to JetStream with
//! `Nats-Msg-Id` and waits for the acks; notifiers (Alertmanager, WeCom, DingTalk, webhooks)
//! read from those streams.

pub mod nats;
