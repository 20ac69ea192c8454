//! Capturing a debugged request at the edge, whatever its transport: the
//! request as tokun read it, and what the client was answered, stored when
//! the request ends.
//!
//! A request of a key without debugging costs one bool check
//! ([`Capture::begin`] returns `None`) and nothing else: no copy, no task.
//! With debugging on, the stream actor's relay channel is put behind a small
//! forwarding task ([`Capture::relay`]) that hands every event on unchanged
//! and watches it go by ([`Assembly`]). It keeps the relay's backpressure
//! (it takes the next event only after the previous one was accepted) and
//! its "client gone" signal (when the edge drops its receiver, the task
//! drops the actor's at once). It ends when the stream actor's channel
//! closes or the client leaves, so it lives no longer than the request;
//! then it writes the body on a blocking thread, never in the relay's way.
//!
//! Whether to keep the body is decided again when it is written, from the
//! store, which every change to a key reaches before the auth cache does:
//! a key revoked or switched off meanwhile keeps nothing, checked before the
//! write and after it (so a revocation deleting the key's bodies while this
//! one is written never misses it).

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokun_actors::{RelayEvent, Transport};
use tokun_storage::{AccountId, DebugBody, KeyId, StorageError, Store};

use super::assemble::Assembly;
use crate::auth::Caller;
use crate::state::AppState;

/// A request or response body larger than this (as JSON) is stored as a
/// note of its size instead: debugging is for reading, and one huge
/// embeddings answer should not fill the disk.
const MAX_STORED_BYTES: usize = 1024 * 1024;

/// A debugged request on its way: who, what was asked, and where to keep it.
pub(crate) struct Capture {
    store: Store,
    account: AccountId,
    key: KeyId,
    request_id: Arc<str>,
    at_ms: u64,
    model: String,
    transport: Transport,
    request: Value,
}

impl Capture {
    /// Starts capturing when the caller's key has debugging on; `None`
    /// (nothing copied) otherwise. Over HTTP the caller was just read from
    /// the auth cache; a `/v1/ws` socket read its key once, at connect, so
    /// the cache is asked for the key's flag now.
    pub(crate) fn begin(
        state: &AppState,
        caller: Option<&Caller>,
        transport: Transport,
        request_id: &Arc<str>,
        (model, request): (&str, &impl Serialize),
    ) -> Option<Capture> {
        let caller = caller?;
        let on = match transport {
            Transport::Ws => state.keys().debugging(&caller.key),
            Transport::Http | Transport::Realtime => caller.key.debug,
        };
        if !on {
            return None;
        }
        Some(Capture {
            store: state.services().store.clone(),
            account: caller.account,
            key: caller.key.id,
            request_id: request_id.clone(),
            at_ms: tokun_providers::clock::unix_ms(),
            model: model.to_owned(),
            transport,
            request: bounded(serde_json::to_value(request).unwrap_or_default()),
        })
    }

    /// The relay the edge reads: `events` itself without a capture, or
    /// the capture's forwarded copy of it.
    pub(crate) fn relay(
        capture: Option<Capture>,
        events: mpsc::Receiver<RelayEvent>,
        buffer: usize,
    ) -> mpsc::Receiver<RelayEvent> {
        match capture {
            Some(capture) => capture.forward(events, buffer),
            None => events,
        }
    }

    fn forward(
        self,
        mut from_actor: mpsc::Receiver<RelayEvent>,
        buffer: usize,
    ) -> mpsc::Receiver<RelayEvent> {
        let (to_edge, events) = mpsc::channel(buffer);
        // Owned by the request: it ends when the stream actor's channel
        // closes (the actor ended, or was stopped at shutdown) or the edge
        // drops its receiver.
        tokio::spawn(async move {
            let mut assembly = Assembly::default();
            loop {
                let event = tokio::select! {
                    biased;
                    () = to_edge.closed() => break,
                    event = from_actor.recv() => event,
                };
                let Some(event) = event else { break };
                assembly.observe(&event);
                if to_edge.send(event).await.is_err() {
                    break;
                }
            }
            // The client gone, the actor learns it now, not at its next send.
            drop(from_actor);
            self.keep(assembly).await;
        });
        events
    }

    /// Writes the body on a blocking thread, if the key still debugs.
    async fn keep(self, assembly: Assembly) {
        let (status, response) = assembly.finish();
        let body = DebugBody {
            request_id: self.request_id.to_string(),
            at_ms: self.at_ms,
            account: self.account,
            key: self.key,
            model: self.model,
            transport: self.transport.as_str().to_owned(),
            status,
            request: self.request,
            response: bounded(response),
        };
        let store = self.store;
        match tokio::task::spawn_blocking(move || keep_if_debugging(&store, &body)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "a debug body could not be stored"),
            Err(error) => tracing::warn!(%error, "storing a debug body panicked"),
        }
    }
}

/// Stores `body` while its key is live with debugging on; true if kept.
fn keep_if_debugging(store: &Store, body: &DebugBody) -> Result<bool, StorageError> {
    if !debugging(store, body.key)? {
        return Ok(false);
    }
    let id = store.put_debug_body(body)?;
    if !debugging(store, body.key)? {
        // Revoked or switched off while it was written: it never stays.
        store.delete_debug_body(body.key, id)?;
        return Ok(false);
    }
    Ok(true)
}

/// The key's stored record says it debugs and is not revoked.
fn debugging(store: &Store, key: KeyId) -> Result<bool, StorageError> {
    Ok(store
        .key(key)?
        .is_some_and(|record| record.debug && !record.is_revoked()))
}

/// `value`, or a note of its size when it is larger than [`MAX_STORED_BYTES`].
fn bounded(value: Value) -> Value {
    let bytes = serde_json::to_vec(&value).map_or(0, |text| text.len());
    if bytes <= MAX_STORED_BYTES {
        return value;
    }
    json!({
        "omitted": "This body is larger than the 1 MiB request debugging keeps.",
        "bytes": bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_over_the_limit_become_a_note_of_their_size() {
        let small = json!({"content": "hello"});
        assert_eq!(bounded(small.clone()), small);
        let large = json!({"content": "x".repeat(MAX_STORED_BYTES)});
        let note = bounded(large);
        assert!(note["omitted"].is_string());
        assert_eq!(note["bytes"], MAX_STORED_BYTES + 14);
    }
}
