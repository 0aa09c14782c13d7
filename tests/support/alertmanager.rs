//! A private Alertmanager (Debian `prometheus-alertmanager`) for one test: a free loopback port,
//! a temporary storage folder, clustering off, and a webhook receiver pointing at the test's own
//! capture server, so that what Alertmanager sends on (firing, then resolved) can be checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{free_addr, http_get, wait_for};

pub const BINARY: &str = "prometheus-alertmanager";

pub struct Alertmanager {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts Alertmanager; every group is sent to `webhook` (an http URL) within a second,
    /// resolved alerts included.
    pub async fn start(webhook: &str) -> anyhow::Result<Alertmanager> {
        let dir = tempfile::tempdir()?;
        let config = format!(
            "route:\n  receiver: capture\n  group_by: ['alertname', 'region', 'rep']\n  \
             group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: capture\n    webhook_configs:\n      - url: '{webhook}'\n        \
             send_resolved: true\n"
        );
        let config_path: PathBuf = dir.path().join("alertmanager.yml");
        std::fs::write(&config_path, config)?;
        let addr = free_addr()?;
        let log = std::fs::File::create(dir.path().join("alertmanager.log"))?;
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // Empty: no gossip listener on 0.0.0.0:9094.
            .arg("--cluster.listen-address=")
            .arg("--log.level=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!("starting {BINARY} (Debian package prometheus-alertmanager)")
            })?;
        let mut am = Alertmanager {
            child,
            addr,
            _dir: dir,
        };
        let ready = wait_for("Alertmanager ready", Duration::from_secs(20), || async {
            match http_get(addr, "/-/ready").await {
                Ok((status, _)) if status.contains("200") => Some(()),
                _ => None,
            }
        })
        .await;
        if let Err(e) = ready {
            let log = std::fs::read_to_string(am._dir.path().join("alertmanager.log"))
                .unwrap_or_default();
            let _ = am.child.kill();
            bail!("{e:#}\n{log}");
        }
        Ok(am)
    }

    /// Alertmanager's own log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The alerts Alertmanager holds as active (its v2 API).
    pub async fn alerts(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        // HTTP/1.0, so that the body comes whole rather than chunked.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.addr).await?;
        s.write_all(b"GET /api/v2/alerts HTTP/1.0\r\n\r\n").await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        if !head.lines().next().is_some_and(|l| l.contains(" 200")) {
            bail!("GET /api/v2/alerts: {head}: {body}");
        }
        Ok(serde_json::from_str(body)?)
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
