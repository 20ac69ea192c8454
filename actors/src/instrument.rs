//! Actor metrics, one mechanism for every actor kind: [`Metered`] wraps an
//! actor, counts starts, stops, restarts, messages by kind and handler
//! latency, and keeps each live actor's [`ActorStats`] in a global
//! [`directory`] that `/admin/actors` and the metrics scrape read.
//!
//! ractor does not expose mailbox lengths, so depth is `sent − handled`:
//! senders that go through tokun's handles call [`ActorStats::note_sent`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};

use crate::metric;

/// An actor's kind, as a bounded metric label.
pub trait ActorKind {
    const KIND: &'static str;
}

/// A message's kind, as a bounded metric label.
pub trait MessageKind {
    fn kind(&self) -> &'static str;
}

/// Live counters of one actor; shared between the actor and its senders.
#[derive(Debug)]
pub struct ActorStats {
    kind: &'static str,
    id: OnceLock<ActorId>,
    parent: OnceLock<Option<ActorId>>,
    label: OnceLock<String>,
    started: Instant,
    sent: AtomicU64,
    handled: AtomicU64,
    last_handler_ns: AtomicU64,
}

impl ActorStats {
    fn new(kind: &'static str) -> Arc<Self> {
        Arc::new(Self {
            kind,
            id: OnceLock::new(),
            parent: OnceLock::new(),
            label: OnceLock::new(),
            started: Instant::now(),
            sent: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            last_handler_ns: AtomicU64::new(0),
        })
    }

    /// Records one message put in this actor's mailbox.
    pub fn note_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn mailbox_depth(&self) -> u64 {
        self.sent
            .load(Ordering::Relaxed)
            .saturating_sub(self.handled.load(Ordering::Relaxed))
    }

    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    pub fn last_handler_micros(&self) -> f64 {
        self.last_handler_ns.load(Ordering::Relaxed) as f64 / 1000.0
    }

    pub fn uptime_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn id(&self) -> Option<ActorId> {
        self.id.get().copied()
    }

    pub fn parent(&self) -> Option<ActorId> {
        self.parent.get().copied().flatten()
    }

    /// A readable name (e.g. the account id), when the actor has one.
    pub fn label(&self) -> Option<&str> {
        self.label.get().map(String::as_str)
    }

    pub fn set_label(&self, label: String) {
        let _ = self.label.set(label);
    }
}

/// What [`Directory::survey`] found.
#[derive(Debug)]
pub struct Survey {
    /// Live actors.
    pub total: usize,
    pub per_kind: Vec<KindLoad>,
    /// The busiest first.
    pub busiest: Vec<Arc<ActorStats>>,
}

/// The live actors of one kind, summed.
#[derive(Debug, Clone, Copy)]
pub struct KindLoad {
    pub kind: &'static str,
    pub alive: u64,
    pub mailbox_depth: u64,
    pub messages: u64,
}

impl KindLoad {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            alive: 0,
            mailbox_depth: 0,
            messages: 0,
        }
    }

    fn add(&mut self, depth: u64, messages: u64) {
        self.alive += 1;
        self.mailbox_depth += depth;
        self.messages += messages;
    }
}

/// Per-kind lifetime counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct KindCounts {
    pub started: u64,
    pub stopped: u64,
    pub restarted: u64,
}

/// Every live actor, and per-kind counts of all that ever lived.
#[derive(Default)]
pub struct Directory {
    live: Mutex<HashMap<ActorId, Arc<ActorStats>>>,
    kinds: Mutex<HashMap<&'static str, KindCounts>>,
}

static DIRECTORY: LazyLock<Directory> = LazyLock::new(Directory::default);

/// The process-wide actor directory.
pub fn directory() -> &'static Directory {
    &DIRECTORY
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Directory {
    fn started(&self, stats: &Arc<ActorStats>) {
        if let Some(id) = stats.id() {
            lock(&self.live).insert(id, stats.clone());
        }
        let mut kinds = lock(&self.kinds);
        if !kinds.contains_key(stats.kind) {
            // Export the kind's restart counter from zero, so rates and alerts work before the first failure.
            metrics::counter!("tokun_actor_restarts_total", "kind" => stats.kind, "reason" => "failed").absolute(0);
        }
        kinds.entry(stats.kind).or_default().started += 1;
        drop(kinds);
        metric::counter_add("tokun_actor_started_total", &[("kind", stats.kind)], 1);
        metric::gauge_add("tokun_actors_alive", &[("kind", stats.kind)], 1.0);
    }

    fn stopped(&self, id: ActorId, reason: Option<&'static str>) {
        let Some(stats) = lock(&self.live).remove(&id) else {
            return;
        };
        let mut kinds = lock(&self.kinds);
        let counts = kinds.entry(stats.kind).or_default();
        counts.stopped += 1;
        metric::counter_add("tokun_actor_stopped_total", &[("kind", stats.kind)], 1);
        metric::gauge_add("tokun_actors_alive", &[("kind", stats.kind)], -1.0);
        if let Some(reason) = reason {
            counts.restarted += 1;
            metrics::counter!("tokun_actor_restarts_total", "kind" => stats.kind, "reason" => reason).increment(1);
        }
    }

    /// A copy of every live actor's stats.
    pub fn live(&self) -> Vec<Arc<ActorStats>> {
        lock(&self.live).values().cloned().collect()
    }

    /// One pass over the live actors, under the directory's lock: per kind,
    /// how many are alive and their summed mailbox depth and messages; and the
    /// `top` busiest by (mailbox depth, messages). Nothing per actor is cloned
    /// but the `top` kept, so this stays cheap with tens of thousands alive.
    pub fn survey(&self, top: usize) -> Survey {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        let mut per_kind: Vec<KindLoad> = Vec::new();
        // A min-heap of the best `top` so far: its root is the first to go.
        let mut busiest: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new();
        let mut kept: Vec<Arc<ActorStats>> = Vec::new();
        let live = lock(&self.live);
        for stats in live.values() {
            let (depth, handled) = (stats.mailbox_depth(), stats.handled());
            match per_kind
                .iter_mut()
                .find(|k| std::ptr::eq(k.kind, stats.kind))
            {
                Some(load) => load.add(depth, handled),
                None => {
                    let mut load = KindLoad::new(stats.kind);
                    load.add(depth, handled);
                    per_kind.push(load);
                }
            }
            if top == 0 {
                continue;
            }
            let candidate = (depth, handled);
            if busiest.len() < top {
                busiest.push(Reverse((depth, handled, kept.len())));
                kept.push(stats.clone());
            } else if busiest
                .peek()
                .is_some_and(|Reverse((d, h, _))| candidate > (*d, *h))
            {
                // Reuse the evicted slot of `kept`.
                if let Some(Reverse((_, _, slot))) = busiest.pop() {
                    busiest.push(Reverse((depth, handled, slot)));
                    if let Some(entry) = kept.get_mut(slot) {
                        *entry = stats.clone();
                    }
                }
            }
        }
        let total = live.len();
        drop(live);
        let mut order: Vec<(u64, u64, usize)> = busiest.into_iter().map(|Reverse(e)| e).collect();
        order.sort_unstable_by_key(|&(depth, handled, _)| Reverse((depth, handled)));
        let busiest = order
            .into_iter()
            .filter_map(|(_, _, slot)| kept.get(slot).cloned())
            .collect();
        Survey {
            total,
            per_kind,
            busiest,
        }
    }

    pub fn counts(&self) -> Vec<(&'static str, KindCounts)> {
        let mut counts: Vec<_> = lock(&self.kinds).iter().map(|(k, c)| (*k, *c)).collect();
        counts.sort_by_key(|(kind, _)| *kind);
        counts
    }

    /// Publishes mailbox depths per kind (sum and max) as gauges.
    pub fn publish_depths(&self) {
        let mut per_kind: HashMap<&'static str, (u64, u64)> = HashMap::new();
        for stats in lock(&self.live).values() {
            let depth = stats.mailbox_depth();
            let entry = per_kind.entry(stats.kind).or_default();
            entry.0 += depth;
            entry.1 = entry.1.max(depth);
        }
        for (kind, _) in self.counts() {
            let (sum, max) = per_kind.get(kind).copied().unwrap_or_default();
            metrics::gauge!("tokun_actor_mailbox_depth", "kind" => kind).set(sum as f64);
            metrics::gauge!("tokun_actor_mailbox_depth_max", "kind" => kind).set(max as f64);
        }
    }
}

/// Wraps an actor with metrics; behaves exactly like the inner actor.
pub struct Metered<A>(pub A);

/// The wrapped actor's state plus its stats.
pub struct MeteredState<S> {
    pub inner: S,
    stats: Arc<ActorStats>,
}

impl<A> Metered<A>
where
    A: Actor + ActorKind,
    A::Msg: MessageKind,
{
    /// Spawns `actor` under `parent` (or unsupervised); returns its ref and stats.
    pub async fn spawn(
        actor: A,
        args: A::Arguments,
        parent: Option<ActorCell>,
    ) -> Result<(ActorRef<A::Msg>, Arc<ActorStats>), SpawnErr> {
        let stats = ActorStats::new(A::KIND);
        let _ = stats.parent.set(parent.as_ref().map(ActorCell::get_id));
        let args = (args, stats.clone());
        let (actor, _) = match parent {
            Some(parent) => Actor::spawn_linked(None, Metered(actor), args, parent).await?,
            None => Actor::spawn(None, Metered(actor), args).await?,
        };
        Ok((actor, stats))
    }
}

impl<A> Actor for Metered<A>
where
    A: Actor + ActorKind,
    A::Msg: MessageKind,
{
    type Msg = A::Msg;
    type State = MeteredState<A::State>;
    type Arguments = (A::Arguments, Arc<ActorStats>);

    async fn pre_start(
        &self,
        myself: ActorRef<A::Msg>,
        (args, stats): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let _ = stats.id.set(myself.get_id());
        let inner = self.0.pre_start(myself, args).await?;
        directory().started(&stats);
        Ok(MeteredState { inner, stats })
    }

    async fn post_start(
        &self,
        myself: ActorRef<A::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.0.post_start(myself, &mut state.inner).await
    }

    async fn handle(
        &self,
        myself: ActorRef<A::Msg>,
        message: A::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let kind = message.kind();
        let start = Instant::now();
        let result = self.0.handle(myself, message, &mut state.inner).await;
        let elapsed = start.elapsed();
        let stats = &state.stats;
        stats.handled.fetch_add(1, Ordering::Relaxed);
        stats
            .last_handler_ns
            .store(elapsed.as_nanos() as u64, Ordering::Relaxed);
        metric::counter_add(
            "tokun_actor_messages_total",
            &[("kind", A::KIND), ("message", kind)],
            1,
        );
        metric::histogram_record(
            "tokun_actor_handler_seconds",
            &[("kind", A::KIND)],
            elapsed.as_secs_f64(),
        );
        result
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<A::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match &event {
            SupervisionEvent::ActorFailed(child, _) => {
                directory().stopped(child.get_id(), Some("failed"))
            }
            // A child stopped normally already left the directory in its post_stop;
            // one killed (no post_stop) leaves it here.
            SupervisionEvent::ActorTerminated(child, ..) => {
                directory().stopped(child.get_id(), None)
            }
            _ => {}
        }
        self.0
            .handle_supervisor_evt(myself, event, &mut state.inner)
            .await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<A::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let id = myself.get_id();
        let result = self.0.post_stop(myself, &mut state.inner).await;
        directory().stopped(id, None);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Parent;
    struct Crasher;

    impl ActorKind for Parent {
        const KIND: &'static str = "test_parent";
    }

    impl ActorKind for Crasher {
        const KIND: &'static str = "test_crasher";
    }

    enum Never {}

    impl MessageKind for Never {
        fn kind(&self) -> &'static str {
            match *self {}
        }
    }

    enum Poke {
        Fine,
        Crash,
    }

    impl MessageKind for Poke {
        fn kind(&self) -> &'static str {
            match self {
                Poke::Fine => "fine",
                Poke::Crash => "crash",
            }
        }
    }

    impl Actor for Parent {
        type Msg = Never;
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<Never>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    impl Actor for Crasher {
        type Msg = Poke;
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<Poke>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(
            &self,
            _: ActorRef<Poke>,
            message: Poke,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            match message {
                Poke::Fine => Ok(()),
                Poke::Crash => Err("boom".into()),
            }
        }
    }

    struct Worker;

    impl ActorKind for Worker {
        const KIND: &'static str = "test_worker";
    }

    impl Actor for Worker {
        type Msg = Poke;
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<Poke>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(
            &self,
            _: ActorRef<Poke>,
            _: Poke,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_survey_sums_each_kind_and_keeps_the_busiest_in_order() {
        let mut workers = Vec::new();
        for i in 0..30u64 {
            let (actor, stats) = Metered::spawn(Worker, (), None).await.unwrap();
            for _ in 0..(1_000 + i) {
                actor.send_message(Poke::Fine).unwrap();
            }
            workers.push((actor, stats));
        }
        for (_, stats) in &workers {
            while stats.handled() < 1_000 {
                tokio::task::yield_now().await;
            }
        }
        while workers.iter().map(|(_, s)| s.handled()).sum::<u64>() < 30 * 1_000 + 435 {
            tokio::task::yield_now().await;
        }
        // Other tests of this binary run actors beside these (the directory
        // is global), and one with messages waiting ranks first: look deep
        // enough to see past them.
        let survey = directory().survey(64);
        let load = survey
            .per_kind
            .iter()
            .find(|k| k.kind == "test_worker")
            .unwrap();
        assert_eq!((load.alive, load.messages), (30, 30 * 1_000 + 435));
        let top: Vec<u64> = survey
            .busiest
            .iter()
            .filter(|s| s.kind() == "test_worker")
            .take(5)
            .map(|s| s.handled())
            .collect();
        assert_eq!(top, vec![1_029, 1_028, 1_027, 1_026, 1_025]);
        assert!(survey.total >= 30);
        for (actor, _) in workers {
            actor.stop(None);
        }
    }

    fn counts(kind: &str) -> KindCounts {
        directory()
            .counts()
            .into_iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, c)| c)
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_crashed_actor_shows_up_in_restarts_and_leaves_the_directory() {
        let (parent, parent_stats) = Metered::spawn(Parent, (), None).await.unwrap();
        let (child, stats) = Metered::spawn(Crasher, (), Some(parent.get_cell()))
            .await
            .unwrap();
        assert_eq!(stats.parent(), parent_stats.id());
        let live = |id| directory().live().iter().any(|s| s.id() == Some(id));
        assert!(live(child.get_id()));
        stats.note_sent();
        child.send_message(Poke::Fine).unwrap();
        stats.note_sent();
        child.send_message(Poke::Crash).unwrap();
        let _ = child
            .get_cell()
            .wait(Some(std::time::Duration::from_secs(5)))
            .await;
        // The parent's supervision event is handled right after the child dies.
        for _ in 0..100 {
            if counts("test_crasher").restarted == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(counts("test_crasher").restarted, 1);
        assert_eq!(counts("test_crasher").started, 1);
        assert!(!live(child.get_id()));
        assert_eq!(
            stats.handled(),
            2,
            "both messages were handled, the second one failed"
        );
        assert_eq!(stats.mailbox_depth(), 0);
        parent.stop(None);
    }
}
