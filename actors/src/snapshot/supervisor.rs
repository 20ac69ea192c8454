//! The snapshot supervisor: parent of the one snapshot actor, beside the
//! ledger actor. A snapshot actor that fails (a panic; a failed snapshot is
//! a value, not a failure) is started again with the same arguments: its
//! state is only a connection and a timer, and the watermark lives in
//! Postgres. The handle (`SnapshotHandle`) finds the current actor through
//! a slot the supervisor keeps up to date.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokun_storage::Store;
use tokun_storage::postgres::{PgTarget, SnapshotReport, snapshot_lag};

use crate::instrument::{ActorKind, ActorStats, MessageKind, Metered};
use crate::snapshot::{
    SnapshotActor, SnapshotArgs, SnapshotError, SnapshotMsg, SnapshotStatus, SnapshotView,
};

/// The live snapshot actor (`None` between a failure and its restart).
type Slot = Arc<Mutex<Option<(ActorRef<SnapshotMsg>, Arc<ActorStats>)>>>;

pub struct SnapshotSupervisor;

pub enum SnapshotSupervisorMsg {}

pub struct SnapshotSupervisorState {
    args: SnapshotArgs,
    slot: Slot,
}

/// Cheap-clone handle: trigger a snapshot, read the status and the lag.
#[derive(Clone)]
pub struct SnapshotHandle {
    supervisor: ActorRef<SnapshotSupervisorMsg>,
    slot: Slot,
    status: Arc<SnapshotStatus>,
    store: Store,
}

/// How far Postgres is behind sled.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lag {
    pub entries: u64,
    /// Age of the oldest entry not yet in Postgres; 0 when there is none.
    pub seconds: f64,
}

impl ActorKind for SnapshotSupervisor {
    const KIND: &'static str = "snapshot_supervisor";
}

impl MessageKind for SnapshotSupervisorMsg {
    fn kind(&self) -> &'static str {
        match *self {}
    }
}

impl Actor for SnapshotSupervisor {
    type Msg = SnapshotSupervisorMsg;
    type State = SnapshotSupervisorState;
    type Arguments = (SnapshotArgs, Slot);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (args, slot): (SnapshotArgs, Slot),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SnapshotSupervisorState { args, slot })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                tracing::error!(actor = %cell.get_id(), %error, "snapshot actor crashed; restarting it");
                *lock(&state.slot) = None;
                state.spawn_child(&myself).await?;
            }
            SupervisionEvent::ActorTerminated(..) => *lock(&state.slot) = None,
            _ => {}
        }
        Ok(())
    }
}

impl SnapshotSupervisorState {
    async fn spawn_child(
        &self,
        myself: &ActorRef<SnapshotSupervisorMsg>,
    ) -> Result<(), ractor::SpawnErr> {
        spawn_actor(self.args.clone(), myself, &self.slot).await
    }
}

/// Spawns the snapshot actor under `supervisor` and puts it in the slot.
async fn spawn_actor(
    args: SnapshotArgs,
    supervisor: &ActorRef<SnapshotSupervisorMsg>,
    slot: &Slot,
) -> Result<(), ractor::SpawnErr> {
    let child = Metered::spawn(SnapshotActor, args, Some(supervisor.get_cell())).await?;
    *lock(slot) = Some(child);
    Ok(())
}

impl SnapshotHandle {
    /// Starts the supervisor and its snapshot actor, which snapshots at once
    /// and then every `interval`.
    pub async fn start(
        store: Store,
        target: PgTarget,
        interval: Duration,
    ) -> Result<SnapshotHandle, ractor::SpawnErr> {
        let status = Arc::new(SnapshotStatus::default());
        let args = SnapshotArgs {
            store: store.clone(),
            target,
            interval,
            status: status.clone(),
        };
        let slot = Slot::default();
        let (supervisor, _) =
            Metered::spawn(SnapshotSupervisor, (args.clone(), slot.clone()), None).await?;
        // Spawned here, not in the supervisor's `post_start`, so the actor is
        // in the slot when `start` returns.
        spawn_actor(args, &supervisor, &slot).await?;
        Ok(SnapshotHandle {
            supervisor,
            slot,
            status,
            store,
        })
    }

    /// Snapshots now (after any snapshot already running) and waits up to
    /// `timeout` for the report.
    pub async fn snapshot_now(&self, timeout: Duration) -> Result<SnapshotReport, SnapshotError> {
        let Some((actor, stats)) = lock(&self.slot).clone() else {
            return Err(SnapshotError::Unavailable);
        };
        stats.note_sent();
        match actor.call(SnapshotMsg::Now, Some(timeout)).await {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            Ok(ractor::rpc::CallResult::Timeout) => Err(SnapshotError::TimedOut(timeout)),
            _ => Err(SnapshotError::Unavailable),
        }
    }

    pub fn status(&self) -> SnapshotView {
        self.status.view()
    }

    /// The lag now: entries in sled past the watermark, and the age of the
    /// oldest of them. Before the watermark is known, everything counts.
    pub fn lag(&self) -> Lag {
        let watermark = self.status.view().watermark.unwrap_or(0);
        match snapshot_lag(&self.store, watermark) {
            Ok(lag) => Lag {
                entries: lag.entries,
                seconds: lag.oldest_at_ms.map_or(0.0, |at| {
                    tokun_providers::clock::unix_ms().saturating_sub(at) as f64 / 1000.0
                }),
            },
            Err(error) => {
                tracing::warn!(%error, "cannot measure the snapshot lag");
                Lag::default()
            }
        }
    }

    /// Stops the actor (after the snapshot it may be running) and its supervisor.
    pub async fn stop(&self) {
        let child = lock(&self.slot).clone();
        if let Some((actor, _)) = child {
            let _ = actor.stop_and_wait(Some("shutdown".into()), None).await;
        }
        let _ = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), None)
            .await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
