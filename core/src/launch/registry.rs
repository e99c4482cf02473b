//! Worker types registered where they are defined ([`register!`](crate::register)), so that a
//! program's `main` runs them without naming them: libraries that bring pool-backed services
//! register their workers, and the adapter's `init` finds them.

use super::entry::Entry;
use crate::runtime::Runtime;
use crate::worker::Worker;
use std::sync::Arc;

/// What builds a runtime in a worker process.
type RuntimeFn = fn() -> Arc<dyn Runtime>;

/// One worker type registered with [`register!`](crate::register). Not built by hand.
#[doc(hidden)]
#[derive(Debug)]
pub struct Registration {
    entry: fn(RuntimeFn) -> Entry,
}

impl Registration {
    /// The registration of worker type `W`.
    pub const fn new<W: Worker>() -> Self {
        Registration {
            entry: Entry::new::<W>,
        }
    }
}

inventory::collect!(Registration);

/// Registers worker types where they are defined, so that the program's `init` runs them in
/// worker processes without `main` naming them.
///
/// A library that offers a pool-backed service registers its worker next to it; a program that
/// uses the library calls its adapter's `init(&[])` first thing in `main`, as always, and the
/// library's worker is among those it can run. The registration names no runtime: the worker
/// runs on the runtime of the adapter whose `init` the program calls.
///
/// ```
/// use looppool_core::{async_trait, BoxError, Context, Failure, Worker};
///
/// pub struct Resizer;
///
/// #[async_trait(?Send)]
/// impl Worker for Resizer {
///     type Task = (u32, u32);
///     type Output = u32;
///     type Error = Failure;
///
///     fn name() -> &'static str {
///         "thumbnails/resizer"
///     }
///
///     async fn init(_: &Context<u32>) -> Result<Self, BoxError> {
///         Ok(Resizer)
///     }
///
///     async fn process(&self, (w, h): (u32, u32), ctx: &Context<u32>) -> Result<(), Failure> {
///         ctx.put(w * h).await?;
///         Ok(())
///     }
/// }
///
/// looppool_core::register!(Resizer);
/// ```
///
/// Two worker types with the same [`Worker::name`] cannot both run: `init` refuses them with
/// an error naming both (in the parent it panics, as a duplicate route does in a web
/// framework's router). The same type listed in `init` and registered is run once.
///
/// Registration uses the [`inventory`](https://docs.rs/inventory) crate: on Linux, a static
/// constructor per registration, collected before `main` runs.
#[macro_export]
macro_rules! register {
    ($($worker:ty),+ $(,)?) => {
        $(
            $crate::__private::inventory::submit! {
                $crate::__private::Registration::new::<$worker>()
            }
        )+
    };
}

/// The listed entries and the registered worker types (on `runtime`), each name once; an error
/// names two different types that share a name.
pub(crate) fn merge(
    listed: &[Entry],
    registered: impl IntoIterator<Item = Entry>,
) -> Result<Vec<Entry>, String> {
    let mut all: Vec<Entry> = Vec::new();
    for entry in listed.iter().copied().chain(registered) {
        match all.iter().find(|known| known.name() == entry.name()) {
            None => all.push(entry),
            // Listed and registered too: the listed one runs.
            Some(known) if known.type_id() == entry.type_id() => {}
            Some(known) => {
                return Err(format!(
                    "two worker types are named `{}`: {} and {}; give one of them another \
                     Worker::name",
                    entry.name(),
                    known.type_name(),
                    entry.type_name()
                ))
            }
        }
    }
    Ok(all)
}

/// Every registered worker type, as an entry on `runtime`.
pub(crate) fn registered(runtime: RuntimeFn) -> impl Iterator<Item = Entry> {
    inventory::iter::<Registration>
        .into_iter()
        .map(move |r| (r.entry)(runtime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{async_trait, BoxError, Context, Failure};

    struct First;
    struct Second;
    struct Elsewhere;

    macro_rules! named {
        ($ty:ty, $name:expr) => {
            #[async_trait(?Send)]
            impl Worker for $ty {
                type Task = ();
                type Output = ();
                type Error = Failure;
                fn name() -> &'static str {
                    $name
                }
                async fn init(_: &Context<()>) -> Result<Self, BoxError> {
                    Ok(Self)
                }
                async fn process(&self, _: (), _: &Context<()>) -> Result<(), Failure> {
                    Ok(())
                }
            }
        };
    }
    named!(First, "registry-test/same");
    named!(Second, "registry-test/same");
    named!(Elsewhere, "registry-test/elsewhere");

    crate::register!(Elsewhere);

    fn runtime() -> Arc<dyn Runtime> {
        unreachable!("never built: no worker runs here")
    }

    #[test]
    fn a_registered_worker_is_found_on_the_given_runtime() {
        let names: Vec<_> = registered(runtime).map(|e| e.name()).collect();
        assert!(names.contains(&"registry-test/elsewhere"), "{names:?}");
    }

    #[test]
    fn two_types_with_one_name_are_refused_naming_both() {
        let listed = [Entry::new::<First>(runtime)];
        let clash = merge(&listed, [Entry::new::<Second>(runtime)]).unwrap_err();
        assert!(clash.contains("`registry-test/same`"), "{clash}");
        assert!(
            clash.contains("First") && clash.contains("Second"),
            "{clash}"
        );
        let listed_twice = [Entry::new::<First>(runtime), Entry::new::<Second>(runtime)];
        assert!(merge(&listed_twice, []).is_err());
    }

    #[test]
    fn a_type_listed_and_registered_runs_once() {
        let listed = [Entry::new::<Elsewhere>(runtime)];
        let all = merge(&listed, registered(runtime)).unwrap();
        let count = all
            .iter()
            .filter(|e| e.name() == "registry-test/elsewhere")
            .count();
        assert_eq!(count, 1);
    }
}
