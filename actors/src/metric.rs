//! Metric updates through cached handles.
//!
//! `metrics::counter!(name, labels…)` builds a key (allocating every owned
//! label value), hashes it and looks it up in the recorder's registry on every
//! call; the request path makes a few dozen such calls per request. Once a
//! recorder is installed ([`enable`]), these functions keep each thread's
//! handles in a small map keyed by name and label values, so a repeat costs
//! one hash of a short string and an atomic update. Label sets are bounded
//! (kinds, configured model and provider names, statuses), so the maps are too.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics::{Counter, Gauge, Histogram, Label};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Call once the process-wide recorder is installed. Before that every update
/// goes through the macros: a handle fetched with no recorder is a no-op
/// forever, and caching it would hide the recorder installed later.
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

/// `(label name, label value)` pairs.
pub type Labels<'a> = &'a [(&'static str, &'a str)];

pub fn counter_add(name: &'static str, labels: Labels<'_>, value: u64) {
    with_handle(
        name,
        labels,
        |cache| &mut cache.counters,
        |labels| metrics::counter!(name, labels),
        |counter| counter.increment(value),
    );
}

pub fn gauge_add(name: &'static str, labels: Labels<'_>, delta: f64) {
    with_handle(
        name,
        labels,
        |cache| &mut cache.gauges,
        |labels| metrics::gauge!(name, labels),
        |gauge| gauge.increment(delta),
    );
}

pub fn gauge_set(name: &'static str, labels: Labels<'_>, value: f64) {
    with_handle(
        name,
        labels,
        |cache| &mut cache.gauges,
        |labels| metrics::gauge!(name, labels),
        |gauge| gauge.set(value),
    );
}

pub fn histogram_record(name: &'static str, labels: Labels<'_>, value: f64) {
    with_handle(
        name,
        labels,
        |cache| &mut cache.histograms,
        |labels| metrics::histogram!(name, labels),
        |histogram| histogram.record(value),
    );
}

#[derive(Default)]
struct Cache {
    /// Scratch buffer for the lookup key, reused so a hit allocates nothing.
    key: String,
    counters: HashMap<String, Counter>,
    gauges: HashMap<String, Gauge>,
    histograms: HashMap<String, Histogram>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::default();
}

fn owned(labels: Labels<'_>) -> Vec<Label> {
    labels
        .iter()
        .map(|(key, value)| Label::new(*key, (*value).to_owned()))
        .collect()
}

fn with_handle<H>(
    name: &'static str,
    labels: Labels<'_>,
    map: fn(&mut Cache) -> &mut HashMap<String, H>,
    make: impl FnOnce(Vec<Label>) -> H,
    update: impl FnOnce(&H),
) {
    if !ENABLED.load(Ordering::Acquire) {
        update(&make(owned(labels)));
        return;
    }
    CACHE.with_borrow_mut(|cache| {
        let mut key = std::mem::take(&mut cache.key);
        key.clear();
        key.push_str(name);
        for (label, value) in labels {
            // Separators no metric or label name contains keep keys unambiguous.
            key.push('\u{1f}');
            key.push_str(label);
            key.push('=');
            key.push_str(value);
        }
        let handles = map(cache);
        match handles.get(key.as_str()) {
            Some(handle) => update(handle),
            None => {
                let handle = make(owned(labels));
                update(&handle);
                handles.insert(key.clone(), handle);
            }
        }
        cache.key = key;
    });
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    #[test]
    fn cached_handles_update_the_same_series() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            enable();
            for _ in 0..3 {
                counter_add("c", &[("model", "m1"), ("status", "200")], 2);
            }
            counter_add("c", &[("model", "m2"), ("status", "200")], 1);
            gauge_add("g", &[], 5.0);
            gauge_add("g", &[], -2.0);
            histogram_record("h", &[("kind", "x")], 0.5);
        });
        let mut seen: Vec<(String, Vec<String>, String)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels = key.labels().map(|l| format!("{}={}", l.key(), l.value()));
                let value = match value {
                    DebugValue::Counter(v) => v.to_string(),
                    DebugValue::Gauge(v) => v.to_string(),
                    DebugValue::Histogram(v) => format!("{:?}", v),
                };
                (key.name().to_owned(), labels.collect(), value)
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (
                    "c".into(),
                    vec!["model=m1".into(), "status=200".into()],
                    "6".into()
                ),
                (
                    "c".into(),
                    vec!["model=m2".into(), "status=200".into()],
                    "1".into()
                ),
                ("g".into(), vec![], "3".into()),
                ("h".into(), vec!["kind=x".into()], "[0.5]".into()),
            ]
        );
    }
}
