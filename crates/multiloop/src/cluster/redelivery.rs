//! A chunk delivered again runs only the tasks its caller still waits for.
//!
//! The server delivers a chunk again when the host that had it went
//! silent for `ack_wait`: it died, lost its link, or stopped; it may have
//! published some or all of the chunk's outcomes before that. The host that
//! gets the chunk again asks the caller (a request to the caller's own
//! subject) which of the chunk's tasks have no outcome yet, and runs only
//! those. So a task whose outcome the caller already has is not run again,
//! and routed work that carries state is not replayed on the partition's
//! new owner for a round the caller already settled.
//!
//! What the host does with the answer:
//! - the tasks still wanted: runs those (all of them for a chunk folded
//!   by a reducer, whose outcome is one partial);
//! - none (the caller has every outcome, or dropped the call): acknowledges
//!   the chunk without running it;
//! - no answer in time, or an error: runs the whole chunk, the safe
//!   default (the caller keeps the first outcome of each task);
//! - nobody answers and the caller's results consumer is gone (the caller
//!   closed, or died and stayed away past its consumer's inactivity
//!   limit): the outcomes have no one to go to; acknowledges the chunk
//!   without running it.

use std::sync::Weak;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;

use super::Connection;
use super::envelope::{self, Ask, Wanted, Work};
use crate::pool::Inner;

/// What a host runs of a chunk delivered again.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Run {
    /// The whole chunk.
    All,
    /// Only these tasks (indices in the chunk, ascending); empty: none.
    Only(Vec<u32>),
}

/// The name of a caller's results consumer.
pub(crate) fn results_consumer(caller: &str) -> String {
    format!("res-{caller}")
}

/// Asks `work`'s caller which of its tasks it still waits for, waiting
/// at most `wait` for the answer.
pub(crate) async fn still_wanted(conn: &Connection, work: &Work<'_>, wait: Duration) -> Run {
    let subject = conn.names.ask_subject(work.caller);
    let ask = envelope::encode(&Ask { chunk: work.chunk });
    let answer = tokio::time::timeout(wait, conn.client.request(subject, ask.into())).await;
    let reply = match answer {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            return match caller_gone(conn, work.caller).await {
                true => Run::Only(Vec::new()),
                false => Run::All,
            };
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cluster host: asking a caller failed; running the chunk");
            return Run::All;
        }
        Err(_) => return Run::All,
    };
    match envelope::decode::<Wanted>(&reply.payload) {
        Ok(wanted) if work.reducer.is_some() && !wanted.tasks.is_empty() => Run::All,
        Ok(Wanted { mut tasks }) => {
            let count = work.offsets.len().saturating_sub(1);
            tasks.retain(|&i| (i as usize) < count);
            tasks.sort_unstable();
            tasks.dedup();
            Run::Only(tasks)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cluster host: a caller's answer is unreadable; running the chunk");
            Run::All
        }
    }
}

/// Whether `caller` is gone for good: its results consumer no longer
/// exists. Anything else (the server busy, an error) counts as not gone.
async fn caller_gone(conn: &Connection, caller: &str) -> bool {
    let found = conn
        .js
        .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
            results_consumer(caller),
            conn.names.results_stream.as_str(),
        )
        .await;
    match found {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            jetstream::stream::ConsumerErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
        ),
    }
}

/// The arguments of tasks `which` of a chunk (`offsets` into `payload`),
/// back to back, and their offsets.
pub(crate) fn subset(payload: &[u8], offsets: &[u32], which: &[u32]) -> (Vec<u8>, Vec<u32>) {
    let mut args = Vec::new();
    let mut at = Vec::with_capacity(which.len() + 1);
    at.push(0);
    for &i in which {
        let (start, end) = (
            offsets[i as usize] as usize,
            offsets[i as usize + 1] as usize,
        );
        args.extend_from_slice(&payload[start..end]);
        at.push(args.len() as u32);
    }
    (args, at)
}

/// Answers hosts' questions about this caller's chunks for as long as the
/// pool lives.
pub(crate) async fn answer(
    inner: Weak<Inner>,
    client: async_nats::Client,
    mut asks: async_nats::Subscriber,
) {
    while let Some(message) = asks.next().await {
        let Some(reply) = message.reply else { continue };
        let Ok(ask) = envelope::decode::<Ask>(&message.payload) else {
            continue;
        };
        let Some(pool) = inner.upgrade() else { return };
        let tasks = pool.lock().still_pending(ask.chunk);
        drop(pool);
        let body = envelope::encode(&Wanted { tasks });
        if let Err(e) = client.publish(reply, body.into()).await {
            tracing::debug!(error = %e, "cluster: could not answer a host");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subset_keeps_the_arguments_of_the_tasks_asked_for_in_order() {
        let payload = b"aabbbcd";
        let offsets = [0, 2, 5, 6, 7];
        let (args, at) = subset(payload, &offsets, &[1, 3]);
        assert_eq!(args, b"bbbd");
        assert_eq!(at, vec![0, 3, 4]);
        let (args, at) = subset(payload, &offsets, &[]);
        assert!(args.is_empty());
        assert_eq!(at, vec![0]);
    }
}
