//! Reading the cluster stream by time, for `aggd replay --cluster`: it works from any
//! node, and after any node's disk is gone.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;

use super::nats::Joined;
use super::owner::Applier;
use crate::aggregate::worker::WorkItem;

/// What a stream read covered.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamRead {
    /// Messages read.
    pub messages: u64,
    /// Datapoints handed to the caller (republished records counted once).
    pub datapoints: u64,
    /// Messages that did not decode (skipped).
    pub malformed: u64,
}

/// Calls `f` with every datapoint of every shard's messages stored from `from` (Unix s)
/// on, up to the stream's last message when the read began or the first message stored
/// after `to`, each journal record once (deduplicated like a shard owner does).
///
/// Errors: the stream cannot be read (NATS down, no such stream).
pub async fn read_stream(
    joined: &Joined,
    from: f64,
    to: f64,
    mut f: impl FnMut(&WorkItem),
) -> Result<StreamRead, async_nats::Error> {
    let mut stream = joined.stream.clone();
    let last = stream.info().await?.state.last_sequence;
    let mut read = StreamRead::default();
    if last == 0 {
        return Ok(read);
    }
    let start = time::OffsetDateTime::from_unix_timestamp_nanos((from * 1e9) as i128)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let to_ns = (to * 1e9) as i128;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("aggd.{}.shard.*", joined.cfg.name),
            deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut applier = Applier::default();
    let mut out = vec![crate::aggregate::batch::Batch::new()];
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let m = match next {
            Ok(Some(m)) => m?,
            // Nothing more within 5 s, or the end.
            Ok(None) | Err(_) => break,
        };
        let info = m.info()?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if info.published.unix_timestamp_nanos() > to_ns {
            break;
        }
        read.messages += 1;
        let shard = m.subject.rsplit('.').next().and_then(|k| k.parse().ok());
        let Some(shard) = shard else {
            read.malformed += 1;
            continue;
        };
        match applier.apply(&m.payload, shard, 0, &mut out) {
            Ok(_) => {
                for it in out[0].items() {
                    read.datapoints += 1;
                    f(it);
                }
                out[0].clear();
            }
            Err(_) => read.malformed += 1,
        }
        if seq >= last || pending == 0 {
            break;
        }
    }
    Ok(read)
}
