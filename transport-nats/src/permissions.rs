//! The subjects a pool's parent and each member need, for a NATS server's authorization.

use crate::wire::Names;
use std::fmt::Write as _;

/// What one NATS user may publish and subscribe to, for a pool's parent or one of its members.
///
/// The pool's secret keeps clients without it out; a member holds the secret, so only the
/// server can stop one member from publishing in another's name. Give each member a user of its
/// own limited to [`Permissions::member`], and the parent a user limited to
/// [`Permissions::parent`]: a member can then publish only on its own subjects, and the parent
/// accepts a task's end or output only from the member that holds the task.
///
/// ```
/// use looppool_nats::Permissions;
///
/// let config = looppool_nats::Permissions::server_config(&[
///     ("parent", "parent-password", Permissions::parent("demo")),
///     ("m1", "m1-password", Permissions::member("demo", "m1")),
///     ("m2", "m2-password", Permissions::member("demo", "m2")),
/// ]);
/// assert!(config.contains(r#""looppool.demo.up.m1""#));
/// // Written to a file, `nats-server -c FILE -js` serves the pool with these users.
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Permissions {
    /// Subjects the user may publish to.
    pub publish: Vec<String>,
    /// Subjects the user may subscribe to.
    pub subscribe: Vec<String>,
}

impl Permissions {
    /// These lists assume JetStream's default API (`$JS.API`); with
    /// [`JetStreamApi::Domain`](crate::JetStreamApi::Domain) the API subjects are
    /// `$JS.<domain>.API.…` instead.
    ///
    /// The parent of pool `pool`: its own subjects, the JetStream API for the pool's own
    /// streams and their consumers only (it creates, reads and deletes them) and for the
    /// account's limits, acknowledgements on the pool's streams, and its lease in the key-value
    /// bucket `looppool-<pool>` (the stream `KV_looppool-<pool>`).
    pub fn parent(pool: &str) -> Self {
        let names = Names::new(pool);
        let mut publish = vec![
            format!("looppool.{pool}.>"),
            "$JS.API.INFO".into(),
            "_INBOX.>".into(),
        ];
        let lease = format!("KV_{}", names.lease_bucket());
        for stream in names.streams().into_iter().chain([lease]) {
            publish.extend([
                // Create, update, read, purge and delete the stream.
                format!("$JS.API.STREAM.*.{stream}"),
                format!("$JS.API.STREAM.MSG.*.{stream}"),
                format!("$JS.API.DIRECT.GET.{stream}"),
                format!("$JS.API.DIRECT.GET.{stream}.>"),
                // Its consumers: list, create, read, delete, and pull from them.
                format!("$JS.API.CONSUMER.*.{stream}"),
                format!("$JS.API.CONSUMER.*.{stream}.>"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
                format!("$JS.ACK.{stream}.>"),
            ]);
        }
        // Its lease on the pool.
        publish.push(format!("$KV.{}.>", names.lease_bucket()));
        Self {
            publish,
            subscribe: vec![format!("looppool.{pool}.>"), "_INBOX.>".into()],
        }
    }

    /// Member `member` of pool `pool`: it joins, beats and leaves under its own name, sends
    /// outputs and ends on its own subject, and reads and acknowledges its own consumer.
    pub fn member(pool: &str, member: &str) -> Self {
        let names = Names::new(pool);
        let tasks = names.tasks_stream();
        Self {
            publish: vec![
                names.join(member),
                names.alive(member),
                names.leave(member),
                names.up(member),
                format!("$JS.API.CONSUMER.INFO.{tasks}.{member}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{tasks}.{member}"),
                format!("$JS.ACK.{tasks}.{member}.>"),
            ],
            subscribe: vec![
                names.ctl(member),
                names.credit(member),
                names.beacon(),
                // Replies to its join requests, pulls and stores, under its own inbox prefix.
                format!("{}.>", names.inbox(member)),
            ],
        }
    }

    /// An `authorization` block of `nats-server`'s configuration with these users, each
    /// `(user, password, permissions)`.
    pub fn server_config(users: &[(&str, &str, Permissions)]) -> String {
        let mut config = String::from("authorization {\n  users = [\n");
        for (user, password, p) in users {
            let list = |subjects: &[String]| {
                let quoted: Vec<String> = subjects.iter().map(|s| quote(s)).collect();
                quoted.join(", ")
            };
            let _ = writeln!(
                config,
                "    {{ user: {}, password: {}, permissions: {{ publish: {{ allow: [{}] }}, \
                 subscribe: {{ allow: [{}] }} }} }}",
                quote(user),
                quote(password),
                list(&p.publish),
                list(&p.subscribe)
            );
        }
        config.push_str("  ]\n}\n");
        config
    }
}

/// `text` as a quoted string of the server's configuration format.
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_may_publish_only_on_its_own_subjects() {
        let m = Permissions::member("p", "m1");
        for own in ["looppool.p.up.m1", "looppool.p.leave.m1"] {
            assert!(m.publish.iter().any(|s| s == own), "{own}");
        }
        assert!(m
            .publish
            .iter()
            .all(|s| !s.contains("m2") && !s.ends_with(".*")));
        assert!(!m
            .subscribe
            .iter()
            .any(|s| s.starts_with("looppool.p.alive")));
    }

    #[test]
    fn the_parent_may_use_the_jetstream_api_for_its_own_pools_streams_only() {
        let p = Permissions::parent("p");
        let api: Vec<&String> = p.publish.iter().filter(|s| s.starts_with("$JS.")).collect();
        assert!(!api.is_empty());
        for subject in api {
            assert!(
                subject == "$JS.API.INFO"
                    || ["looppool-p-tasks", "looppool-p-dead", "KV_looppool-p"]
                        .iter()
                        .any(|stream| subject.contains(&format!(".{stream}"))),
                "{subject}"
            );
        }
        assert!(!Permissions::parent("q")
            .publish
            .iter()
            .any(|s| s.contains("looppool-p")));
    }

    /// Whether NATS subject `subject` matches `pattern` (`*` one token, `>` the rest).
    fn matches(pattern: &str, subject: &str) -> bool {
        let mut subject = subject.split('.');
        for token in pattern.split('.') {
            match (token, subject.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (t, Some(s)) if t == s => {}
                _ => return false,
            }
        }
        subject.next().is_none()
    }

    #[test]
    fn the_parents_jetstream_subjects_reach_no_other_stream() {
        let p = Permissions::parent("p");
        let allowed = |subject: &str| p.publish.iter().any(|pattern| matches(pattern, subject));
        for needed in [
            "$JS.API.INFO",
            "$JS.API.STREAM.CREATE.looppool-p-tasks",
            "$JS.API.STREAM.DELETE.looppool-p-dead",
            "$JS.API.STREAM.MSG.GET.KV_looppool-p",
            "$JS.API.DIRECT.GET.KV_looppool-p.$KV.looppool-p.lease",
            "$JS.API.CONSUMER.CREATE.looppool-p-tasks.m.looppool.p.task.m",
            "$JS.API.CONSUMER.INFO.looppool-p-tasks.m",
            "$JS.API.CONSUMER.DELETE.looppool-p-tasks.m",
            "$JS.API.CONSUMER.MSG.NEXT.looppool-p-tasks.m",
            "$JS.API.CONSUMER.LIST.looppool-p-tasks",
            "$JS.ACK.looppool-p-tasks.m.1.2.3.4.5",
            "$KV.looppool-p.lease",
        ] {
            assert!(allowed(needed), "{needed} is not allowed");
        }
        for other in [
            "$JS.API.STREAM.CREATE.other",
            "$JS.API.STREAM.LIST",
            "$JS.API.CONSUMER.CREATE.other.looppool-p-tasks.x",
            "$JS.API.CONSUMER.CREATE.other.looppool-p-tasks",
            "$JS.API.CONSUMER.DURABLE.CREATE.other.looppool-p-tasks",
            "$JS.API.CONSUMER.MSG.NEXT.other.looppool-p-tasks",
            "$JS.API.CONSUMER.DELETE.other.looppool-p-tasks",
            "$JS.ACK.other.m.1",
            "$KV.other.lease",
        ] {
            assert!(!allowed(other), "{other} is allowed");
        }
    }

    #[test]
    fn the_config_quotes_what_it_is_given() {
        let config = Permissions::server_config(&[("u", "pa\"ss", Permissions::member("p", "m"))]);
        assert!(config.contains(r#"password: "pa\"ss""#), "{config}");
        assert!(config.starts_with("authorization {"));
    }
}
