//! A private `nats-server -js` on a free loopback port with its own store directory, for the
//! demo and the integration tests. Killed (and its directory removed) on drop; `restart` brings
//! it back on the same port and store, which is how the tests simulate a NATS outage.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// How long a starting server may take to write its ports file.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running (or stopped, between `stop` and `restart`) private nats-server.
pub struct NatsServer {
    child: Option<Child>,
    dir: ScratchDir,
    port: u16,
}

impl NatsServer {
    /// Starts `nats-server -js` on `127.0.0.1` and a port the OS picks, with a fresh store
    /// directory. The binary is `$TOUCHSTREAM_NATS_SERVER`, else `nats-server` on the `PATH`,
    /// else `/usr/sbin/nats-server` (Debian's place).
    pub async fn start() -> anyhow::Result<NatsServer> {
        let dir = ScratchDir::new("nats")?;
        std::fs::create_dir_all(dir.path().join("store"))?;
        let mut server = NatsServer {
            child: None,
            dir,
            port: 0,
        };
        server.spawn(None).await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across `restart`).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL: the harshest outage) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, then starts it again on the same port and store directory,
    /// so clients reconnect to the same URL and find their streams and consumers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let port = self.port;
        // The port was just released; another process may grab it in theory, and Go's listener
        // uses SO_REUSEADDR, so a few retries cover the slow release of the old socket.
        let mut last_err = None;
        for _ in 0..20 {
            match self.spawn(Some(port)).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("nats-server did not restart")))
    }

    async fn spawn(&mut self, port: Option<u16>) -> anyhow::Result<()> {
        let dir = self.dir.path().to_path_buf();
        // Ports files of earlier (killed) processes stay behind; remove them so that only the
        // new process's file is read.
        remove_ports_files(&dir);
        let log_path = dir.join("nats-server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let port_arg = port.map_or_else(|| "-1".to_string(), |p| p.to_string());
        let mut child = spawn_binary(|bin| {
            let mut cmd = Command::new(bin);
            cmd.arg("-js")
                .arg("-sd")
                .arg(dir.join("store"))
                .args(["-a", "127.0.0.1", "-p", &port_arg, "--ports_file_dir"])
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log.try_clone()?));
            cmd.spawn()
        })?;
        match wait_for_port(&mut child, &dir).await {
            Ok(p) => {
                self.port = p;
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(e.context(format!("nats-server log:\n{}", tail.join("\n"))))
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The binaries to try: `$TOUCHSTREAM_NATS_SERVER`, else `nats-server` on the `PATH`, else
/// Debian's `/usr/sbin/nats-server` (not on every user's `PATH`).
fn candidates() -> Vec<String> {
    match std::env::var("TOUCHSTREAM_NATS_SERVER") {
        Ok(bin) if !bin.is_empty() => vec![bin],
        _ => vec!["nats-server".into(), "/usr/sbin/nats-server".into()],
    }
}

/// Spawns the first binary that exists, with a clear error when there is none.
fn spawn_binary(build: impl FnMut(&str) -> std::io::Result<Child>) -> anyhow::Result<Child> {
    spawn_first(&candidates(), build)
}

fn spawn_first(
    candidates: &[String],
    mut build: impl FnMut(&str) -> std::io::Result<Child>,
) -> anyhow::Result<Child> {
    for bin in candidates {
        match build(bin) {
            Ok(child) => return Ok(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("starting {bin}")),
        }
    }
    bail!(
        "nats-server not found (tried {}): install it with `apt-get install nats-server`, \
         or set TOUCHSTREAM_NATS_SERVER to its path",
        candidates.join(", ")
    )
}

/// Polls the ports file (`{"nats":["nats://127.0.0.1:PORT"]}`) the server writes once it
/// listens; parsing the log instead would depend on its wording.
async fn wait_for_port(child: &mut Child, dir: &Path) -> anyhow::Result<u16> {
    let deadline = Instant::now() + START_TIMEOUT;
    let pid = child.id();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("nats-server exited at start ({status})");
        }
        if let Some(port) = read_ports_file(dir, pid) {
            return Ok(port);
        }
        if Instant::now() > deadline {
            bail!("nats-server wrote no ports file within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_ports_file(dir: &Path, pid: u32) -> Option<u16> {
    let suffix = format!("_{pid}.ports");
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().ends_with(&suffix) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let url = v.get("nats")?.as_array()?.first()?.as_str()?;
        return url.rsplit(':').next()?.parse().ok();
    }
    None
}

fn remove_ports_files(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".ports") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A directory under the system temp dir, removed with everything in it on drop. (The library
/// does not depend on `tempfile`, which is a dev-dependency.)
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn new(label: &str) -> anyhow::Result<ScratchDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "touchstream-{label}-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_install_it() {
        let tried = vec!["/nonexistent/nats-server".to_string()];
        let err = spawn_first(&tried, |bin| Command::new(bin).spawn())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("apt-get install nats-server"), "{err}");
        assert!(err.contains("/nonexistent/nats-server"), "{err}");
    }

    #[test]
    fn the_port_comes_from_this_process_ports_file() -> anyhow::Result<()> {
        let dir = ScratchDir::new("ports-test")?;
        std::fs::write(
            dir.path().join("nats-server_111.ports"),
            r#"{"nats":["nats://127.0.0.1:4000"]}"#,
        )?;
        std::fs::write(
            dir.path().join("nats-server_222.ports"),
            r#"{"nats":["nats://127.0.0.1:4222"],"monitoring":[]}"#,
        )?;
        assert_eq!(read_ports_file(dir.path(), 222), Some(4222));
        assert_eq!(read_ports_file(dir.path(), 333), None);
        remove_ports_files(dir.path());
        assert_eq!(read_ports_file(dir.path(), 222), None);
        Ok(())
    }

    #[test]
    fn a_scratch_dir_is_removed_on_drop() -> anyhow::Result<()> {
        let dir = ScratchDir::new("drop-test")?;
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("f"), "x")?;
        drop(dir);
        assert!(!path.exists());
        Ok(())
    }
}
