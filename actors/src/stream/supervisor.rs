//! The stream supervisor: parent of every stream actor.
//!
//! Stream actors are spawned linked to it straight from the edge (no mailbox
//! hop on the request path). A crashed stream actor is not restarted — its
//! client has already seen part of a response — but the crash is logged and
//! counted. At shutdown it cancels what is still running so each stream
//! settles what it relayed.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::account::supervisor::AccountsHandle;
use crate::meter::HoldPolicy;
use crate::stats::StreamStats;
use crate::stream::{StreamActor, StreamArgs, StreamStart, Work};

pub struct StreamSupervisor;

pub enum StreamSupervisorMsg {}

impl crate::instrument::ActorKind for StreamSupervisor {
    const KIND: &'static str = "stream_supervisor";
}

impl crate::instrument::MessageKind for StreamSupervisorMsg {
    fn kind(&self) -> &'static str {
        match *self {}
    }
}

pub struct StreamSupervisorState {
    stats: Arc<StreamStats>,
}

impl Actor for StreamSupervisor {
    type Msg = StreamSupervisorMsg;
    type State = StreamSupervisorState;
    type Arguments = Arc<StreamStats>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        stats: Arc<StreamStats>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(StreamSupervisorState { stats })
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            // A failed actor skips post_stop; count it stopped here.
            state.stats.stopped();
            tracing::error!(actor = %cell.get_id(), %error, "stream actor crashed");
        }
        Ok(())
    }
}

/// Cheap-clone handle to the supervisor and its counters; it also hands
/// every stream actor the accounts and the hold policy it meters with.
#[derive(Clone)]
pub struct StreamSupervisorHandle {
    cell: ActorCell,
    stats: Arc<StreamStats>,
    accounts: AccountsHandle,
    policy: HoldPolicy,
}

impl StreamSupervisorHandle {
    pub async fn start(
        accounts: AccountsHandle,
        policy: HoldPolicy,
    ) -> Result<Self, ractor::SpawnErr> {
        let stats = Arc::new(StreamStats::default());
        let (actor, _) =
            crate::instrument::Metered::spawn(StreamSupervisor, stats.clone(), None).await?;
        Ok(Self {
            cell: actor.get_cell(),
            stats,
            accounts,
            policy,
        })
    }

    /// The rule every hold is sized by (also for Realtime responses).
    pub fn policy(&self) -> HoldPolicy {
        self.policy
    }

    pub fn stats(&self) -> &Arc<StreamStats> {
        &self.stats
    }

    /// Starts a stream actor for one request, supervised by this supervisor.
    /// It places the request's hold itself; a spawn that fails held nothing.
    pub async fn spawn(&self, args: StreamArgs, work: Work) -> Result<(), ractor::SpawnErr> {
        let start = StreamStart {
            args,
            work,
            accounts: self.accounts.clone(),
            policy: self.policy,
            stats: self.stats.clone(),
        };
        crate::instrument::Metered::spawn(StreamActor, start, Some(self.cell.clone())).await?;
        Ok(())
    }

    /// Waits up to `grace` for streams to finish, then stops the rest: a stream
    /// actor stopped before it finished settles what it relayed in `post_stop`.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while self.stats.live() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let children = self.cell.get_children();
        if !children.is_empty() {
            tracing::warn!(
                streams = children.len(),
                "cancelling streams still running at shutdown"
            );
        }
        self.cell
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        self.cell.stop(Some("shutdown".into()));
    }
}
