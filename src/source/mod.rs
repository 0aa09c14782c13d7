//! Where input events come from. `jetstream` feeds the live run (durable pull consumer, one
//! fetch per micro-batch) and replays acked input after a restart; a replay from a file reads
//! JSON lines through the same engine.

pub mod jetstream;
