//! Member processes: this program re-executed as a member of a trial's pool.

use super::{Failed, MEMBER_VAR, RUNTIME_VAR, SECRET};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A member process; killed if still running when dropped.
pub(super) struct MemberProc {
    pub(super) name: String,
    pub(super) child: Child,
}

#[derive(Clone)]
pub(super) struct Spec<'a> {
    pub(super) url: &'a str,
    pub(super) pool: &'a str,
    pub(super) workers: usize,
    pub(super) capacity: usize,
    pub(super) runtime: &'a str,
    pub(super) credentials: Option<(&'a str, &'a str)>,
    /// The pool secret in the member's environment.
    pub(super) secret: Option<&'a str>,
    /// How the member starts its workers: `reexec`, or `thread`.
    pub(super) start: &'a str,
    /// How long the member waits for its parent to take it in (default: as long as it takes).
    pub(super) wait_for_parent: Option<Duration>,
}

impl<'a> Spec<'a> {
    pub(super) fn new(url: &'a str, pool: &'a str) -> Self {
        Self {
            url,
            pool,
            workers: 1,
            capacity: 2,
            runtime: "tokio",
            credentials: None,
            secret: Some(SECRET),
            start: "reexec",
            wait_for_parent: None,
        }
    }

    pub(super) fn spawn(&self, name: &str) -> MemberProc {
        let mut command = Command::new(std::env::current_exe().expect("this program"));
        if let Some((user, password)) = self.credentials {
            command
                .env("LOOPPOOL_NATS_TEST_USER", user)
                .env("LOOPPOOL_NATS_TEST_PASSWORD", password);
        }
        if let Some(wait) = self.wait_for_parent {
            command.env(
                "LOOPPOOL_NATS_TEST_WAIT_PARENT",
                wait.as_millis().to_string(),
            );
        }
        match self.secret {
            Some(secret) => command.env(looppool_nats::SECRET_VAR, secret),
            None => command.env_remove(looppool_nats::SECRET_VAR),
        };
        let child = command
            .env(MEMBER_VAR, "1")
            .env("LOOPPOOL_NATS_TEST_URL", self.url)
            .env("LOOPPOOL_NATS_TEST_POOL", self.pool)
            .env("LOOPPOOL_NATS_TEST_NAME", name)
            .env("LOOPPOOL_NATS_TEST_WORKERS", self.workers.to_string())
            .env("LOOPPOOL_NATS_TEST_CAPACITY", self.capacity.to_string())
            .env("LOOPPOOL_NATS_TEST_START", self.start)
            .env(RUNTIME_VAR, self.runtime)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a member");
        MemberProc {
            name: name.into(),
            child,
        }
    }
}

impl MemberProc {
    /// Whether the process still runs, and if not, how it ended and what it printed.
    pub(super) fn state(&mut self) -> String {
        match self.child.try_wait() {
            Ok(None) => format!("{} runs", self.name),
            Ok(Some(status)) => {
                use std::io::Read;
                let mut text = String::new();
                for out in [
                    self.child
                        .stdout
                        .take()
                        .map(|o| Box::new(o) as Box<dyn Read>),
                    self.child
                        .stderr
                        .take()
                        .map(|e| Box::new(e) as Box<dyn Read>),
                ]
                .into_iter()
                .flatten()
                {
                    let mut out = out;
                    let _ = out.read_to_string(&mut text);
                }
                format!("{} ended ({status}): {text}", self.name)
            }
            Err(e) => format!("{}: {e}", self.name),
        }
    }

    /// Waits for the process to exit; its exit code and what it printed.
    pub(super) async fn exit(mut self, within: Duration) -> Result<(i32, String), Failed> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                use std::io::Read;
                let mut text = String::new();
                if let Some(mut out) = self.child.stdout.take() {
                    out.read_to_string(&mut text)?;
                }
                if let Some(mut err) = self.child.stderr.take() {
                    err.read_to_string(&mut text)?;
                }
                return Ok((status.code().unwrap_or(-1), text));
            }
            if Instant::now() > deadline {
                return Err(format!("member {} still runs after {within:?}", self.name).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the member to shut down (SIGTERM).
    pub(super) fn terminate(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Sends `signal` to the member's process.
    pub(super) fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
    }
}

impl Drop for MemberProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}
