//! Re-emits a worker's `tracing` events in the parent under the worker-side target, so that the
//! parent's filters (`RUST_LOG=myservice=debug`, a `Targets` filter, …) apply to them as they
//! would in one process.
//!
//! `tracing` macros need a target known at compile time; a relayed event's target is only known
//! when its frame arrives. Each (target, level) pair therefore gets a callsite of its own, made
//! once, registered with `tracing` like a macro's, and kept for the life of the process. Their
//! number is bounded: past [`MAX_TARGETS`] distinct targets, further events are emitted under the
//! target `looppool::worker` with the worker-side target in a field `worker_target`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use tracing::callsite::{Callsite, Identifier};
use tracing::field::{display, FieldSet, Value};
use tracing::level_filters::LevelFilter;
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{dispatcher, Level, Metadata};

/// How many distinct worker-side targets get a callsite of their own.
pub(crate) const MAX_TARGETS: usize = 512;

/// The fields of every relayed event.
const FIELDS: &[&str] = &["message", "pool", "worker", "task"];

/// Emits one event forwarded by worker `worker` of pool `pool`.
pub(crate) fn relay(
    pool: &str,
    worker: usize,
    level: u8,
    task: Option<u64>,
    target: &str,
    message: &str,
) {
    let level = level_of(level);
    if level > LevelFilter::current() || level > tracing::level_filters::STATIC_MAX_LEVEL {
        return;
    }
    let task = TaskField(task);
    match site(target, level) {
        Some(site) => site.emit(message, pool, worker, &task),
        None => overflow(level, pool, worker, &task, target, message),
    }
}

fn level_of(code: u8) -> Level {
    match code {
        1 => Level::ERROR,
        2 => Level::WARN,
        3 => Level::INFO,
        4 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

fn level_index(level: Level) -> usize {
    match level {
        Level::ERROR => 0,
        Level::WARN => 1,
        Level::INFO => 2,
        Level::DEBUG => 3,
        Level::TRACE => 4,
    }
}

type Sites = HashMap<String, [Option<&'static Site>; 5]>;

/// The callsite for `target` at `level`, made on first use; `None` once the bound is reached.
fn site(target: &str, level: Level) -> Option<&'static Site> {
    static SITES: OnceLock<Mutex<Sites>> = OnceLock::new();
    site_in(SITES.get_or_init(Default::default), target, level)
}

/// [`site`], with its table of callsites given.
fn site_in(sites: &Mutex<Sites>, target: &str, level: Level) -> Option<&'static Site> {
    let mut sites = sites.lock().unwrap_or_else(|e| e.into_inner());
    if !sites.contains_key(target) {
        if sites.len() >= MAX_TARGETS {
            return None;
        }
        sites.insert(target.to_string(), [None; 5]);
    }
    let slot = &mut sites.get_mut(target).expect("inserted above")[level_index(level)];
    if let Some(site) = slot {
        return Some(site);
    }
    let site = Site::leak(target, level);
    *slot = Some(site);
    Some(site)
}

/// A callsite made at run time for one (target, level) pair. It lives as long as the process,
/// as a macro's static does.
struct Site {
    meta: OnceLock<Metadata<'static>>,
    interest: AtomicU8,
}

const NEVER: u8 = 0;
const SOMETIMES: u8 = 1;
const ALWAYS: u8 = 2;

impl Site {
    fn leak(target: &str, level: Level) -> &'static Site {
        let target: &'static str = Box::leak(target.to_string().into_boxed_str());
        let site: &'static Site = Box::leak(Box::new(Site {
            meta: OnceLock::new(),
            interest: AtomicU8::new(SOMETIMES),
        }));
        let fields = FieldSet::new(FIELDS, Identifier(site));
        let meta = Metadata::new(
            "event relayed from a worker",
            target,
            level,
            Some(file!()),
            Some(line!()),
            Some(module_path!()),
            fields,
            Kind::EVENT,
        );
        let _ = site.meta.set(meta);
        tracing::callsite::register(site);
        site
    }

    fn emit(&'static self, message: &str, pool: &str, worker: usize, task: &TaskField) {
        let meta = self.metadata();
        let enabled = match self.interest.load(Ordering::Relaxed) {
            NEVER => false,
            ALWAYS => true,
            _ => dispatcher::get_default(|d| d.enabled(meta)),
        };
        if !enabled {
            return;
        }
        let fields = meta.fields();
        let message = display(message);
        let task = display(task);
        let values: [Option<&dyn Value>; 4] =
            [Some(&message), Some(&pool), Some(&worker), Some(&task)];
        let values = fields.value_set_all(&values);
        tracing::Event::dispatch(meta, &values);
    }
}

impl Callsite for Site {
    fn set_interest(&self, interest: Interest) {
        let code = if interest.is_never() {
            NEVER
        } else if interest.is_always() {
            ALWAYS
        } else {
            SOMETIMES
        };
        self.interest.store(code, Ordering::Relaxed);
    }

    fn metadata(&self) -> &Metadata<'_> {
        self.meta
            .get()
            .expect("set before the callsite is registered")
    }
}

/// Past the bound on targets: the event under `looppool::worker`, its target in a field.
fn overflow(
    level: Level,
    pool: &str,
    worker: usize,
    task: &TaskField,
    target: &str,
    message: &str,
) {
    macro_rules! overflow {
        ($level:expr) => {
            tracing::event!(
                target: "looppool::worker",
                $level,
                pool,
                worker,
                task = %task,
                worker_target = target,
                "{message}"
            )
        };
    }
    match level {
        Level::ERROR => overflow!(Level::ERROR),
        Level::WARN => overflow!(Level::WARN),
        Level::INFO => overflow!(Level::INFO),
        Level::DEBUG => overflow!(Level::DEBUG),
        Level::TRACE => overflow!(Level::TRACE),
    }
}

/// A task id as a log field: the number, or `-` for an event emitted outside any task.
struct TaskField(Option<u64>);

impl std::fmt::Display for TaskField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_callsite_per_target_and_level_and_a_bound_on_targets() {
        // A table of its own: the process's stays free for other tests.
        let table = Mutex::new(Sites::new());
        let site = |target: &str, level| site_in(&table, target, level);
        let a = site("relay_test::a", Level::INFO).expect("room");
        let again = site("relay_test::a", Level::INFO).expect("room");
        assert!(std::ptr::eq(a, again));
        let debug = site("relay_test::a", Level::DEBUG).expect("room");
        assert!(!std::ptr::eq(a, debug));
        assert_eq!(a.metadata().target(), "relay_test::a");
        assert_eq!(*debug.metadata().level(), Level::DEBUG);
        for i in 0..MAX_TARGETS {
            let _ = site(&format!("relay_test::fill{i}"), Level::INFO);
        }
        assert!(site("relay_test::one_too_many", Level::INFO).is_none());
        assert!(
            site("relay_test::a", Level::WARN).is_some(),
            "known targets keep working"
        );
    }
}
