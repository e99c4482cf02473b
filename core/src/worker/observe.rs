//! What a worker tells its parent about itself: resource use, loop lag and its `tracing` events.
//!
//! Events are forwarded by a subscriber installed as the default of the worker's loop thread
//! for as long as the worker serves. It encodes each enabled event as a [`ToParent::Log`]
//! frame on the link's outgoing buffer, tagged with the task being polled at the time (kept in
//! a thread-local by [`InTask`]). A link that is backed up drops events (and counts them) rather
//! than buffering without bound.

use super::context::Link;
use crate::protocol::{encode_header, ToParent, WireStats};
use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};

/// Log events are dropped while this many bytes wait for the writer.
const LOG_BACKLOG: usize = 4 << 20;

/// The longest forwarded log message, in bytes.
const LOG_MESSAGE_LIMIT: usize = 16 * 1024;

thread_local! {
    /// The link this thread's events go to, while a worker serves on it.
    static SINK: RefCell<Option<Rc<Link>>> = const { RefCell::new(None) };
    /// The task whose future is being polled on this thread.
    static CURRENT_TASK: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The wire code of a level: 1 (error) to 5 (trace).
pub(crate) fn level_code(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// The wire code of a filter: 0 (off) to 5 (trace).
pub(crate) fn filter_code(filter: LevelFilter) -> u8 {
    filter.into_level().map_or(0, level_code)
}

fn filter_of(code: u8) -> LevelFilter {
    match code {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Forwards this thread's `tracing` events (up to level `code`) to `link` until dropped.
pub(super) struct Forwarding {
    _default: Option<tracing::subscriber::DefaultGuard>,
}

impl Forwarding {
    pub(super) fn start(link: &Rc<Link>, code: u8) -> Self {
        if code == 0 {
            return Self { _default: None };
        }
        SINK.with(|s| *s.borrow_mut() = Some(link.clone()));
        let subscriber = tracing_subscriber::registry().with(Forward {
            max: filter_of(code),
        });
        Self {
            _default: Some(tracing::subscriber::set_default(subscriber)),
        }
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        SINK.with(|s| s.borrow_mut().take());
    }
}

/// Encodes a log event on this thread's link; `false` if there is none to take it.
pub(super) fn forward(level: u8, target: &str, message: &str) -> bool {
    SINK.with(|sink| {
        let Ok(sink) = sink.try_borrow() else {
            return false;
        };
        let Some(link) = sink.as_ref() else {
            return false;
        };
        if link.closed.get() {
            return false;
        }
        let Ok(mut out) = link.outgoing.try_borrow_mut() else {
            link.logs_dropped.set(link.logs_dropped.get() + 1);
            return true;
        };
        // What waits in the outbox counts too: a parent that does not read holds both.
        if out.len() + link.outbox.unsent_len() > LOG_BACKLOG {
            link.logs_dropped.set(link.logs_dropped.get() + 1);
            return true;
        }
        let frame = ToParent::Log {
            level,
            task: CURRENT_TASK.with(Cell::get),
            target: crate::protocol::truncate_to(target, 256),
            message: crate::protocol::truncate_to(message, LOG_MESSAGE_LIMIT),
        };
        if encode_header(&mut out, &frame, link.max_frame).is_err() {
            link.logs_dropped.set(link.logs_dropped.get() + 1);
            return true;
        }
        drop(out);
        link.wake_writer.notify();
        true
    })
}

/// Encodes a log event as if emitted while task `task` was being polled.
pub(super) fn forward_for(task: u64, level: u8, target: &str, message: &str) -> bool {
    let outer = CURRENT_TASK.with(|c| c.replace(Some(task)));
    let forwarded = forward(level, target, message);
    CURRENT_TASK.with(|c| c.set(outer));
    forwarded
}

/// Sends panic messages on this thread's link, falling back to the previous hook elsewhere.
pub(super) fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !forward(1, "looppool::panic", &info.to_string()) {
            previous(info);
        }
    }));
}

/// The layer that forwards events.
struct Forward {
    max: LevelFilter,
}

impl<S: Subscriber> Layer<S> for Forward {
    fn enabled(&self, metadata: &Metadata<'_>, _: LayerContext<'_, S>) -> bool {
        self.max >= *metadata.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn on_event(&self, event: &Event<'_>, _: LayerContext<'_, S>) {
        let meta = event.metadata();
        if self.max < *meta.level() {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        let mut message = text.message;
        if !text.fields.is_empty() {
            if !message.is_empty() {
                message.push(' ');
            }
            message.push_str(&text.fields);
        }
        forward(level_code(*meta.level()), meta.target(), &message);
    }
}

/// An event rendered as its message and then `name=value` pairs.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.pair(field, format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.pair(field, format_args!("{value:?}"));
        }
    }
}

impl Text {
    fn pair(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{}={value}", field.name());
    }
}

/// Polls a task's future with its id as the thread's current task, for tagging log events.
pub(super) struct InTask<F> {
    pub(super) task: u64,
    pub(super) future: F,
}

impl<F: Future + Unpin> Future for InTask<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let outer = CURRENT_TASK.with(|c| c.replace(Some(self.task)));
        let polled = Pin::new(&mut self.future).poll(cx);
        CURRENT_TASK.with(|c| c.set(outer));
        polled
    }
}

/// CPU time used so far (user + system), in microseconds: the process's, or only the calling
/// thread's for a worker that is a thread of its parent.
fn cpu_micros(own_process: bool) -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    let who = if own_process {
        UsageWho::RUSAGE_SELF
    } else {
        UsageWho::RUSAGE_THREAD
    };
    getrusage(who).map_or(0, |u| {
        (u.user_time().num_microseconds() + u.system_time().num_microseconds()).max(0) as u64
    })
}

/// Resident and peak resident memory of this process, in bytes, from `/proc/self/status`.
fn memory() -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (0, 0);
    };
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |k| k * 1024)
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// Measures this worker now; `lag` is the worst timer lateness since the last report.
pub(super) fn sample(link: &Link, lag: std::time::Duration, queued: usize) -> WireStats {
    let (rss, peak_rss) = memory();
    WireStats {
        cpu_us: cpu_micros(link.own_process),
        rss,
        peak_rss,
        lag_us: lag.as_micros() as u64,
        queued: queued as u32,
        running: link.running.get() as u32,
        runtime_tasks: link.runtime.alive_tasks(),
        logs_dropped: link.logs_dropped.get(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn filter_codes_match_level_codes_and_off_is_zero() {
        assert_eq!(filter_code(LevelFilter::OFF), 0);
        for level in [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ] {
            let code = level_code(level);
            assert_eq!(filter_code(LevelFilter::from_level(level)), code);
            assert_eq!(filter_of(code), LevelFilter::from_level(level));
        }
    }

    #[test]
    fn the_current_task_is_set_only_while_its_future_is_polled() {
        let seen = InTask {
            task: 7,
            future: std::future::ready(()).map(|()| CURRENT_TASK.with(Cell::get)),
        };
        assert_eq!(futures_executor::block_on(seen), Some(7));
        assert_eq!(CURRENT_TASK.with(Cell::get), None);
    }

    #[test]
    fn events_without_a_link_are_not_forwarded() {
        assert!(!forward(3, "t", "nobody listens"));
    }

    #[test]
    fn this_process_measures_its_memory_and_cpu() {
        let (rss, peak) = memory();
        assert!(rss > 0 && peak >= rss, "rss {rss} peak {peak}");
        let before = cpu_micros(true);
        let until = std::time::Instant::now() + std::time::Duration::from_millis(30);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        assert!(cpu_micros(false) > 0);
        assert!(cpu_micros(true) >= before + 10_000);
    }
}
