//! Message templates (minijinja, Jinja2 syntax). The defaults are Chinese markdown; the pipeline
//! file may override them per rule, receiver kind, status and form (`[[notify.templates]]`).
//! Templates are compiled, and tried on a sample quote alert, when the config is loaded, so a bad
//! template is a load error; should one still fail on a real alert, a plain built-in text is sent
//! instead (an alert is never lost to a template).
//!
//! The context is [`AlertView`] (`alert_id`, `rule`, `status`, `rep_id`, `rep_name`,
//! `customer_id`, `customer_name`, `director`, `region`, `asset_id`, `due_at`, `fired_at`,
//! `resolved_at`, `evidence`, `severity`, `summary`, `dashboard_url`) plus `kind` (the receiver
//! kind). The filter `localtime` shows an RFC 3339 time at `notify.utc_offset_minutes`.

use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value, context};

use super::{
    AlertNames, AlertState, AlertView, NotifyConfig, NotifyProblem, ReceiverKind, TemplateForm,
};
use crate::event::parse_time;

/// One alert in one message.
pub const DEFAULT_FULL: &str = r#"
{%- if status == "resolved" -%}
**【已解除】{{ summary or rule }}**
{%- else -%}
**【告警】{{ summary or rule }}**
{%- endif %}
> 销售：{{ rep_name or rep_id }}（{{ region }}{% if director %}，区域总监 {{ director }}{% endif %}）
> 客户：{{ customer_name or customer_id }}
{%- if rule == "quote_hot_no_contract" %}
> 报价发送：{{ evidence.quote_sent_at | localtime }}
> 有效打开：{{ evidence.counted_opens }} 次（另有 {{ evidence.excluded_opens }} 次未计：预取、代理或重复刷新）
> 最近一次打开：{{ evidence.last_open_at | localtime }}
> 发送时客户在线：{{ "是" if evidence.customer_online_at_send else "否" }}
> 发送后 30 分钟内产品页访问：{{ evidence.product_page_visits_30m }} 次
{%- elif rule == "impossible_visits" %}
> 拜访：{{ evidence.action_at | localtime }}，{{ evidence.city }}
> 另一次拜访：{{ evidence.other_visit_at | localtime }}，{{ evidence.other_city }}（相隔不到 1 小时，不可能同时在两地）
{%- else %}
{%- for key, value in evidence | items if key not in ["resolved_at", "resolved_by"] %}
> {{ key }}：{{ value }}
{%- endfor %}
{%- endif %}
{%- if status == "resolved" %}
> 解除原因：{% if rule == "quote_hot_no_contract" %}已发合同{% else %}条件不再成立{% endif %}（事件 {{ evidence.resolved_by or "未知" }}，{{ resolved_at | localtime }}）
{%- else %}
> 截止：{{ due_at | localtime }}，触发：{{ fired_at | localtime }}
{%- endif %}
{%- if dashboard_url %}
> [查看销售看板]({{ dashboard_url }})
{%- endif %}
> 编号：{{ alert_id }}"#;

/// One alert's line in a digest (when a robot's rate limit merges queued alerts).
pub const DEFAULT_LINE: &str = r#"
{%- if status == "resolved" %}✅ 已解除{% else %}⚠️ 告警{% endif %} {{ summary or rule }}：
{{- rep_name or rep_id }} → {{ customer_name or customer_id }}
{%- if rule == "quote_hot_no_contract" and status == "firing" %}，有效打开 {{ evidence.counted_opens }} 次{% endif %}
{%- if dashboard_url %}，[看板]({{ dashboard_url }}){% endif %}（{{ alert_id }}）"#;

/// Compiled templates of a `[notify]` section.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    /// Overrides: (rule, kind, status, form, template name), in file order.
    overrides: Vec<Override>,
    has_dashboard: bool,
    utc_offset_minutes: i32,
}

#[derive(Debug)]
struct Override {
    rule: Option<String>,
    kind: Option<ReceiverKind>,
    status: Option<AlertState>,
    form: TemplateForm,
    name: String,
}

const DASHBOARD: &str = "dashboard_url";
const FULL: &str = "default.full";
const LINE: &str = "default.line";

impl Templates {
    /// Compiles the defaults, the overrides and the dashboard link of `config`, and renders each
    /// on a sample quote alert (firing and resolved, every kind) to find runtime errors too.
    pub fn new(config: &NotifyConfig) -> Result<Templates, Vec<NotifyProblem>> {
        let mut env = Environment::new();
        // Printing an undefined value is an error (a typo in a name is found at load time);
        // `is defined`, `or` and `if` on undefined values still work.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        let offset = config.utc_offset_minutes;
        env.add_filter("localtime", move |v: Value| localtime(&v, offset));
        let mut problems = Vec::new();
        let mut add = |env: &mut Environment<'static>, name: String, text: String, path: String| {
            if let Err(e) = env.add_template_owned(name, text) {
                problems.push(NotifyProblem {
                    path,
                    message: format!("template does not compile: {}", describe(&e)),
                });
                false
            } else {
                true
            }
        };
        add(
            &mut env,
            FULL.into(),
            DEFAULT_FULL.into(),
            "<default full template>".into(),
        );
        add(
            &mut env,
            LINE.into(),
            DEFAULT_LINE.into(),
            "<default line template>".into(),
        );
        let has_dashboard = !config.dashboard_url.trim().is_empty()
            && add(
                &mut env,
                DASHBOARD.into(),
                config.dashboard_url.clone(),
                "notify.dashboard_url".into(),
            );
        let mut overrides = Vec::new();
        for (i, spec) in config.templates.iter().enumerate() {
            let name = format!("notify.templates[{i}]");
            if add(
                &mut env,
                name.clone(),
                spec.text.clone(),
                format!("{name}.text"),
            ) {
                overrides.push(Override {
                    rule: spec.rule.clone(),
                    kind: spec.kind,
                    status: spec.status,
                    form: spec.form,
                    name,
                });
            }
        }
        let templates = Templates {
            env,
            overrides,
            has_dashboard,
            utc_offset_minutes: offset,
        };
        // Trial renders on the headline rule's sample alert. A template of another rule is
        // tried with that rule's name, where a missing evidence field is not an error (the
        // sample cannot know that rule's evidence); unknown filters and the like still are.
        let mut trials: Vec<Trial> = vec![
            (FULL, "<default full template>".into(), None, None, None),
            (LINE, "<default line template>".into(), None, None, None),
        ];
        if templates.has_dashboard {
            trials.push((DASHBOARD, "notify.dashboard_url".into(), None, None, None));
        }
        for o in &templates.overrides {
            let path = format!("{}.text", o.name);
            trials.push((&o.name, path, o.rule.as_deref(), o.kind, o.status));
        }
        'trial: for (name, path, rule, kind, status) in trials {
            let statuses = match status {
                Some(s) => vec![s],
                None => vec![AlertState::Firing, AlertState::Resolved],
            };
            let kinds = match kind {
                Some(k) => vec![k],
                None => ReceiverKind::ALL.to_vec(),
            };
            let other_rule = rule.is_some_and(|r| r != SAMPLE_RULE);
            for status in statuses {
                let mut sample = sample_alert(status);
                if let Some(r) = rule {
                    sample.rule = r.to_string();
                }
                sample.dashboard_url = Some("https://grafana.example.com/d/sample".into());
                for &kind in &kinds {
                    match templates.try_render(name, &sample, kind) {
                        Ok(_) => {}
                        Err(e) if other_rule && e.kind() == ErrorKind::UndefinedError => {}
                        Err(e) => {
                            problems.push(NotifyProblem {
                                path,
                                message: format!(
                                    "template fails on a sample {} {} alert for {}: {}",
                                    sample.rule,
                                    status.as_str(),
                                    kind.as_str(),
                                    describe(&e)
                                ),
                            });
                            continue 'trial;
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(templates)
        } else {
            Err(problems)
        }
    }

    /// The template for an alert: the most specific override that matches, else the default.
    fn choose(&self, alert: &AlertView, kind: ReceiverKind, form: TemplateForm) -> &str {
        let mut best: Option<(u8, &str)> = None;
        for o in &self.overrides {
            if o.form != form
                || o.rule.as_deref().is_some_and(|r| r != alert.rule)
                || o.kind.is_some_and(|k| k != kind)
                || o.status.is_some_and(|s| s != alert.status)
            {
                continue;
            }
            let score = (o.rule.is_some() as u8) * 4
                + (o.kind.is_some() as u8) * 2
                + (o.status.is_some() as u8);
            if best.is_none_or(|(b, _)| score >= b) {
                best = Some((score, &o.name));
            }
        }
        match (best, form) {
            (Some((_, name)), _) => name,
            (None, TemplateForm::Full) => FULL,
            (None, TemplateForm::Line) => LINE,
        }
    }

    fn try_render(
        &self,
        name: &str,
        alert: &AlertView,
        kind: ReceiverKind,
    ) -> Result<String, minijinja::Error> {
        self.env
            .get_template(name)?
            .render(context! { kind => kind.as_str(), ..Value::from(Serde(alert)) })
            .map(|s| s.trim().to_string())
    }

    /// One alert rendered for a receiver kind. A template that fails on this alert (e.g. it
    /// names an evidence field the alert lacks) falls back to a plain text, with a warning.
    pub fn render(&self, alert: &AlertView, kind: ReceiverKind, form: TemplateForm) -> String {
        let name = self.choose(alert, kind, form);
        match self.try_render(name, alert, kind) {
            Ok(text) if !text.is_empty() => text,
            Ok(_) => plain(alert, self.utc_offset_minutes),
            Err(e) => {
                tracing::warn!(
                    template = name,
                    alert_id = %alert.alert_id,
                    error = %describe(&e),
                    "template failed on an alert; sending plain text"
                );
                if name == FULL || name == LINE {
                    plain(alert, self.utc_offset_minutes)
                } else {
                    match self.try_render(
                        if form == TemplateForm::Full {
                            FULL
                        } else {
                            LINE
                        },
                        alert,
                        kind,
                    ) {
                        Ok(text) if !text.is_empty() => text,
                        _ => plain(alert, self.utc_offset_minutes),
                    }
                }
            }
        }
    }

    fn try_dashboard_url(&self, alert: &AlertView) -> Result<Option<String>, minijinja::Error> {
        if !self.has_dashboard {
            return Ok(None);
        }
        self.try_render(DASHBOARD, alert, ReceiverKind::Webhook)
            .map(|s| Some(s).filter(|s| !s.is_empty()))
    }

    /// The rep's dashboard link for an alert (`notify.dashboard_url` rendered), if configured.
    pub fn dashboard_url(&self, alert: &AlertView) -> Option<String> {
        self.try_dashboard_url(alert).unwrap_or_else(|e| {
            tracing::warn!(
                alert_id = %alert.alert_id,
                error = %describe(&e),
                "dashboard_url template failed"
            );
            None
        })
    }

    /// A short title: `【告警】summary` or `【已解除】summary`.
    pub fn title(alert: &AlertView) -> String {
        let what = if alert.summary.is_empty() {
            &alert.rule
        } else {
            &alert.summary
        };
        match alert.status {
            AlertState::Firing => format!("【告警】{what}"),
            AlertState::Resolved => format!("【已解除】{what}"),
        }
    }

    /// The title of a digest of `n` alerts.
    pub fn digest_title(n: usize) -> String {
        format!("告警汇总：{n} 条（发送频率受限，已合并）")
    }

    pub fn utc_offset_minutes(&self) -> i32 {
        self.utc_offset_minutes
    }
}

/// The last resort when a template fails: every field an operator needs, no formatting.
fn plain(alert: &AlertView, offset: i32) -> String {
    let mut s = format!(
        "{}\n销售：{}（{}）\n客户：{}\n触发：{}\n编号：{}",
        Templates::title(alert),
        alert.rep_name.as_deref().unwrap_or(&alert.rep_id),
        alert.region,
        alert.customer_name.as_deref().unwrap_or(&alert.customer_id),
        show_time(&alert.fired_at, offset),
        alert.alert_id
    );
    if let Some(url) = &alert.dashboard_url {
        s.push_str(&format!("\n看板：{url}"));
    }
    s
}

/// minijinja errors with their location and cause, in one line.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    s
}

/// The `localtime` filter: an RFC 3339 time as `YYYY-MM-DD HH:MM` at the offset; none or
/// undefined as `无`; anything else unchanged.
fn localtime(v: &Value, offset_minutes: i32) -> String {
    if v.is_none() || v.is_undefined() {
        return "无".into();
    }
    match v.as_str() {
        Some(s) => show_time(s, offset_minutes),
        None => v.to_string(),
    }
}

fn show_time(s: &str, offset_minutes: i32) -> String {
    let Some(ms) = parse_time(s) else {
        return s.to_string();
    };
    let Some(offset) = chrono::FixedOffset::east_opt(offset_minutes * 60) else {
        return s.to_string();
    };
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => {
            let local = t.with_timezone(&offset);
            if offset_minutes == 480 {
                format!("{}（北京时间）", local.format("%Y-%m-%d %H:%M"))
            } else {
                local.format("%Y-%m-%d %H:%M (UTC%:z)").to_string()
            }
        }
        None => s.to_string(),
    }
}

/// A template to try at load: name, config path, and the rule, kind and status it is for.
type Trial<'a> = (
    &'a str,
    String,
    Option<&'a str>,
    Option<ReceiverKind>,
    Option<AlertState>,
);

const SAMPLE_RULE: &str = "quote_hot_no_contract";

/// The headline rule's alert used for trial renders at load time.
fn sample_alert(status: AlertState) -> AlertView {
    let mut evidence = serde_json::Map::new();
    evidence.insert("quote_sent_at".into(), "2026-11-02T01:00:00.000Z".into());
    evidence.insert("counted_opens".into(), 3.into());
    evidence.insert("excluded_opens".into(), 1.into());
    evidence.insert("last_open_at".into(), "2026-11-05T01:00:00.000Z".into());
    evidence.insert("customer_online_at_send".into(), false.into());
    evidence.insert("product_page_visits_30m".into(), 0.into());
    if status == AlertState::Resolved {
        evidence.insert("resolved_at".into(), "2026-11-07T02:00:00.000Z".into());
        evidence.insert("resolved_by".into(), "sample-contract".into());
    }
    let names = AlertNames {
        rep_name: Some("示例销售".into()),
        customer_name: Some("示例客户".into()),
        director: Some("示例总监".into()),
        severity: "warning".into(),
        summary: "示例".into(),
    };
    AlertView {
        alert_id: "quote_hot_no_contract:sample".into(),
        rule: "quote_hot_no_contract".into(),
        status,
        rep_id: "sample-rep".into(),
        customer_id: "sample-customer".into(),
        region: "sample-region".into(),
        asset_id: Some("sample".into()),
        due_at: "2026-11-07T01:00:00.000Z".into(),
        fired_at: "2026-11-07T01:00:00.000Z".into(),
        resolved_at: (status == AlertState::Resolved).then(|| "2026-11-07T02:00:00.000Z".into()),
        evidence,
        rep_name: names.rep_name,
        customer_name: names.customer_name,
        director: names.director,
        severity: names.severity,
        summary: names.summary,
        dashboard_url: None,
        fired_at_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::TemplateSpec;
    use crate::notify::tests::{firing, resolved};

    fn templates(config: NotifyConfig) -> Templates {
        Templates::new(&config).expect("templates compile")
    }

    #[test]
    fn default_quote_alert_names_everything_a_manager_needs() {
        let t = templates(NotifyConfig {
            dashboard_url: "https://grafana.example.com/d/rep?var-rep={{ rep_id }}".into(),
            ..NotifyConfig::default()
        });
        let mut a = firing();
        a.dashboard_url = t.dashboard_url(&a);
        let text = t.render(&a, ReceiverKind::Wecom, TemplateForm::Full);
        for needle in [
            "**【告警】报价已被打开 3 次以上，5 天内未发合同**",
            "销售：李伟（east，区域总监 陈杰）",
            "客户：康达大药房 12 号店",
            "报价发送：2026-11-02 09:00（北京时间）",
            "有效打开：3 次（另有 1 次未计",
            "最近一次打开：2026-11-05 09:00（北京时间）",
            "发送时客户在线：是",
            "产品页访问：2 次",
            "[查看销售看板](https://grafana.example.com/d/rep?var-rep=r1)",
            "编号：quote_hot_no_contract:q1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(!text.contains("解除"), "{text}");
    }

    #[test]
    fn resolved_alert_says_what_resolved_it() {
        let t = templates(NotifyConfig::default());
        let text = t.render(&resolved(), ReceiverKind::Dingtalk, TemplateForm::Full);
        assert!(text.starts_with("**【已解除】"), "{text}");
        assert!(
            text.contains("解除原因：已发合同（事件 lc-contract，2026-11-07 09:01（北京时间））"),
            "{text}"
        );
        assert!(!text.contains("看板"), "no dashboard configured: {text}");
    }

    #[test]
    fn impossible_visits_names_both_visits() {
        let t = templates(NotifyConfig::default());
        let mut a = firing();
        a.rule = "impossible_visits".into();
        a.summary = "两次拜访相隔不到一小时却在不同城市".into();
        a.evidence = serde_json::json!({
            "action_at": "2026-11-02T01:40:00.000Z", "city": "上海",
            "other_visit_at": "2026-11-02T01:00:00.000Z", "other_city": "杭州",
        })
        .as_object()
        .cloned()
        .unwrap_or_default();
        let text = t.render(&a, ReceiverKind::Wecom, TemplateForm::Full);
        for needle in [
            "拜访：2026-11-02 09:40（北京时间），上海",
            "另一次拜访：2026-11-02 09:00（北京时间），杭州（相隔不到 1 小时",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn other_rules_list_their_evidence() {
        let t = templates(NotifyConfig {
            utc_offset_minutes: 0,
            ..NotifyConfig::default()
        });
        let mut a = firing();
        a.rule = "ghost_followup".into();
        a.summary = String::new();
        a.evidence = serde_json::json!({"assets_sent": 3, "first_sent_at": "x"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        let text = t.render(&a, ReceiverKind::Wecom, TemplateForm::Full);
        assert!(text.starts_with("**【告警】ghost_followup**"), "{text}");
        assert!(text.contains("> assets_sent：3"), "{text}");
        assert!(
            text.contains("截止：2026-11-07 01:00 (UTC+00:00)"),
            "{text}"
        );
        let last_open = serde_json::Value::Null;
        assert_eq!(localtime(&Value::from(Serde(&last_open)), 480), "无");
    }

    #[test]
    fn overrides_pick_the_most_specific_and_bad_ones_fail_at_load() {
        let spec = |rule: Option<&str>, kind: Option<ReceiverKind>, text: &str| TemplateSpec {
            rule: rule.map(str::to_string),
            kind,
            status: None,
            form: TemplateForm::Full,
            text: text.into(),
        };
        let t = templates(NotifyConfig {
            templates: vec![
                spec(
                    Some("quote_hot_no_contract"),
                    Some(ReceiverKind::Wecom),
                    "wecom {{ rep_name }}",
                ),
                spec(
                    Some("quote_hot_no_contract"),
                    None,
                    "rule {{ customer_name }}",
                ),
                spec(None, Some(ReceiverKind::Dingtalk), "ding {{ kind }}"),
            ],
            ..NotifyConfig::default()
        });
        assert_eq!(
            t.render(&firing(), ReceiverKind::Wecom, TemplateForm::Full),
            "wecom 李伟"
        );
        assert_eq!(
            t.render(&firing(), ReceiverKind::Dingtalk, TemplateForm::Full),
            "rule 康达大药房 12 号店"
        );
        let mut other = firing();
        other.rule = "impossible_visits".into();
        assert_eq!(
            t.render(&other, ReceiverKind::Dingtalk, TemplateForm::Full),
            "ding dingtalk"
        );

        let problems = Templates::new(&NotifyConfig {
            dashboard_url: "https://g/{{ rep_id".into(),
            templates: vec![
                spec(None, None, "{% if %}"),
                spec(Some("quote_hot_no_contract"), None, "{{ rep_nmae }}"),
                spec(None, None, "{{ fired_at | no_such_filter }}"),
            ],
            ..NotifyConfig::default()
        })
        .expect_err("bad templates are load errors");
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"notify.dashboard_url"), "{problems:?}");
        assert!(paths.contains(&"notify.templates[0].text"), "{problems:?}");
        assert!(paths.contains(&"notify.templates[1].text"), "{problems:?}");
        assert!(paths.contains(&"notify.templates[2].text"), "{problems:?}");
        let undefined = problems
            .iter()
            .find(|p| p.path == "notify.templates[1].text")
            .map(|p| p.message.as_str())
            .unwrap_or_default();
        assert!(undefined.contains("undefined"), "{undefined}");
    }

    #[test]
    fn a_template_failing_on_a_real_alert_falls_back_to_plain_text() {
        let t = templates(NotifyConfig {
            templates: vec![TemplateSpec {
                rule: Some("ghost_followup".into()),
                kind: None,
                status: None,
                form: TemplateForm::Full,
                text: "{{ evidence.assets_sent }} 份".into(),
            }],
            ..NotifyConfig::default()
        });
        let mut a = firing();
        a.rule = "ghost_followup".into();
        // The override prints an evidence field this alert lacks: the default template is used.
        let text = t.render(&a, ReceiverKind::Wecom, TemplateForm::Full);
        assert!(text.contains("编号：quote_hot_no_contract:q1"), "{text}");
    }

    #[test]
    fn digest_line_is_one_line() {
        let t = templates(NotifyConfig::default());
        let line = t.render(&firing(), ReceiverKind::Wecom, TemplateForm::Line);
        assert_eq!(
            line,
            "⚠️ 告警 报价已被打开 3 次以上，5 天内未发合同：李伟 → 康达大药房 12 号店，有效打开 3 次（quote_hot_no_contract:q1）"
        );
    }
}
