//! A private Prometheus (Debian `prometheus`) for one test: a free loopback port, a temporary
//! TSDB folder and a generated config that scrapes one target (and evaluates the given rule
//! files) every second; instant queries through its HTTP API. Also what the Grafana boards of
//! `grafana/dashboards/` ask Prometheus: their variables and panel queries, and the
//! substitution of Grafana's `$variables` into them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

use super::{free_addr, http_get, wait_for};

pub const BINARY: &str = "prometheus";

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`/metrics`, job `touchstream`) every second, with
    /// `rule_files` (absolute paths) evaluated every second, and waits until it is ready.
    pub async fn start(target: SocketAddr, rule_files: &[PathBuf]) -> anyhow::Result<Prometheus> {
        let dir = tempfile::tempdir()?;
        let rules: String = rule_files
            .iter()
            .map(|p| format!("  - '{}'\n", p.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rules}\
             scrape_configs:\n  - job_name: touchstream\n    static_configs:\n      \
             - targets: ['{target}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let addr = free_addr()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {BINARY} (Debian package prometheus)"))?;
        let mut prom = Prometheus { child, addr, dir };
        let ready = wait_for("Prometheus ready", Duration::from_secs(30), || async {
            match http_get(addr, "/-/ready").await {
                Ok((status, _)) if status.contains("200") => Some(()),
                _ => None,
            }
        })
        .await;
        if let Err(e) = ready {
            let log = prom.log();
            let _ = prom.child.kill();
            bail!("{e:#}\n{log}");
        }
        Ok(prom)
    }

    /// Prometheus's own log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Waits until the target has been scraped successfully (`up == 1`).
    pub async fn wait_target_up(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_for("Prometheus to scrape the target", timeout, || async {
            match self.query(r#"up{job="touchstream"} == 1"#).await {
                Ok(samples) if !samples.is_empty() => Some(()),
                _ => None,
            }
        })
        .await
    }

    /// An instant query at the current time (`GET /api/v1/query`): one sample per series of a
    /// vector, the last point of each series of a matrix, or the one value of a scalar.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Sample>> {
        let q = percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC);
        let body = self.get(&format!("/api/v1/query?query={q}")).await?;
        let v: Value =
            serde_json::from_str(&body).with_context(|| format!("Prometheus answered {body:?}"))?;
        if v["status"] != "success" {
            bail!("{}: {}", v["errorType"], v["error"]);
        }
        let data = &v["data"];
        let result = &data["result"];
        match data["resultType"].as_str() {
            Some("vector") => result
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Sample::from_point(&s["metric"], &s["value"]))
                .collect(),
            Some("matrix") => result
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| {
                    let last = s["values"].as_array()?.last()?;
                    Some(Sample::from_point(&s["metric"], last))
                })
                .collect(),
            Some("scalar") => Ok(vec![Sample::from_point(&Value::Null, result)?]),
            other => bail!("unexpected result type {other:?}: {body}"),
        }
    }

    /// Every metric name Prometheus holds that starts with `prefix` (for failure messages).
    pub async fn metric_names(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let body = self.get("/api/v1/label/__name__/values").await?;
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|n| n.starts_with(prefix))
            .map(str::to_owned)
            .collect())
    }

    /// GET on the HTTP API; HTTP/1.0, so that the body comes whole rather than chunked.
    async fn get(&self, path_and_query: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(self.addr).await?;
            s.write_all(format!("GET {path_and_query} HTTP/1.0\r\n\r\n").as_bytes())
                .await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            anyhow::Ok(buf)
        };
        let buf = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| anyhow!("Prometheus did not answer {path_and_query} within 10 s"))??;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        // 400 and 422 carry the error in the JSON body, which `query` reports.
        let status = head.lines().next().unwrap_or_default();
        if !(status.contains(" 200") || status.contains(" 400") || status.contains(" 422")) {
            bail!("GET {path_and_query}: {head}: {body}");
        }
        Ok(body.to_string())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample of a query result.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// From the API's `metric` object and `[time, "value"]` pair.
    fn from_point(metric: &Value, point: &Value) -> anyhow::Result<Sample> {
        let labels = metric
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let text = point[1]
            .as_str()
            .ok_or_else(|| anyhow!("sample without a value: {point}"))?;
        // Prometheus writes NaN and ±Inf as "NaN", "+Inf", "-Inf"; Rust parses all three.
        let value = text
            .parse::<f64>()
            .with_context(|| format!("sample value {text:?}"))?;
        Ok(Sample { labels, value })
    }
}

// ------------------------------------------------------------------ what the boards ask

/// The folder of the Grafana boards.
pub fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards")
}

/// Every board of `grafana/dashboards/`, parsed: (file name, JSON model), by file name.
pub fn dashboards() -> anyhow::Result<Vec<(String, Value)>> {
    let dir = dashboards_dir();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path)?;
            let json: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((name, json));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Every panel of a board, the panels of rows (collapsed or not) included.
pub fn panels(board: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&board["panels"], &mut out);
    out
}

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub board: String,
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

/// Every panel target's expression, in board order.
pub fn panel_queries(board_file: &str, board: &Value) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for p in panels(board) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(PanelQuery {
                board: board_file.to_owned(),
                panel: p["title"].as_str().unwrap_or_default().to_owned(),
                ref_id: t["refId"].as_str().unwrap_or_default().to_owned(),
                expr: t["expr"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    out
}

/// A template variable of type `query`: its name and Prometheus query text.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub query: String,
}

/// The board's query variables, in order (a later one may use an earlier one).
pub fn variables(board: &Value) -> Vec<Variable> {
    board["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .map(|v| Variable {
            name: v["name"].as_str().unwrap_or_default().to_owned(),
            query: v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .or(v["definition"].as_str())
                .unwrap_or_default()
                .to_owned(),
        })
        .collect()
}

/// `label_values(SELECTOR, LABEL)` (Grafana's variable query) as (selector, label).
pub fn label_values(query: &str) -> Option<(String, String)> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some((selector.trim().to_owned(), label.trim().to_owned()))
}

/// Replaces Grafana's variables (`$name`, `${name}`, `${name:format}`, `[[name]]`) in `expr`
/// with the given values. A variable without a value is an error naming it.
pub fn substitute(expr: &str, values: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let lookup = |name: &str| {
        values
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("no value for the variable ${name} in {expr:?}"))
    };
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(braced) = tail.strip_prefix("${") {
            let end = braced
                .find('}')
                .ok_or_else(|| anyhow!("unclosed ${{ in {expr:?}"))?;
            let name = braced[..end].split(':').next().unwrap_or_default();
            out.push_str(&lookup(name)?);
            rest = &braced[end + 1..];
        } else if let Some(bare) = tail.strip_prefix('$') {
            let end = bare.find(|c| !is_ident(c)).unwrap_or(bare.len());
            if end == 0 {
                out.push('$');
            } else {
                out.push_str(&lookup(&bare[..end])?);
            }
            rest = &bare[end..];
        } else if let Some(old) = tail.strip_prefix("[[")
            && let Some(end) = old.find("]]")
            && old[..end].chars().all(is_ident)
        {
            out.push_str(&lookup(old[..end].split(':').next().unwrap_or_default())?);
            rest = &old[end + 2..];
        } else {
            out.push('[');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}
