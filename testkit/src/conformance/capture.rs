//! A `tracing` subscriber for the suite's parent process that keeps every event, so that trials
//! can check what the pool logged (and what its workers forwarded).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One event as the parent's subscriber saw it.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The event's target.
    pub target: String,
    /// Its level.
    pub level: Level,
    /// Its fields, `message` included, as text.
    pub fields: BTreeMap<String, String>,
}

impl Captured {
    /// The text of field `name`, or `""`.
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

static EVENTS: OnceLock<Mutex<Vec<Captured>>> = OnceLock::new();

fn events() -> &'static Mutex<Vec<Captured>> {
    EVENTS.get_or_init(|| Mutex::new(Vec::new()))
}

/// The target of the probe's own `debug!` events: the suite's parent keeps them as a program
/// with `RUST_LOG=info,looppool_probe_user=debug` would.
pub const USER_TARGET: &str = "looppool_probe_user";

/// Installs the capturing subscriber (`INFO`, and `DEBUG` for [`USER_TARGET`] and for
/// `looppool::call`, which names each placed task) as the process's global default, once.
pub fn install() {
    let filter = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target(USER_TARGET, LevelFilter::DEBUG)
        .with_target("looppool::call", LevelFilter::DEBUG);
    let subscriber = tracing_subscriber::registry().with(Keep.with_filter(filter));
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// The events captured so far for which `keep` holds.
pub fn captured(keep: impl Fn(&Captured) -> bool) -> Vec<Captured> {
    let all = events().lock().unwrap_or_else(|e| e.into_inner());
    all.iter().filter(|e| keep(e)).cloned().collect()
}

struct Keep;

impl<S: Subscriber> Layer<S> for Keep {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let captured = Captured {
            target: event.metadata().target().to_string(),
            level: *event.metadata().level(),
            fields: fields.0,
        };
        events()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(captured);
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}
