//! The two forms of the contract must agree: every fixture under `tests/fixtures/events/` is
//! judged by the JSON Schemas in `schemas/` (via the `jsonschema` crate) and by
//! `touchstream::event::decode`, and both must match the folder it sits in. Also checks that the
//! output schemas accept the record formats of EVENTS.md §8 and nothing more.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use jsonschema::{Draft, Registry, Validator};
use serde_json::{Value, json};
use touchstream::event;

const KINDS: [&str; 6] = [
    "crm.action",
    "pixel.hit",
    "web.hit",
    "wecom.presence",
    "wecom.message",
    "dingtalk.approval",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every schema file under `schemas/`, keyed by its `$id`.
fn schemas_by_id() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for dir in [root().join("schemas"), root().join("schemas/output")] {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|x| x == "json") {
                let schema = load_json(&path);
                let id = schema["$id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{} has no $id", path.display()))
                    .to_owned();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                assert!(
                    id.ends_with(name),
                    "{}: $id {id} does not name the file",
                    path.display()
                );
                assert_eq!(
                    schema["$schema"],
                    "https://json-schema.org/draft/2020-12/schema",
                    "{}",
                    path.display()
                );
                out.insert(id, schema);
            }
        }
    }
    out
}

/// A draft 2020-12 validator for `schemas/event.json`, with the sibling files registered as
/// resources (the crate is built without file or HTTP resolving).
fn event_validator(schemas: &BTreeMap<String, Value>) -> Validator {
    let registry = Registry::new()
        .extend(schemas.iter().map(|(id, s)| (id.as_str(), s)))
        .and_then(|b| b.prepare())
        .expect("schemas register");
    let event = &schemas["https://touchstream.dev/schemas/event.json"];
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .with_registry(&registry)
        .build(event)
        .expect("event.json compiles")
}

fn standalone(schema: &Value) -> Validator {
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .build(schema)
        .expect("schema compiles on its own")
}

/// Whether the schemas accept `raw`; bytes serde_json cannot parse are not an event.
fn schema_accepts(validator: &Validator, raw: &[u8]) -> Result<(), String> {
    let instance: Value = serde_json::from_slice(raw).map_err(|e| format!("not JSON: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| e.to_string())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn fixtures(folder: &str) -> Vec<PathBuf> {
    let dir = root().join("tests/fixtures/events").join(folder);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn file_stem(path: &Path) -> &str {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
}

#[test]
fn schemas_and_decoder_agree_on_every_fixture() {
    let schemas = schemas_by_id();
    let validator = event_validator(&schemas);
    let valid = fixtures("valid");
    let invalid = fixtures("invalid");
    assert!(valid.len() >= 25, "only {} valid fixtures", valid.len());
    assert!(
        invalid.len() >= 40,
        "only {} invalid fixtures",
        invalid.len()
    );

    let mut disagreements = Vec::new();
    for (path, should_accept) in valid
        .iter()
        .map(|p| (p, true))
        .chain(invalid.iter().map(|p| (p, false)))
    {
        let raw = fs::read(path).expect("fixture readable");
        let name = format!(
            "{}/{}",
            if should_accept { "valid" } else { "invalid" },
            file_stem(path)
        );
        let by_schema = schema_accepts(&validator, &raw);
        let by_decoder = event::decode(&raw);
        if by_schema.is_ok() != should_accept {
            disagreements.push(format!("{name}: schema says {by_schema:?}"));
        }
        match (&by_decoder, should_accept) {
            (Ok(_), true) => {}
            (Ok(e), false) => disagreements.push(format!("{name}: decoder accepts it as {e:?}")),
            (Err(r), true) => disagreements.push(format!("{name}: decoder rejects it: {r}")),
            (Err(r), false) => {
                // Invalid names say what is wrong: `<reason>--what`, or
                // `schema_violation--<field>--what` when one field is at fault (the error must
                // name it).
                let parts: Vec<&str> = file_stem(path).split("--").collect();
                if parts[0] != r.reason.as_str() {
                    disagreements.push(format!("{name}: decoder reason is {r}"));
                }
                if let [_, field, _] = parts[..]
                    && !r.error.contains(&format!("`{field}`"))
                {
                    disagreements.push(format!("{name}: error does not name `{field}`: {r}"));
                }
            }
        }
        // The kind prefix of a valid fixture's name is the kind it decodes to.
        let prefix = file_stem(path).split("--").next().unwrap_or_default();
        if let Ok(e) = &by_decoder
            && should_accept
            && KINDS.contains(&prefix)
            && e.kind().as_str() != prefix
        {
            disagreements.push(format!("{name}: decoded as {}", e.kind().as_str()));
        }
    }
    for d in &disagreements {
        eprintln!("DISAGREE {d}");
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements (listed above)",
        disagreements.len()
    );
}

#[test]
fn valid_fixtures_cover_every_kind_action_and_time_form() {
    let mut kinds = BTreeMap::new();
    let mut actions = BTreeMap::new();
    let (mut rfc3339, mut epoch) = (0, 0);
    for path in fixtures("valid") {
        let raw = fs::read(&path).expect("fixture readable");
        let value: Value = serde_json::from_slice(&raw).expect("valid fixture is JSON");
        *kinds
            .entry(value["kind"].as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
        if let Some(a) = value["action"].as_str() {
            *actions.entry(a.to_owned()).or_insert(0) += 1;
        }
        match value["ts"] {
            Value::String(_) => rfc3339 += 1,
            Value::Number(_) => epoch += 1,
            _ => {}
        }
    }
    for kind in KINDS {
        assert!(kinds.contains_key(kind), "no valid fixture of kind {kind}");
    }
    for action in [
        "lead_assigned",
        "quote_sent",
        "proposal_sent",
        "case_sent",
        "contract_sent",
        "call",
        "visit",
        "email",
        "message",
        "meeting",
        "deal_won",
        "deal_lost",
    ] {
        assert!(
            actions.contains_key(action),
            "no valid fixture with action {action}"
        );
    }
    assert!(
        rfc3339 > 0 && epoch > 0,
        "both time forms: {rfc3339} strings, {epoch} integers"
    );
}

#[test]
fn per_kind_schemas_are_complete_and_share_the_envelope() {
    let schemas = schemas_by_id();
    let base = "https://touchstream.dev/schemas/";
    let first = &schemas[&format!("{base}crm.action.json")];
    for kind in KINDS {
        let schema = &schemas[&format!("{base}{kind}.json")];
        standalone(schema);
        assert_eq!(schema["properties"]["kind"]["const"], kind);
        assert_eq!(schema["additionalProperties"], false, "{kind}");
        assert_eq!(
            schema["$defs"], first["$defs"],
            "{kind}: time definitions differ"
        );
        for field in ["event_id", "ts", "sent_at", "received_at", "attrs"] {
            assert_eq!(
                schema["properties"][field], first["properties"][field],
                "{kind}: envelope field {field} differs"
            );
        }
        let properties = schema["properties"].as_object().expect("properties");
        for (name, property) in properties {
            assert!(
                property["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{kind}.{name} has no description"
            );
        }
    }
}

/// Time strings at the edges of the grammar: the schema's `pattern` and `parse_time` must
/// agree on each (the fixtures cover fewer).
#[test]
fn time_pattern_and_parse_time_agree() {
    let schemas = schemas_by_id();
    let registry = Registry::new()
        .extend(schemas.iter().map(|(id, s)| (id.as_str(), s)))
        .and_then(|b| b.prepare())
        .expect("schemas register");
    let time = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .with_registry(&registry)
        .build(&json!({"$ref": "https://touchstream.dev/schemas/crm.action.json#/$defs/rfc3339"}))
        .expect("time pattern compiles");

    let mut cases: Vec<String> = Vec::new();
    for year in [
        "0000", "1900", "1970", "2000", "2023", "2024", "2100", "9999",
    ] {
        for month in ["00", "01", "02", "04", "09", "11", "12", "13"] {
            for day in ["00", "01", "28", "29", "30", "31", "32"] {
                cases.push(format!("{year}-{month}-{day}T12:00:00Z"));
            }
        }
    }
    for time in [
        "00:00:00",
        "23:59:59",
        "23:59:60",
        "24:00:00",
        "12:60:00",
        "12:00:61",
        "1:00:00",
        "12:00",
        "12:00:00.",
        "12:00:00.1",
        "12:00:00.123456789012",
        "12:00:00,5",
    ] {
        cases.push(format!("2026-11-02T{time}Z"));
    }
    for offset in [
        "Z",
        "z",
        "+00:00",
        "-00:00",
        "+08:00",
        "-09:30",
        "+23:59",
        "+24:00",
        "+08:60",
        "+0800",
        "+08",
        "",
        " Z",
        "UTC",
        "\u{2212}08:00",
        "Z ",
    ] {
        cases.push(format!("2026-11-02T09:00:00{offset}"));
    }
    for other in [
        "2026-11-02t09:00:00z",
        "2026-11-02 09:00:00Z",
        "2026-11-02T09:00:00ZZ",
        "12026-11-02T09:00:00Z",
        "2026-1-02T09:00:00Z",
        "1793610000000",
        "",
        "２０２６-11-02T09:00:00Z",
    ] {
        cases.push(other.to_owned());
    }
    let mut disagreements = Vec::new();
    for case in &cases {
        let by_pattern = time.is_valid(&Value::String(case.clone()));
        let by_decoder = event::parse_time(case).is_some();
        if by_pattern != by_decoder {
            disagreements.push(format!(
                "{case:?}: pattern {by_pattern}, parse_time {by_decoder}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

/// URLs at the edges of the `url` grammar, wrapped into a web.hit: schema and decoder agree.
#[test]
fn url_pattern_and_decoder_agree() {
    let schemas = schemas_by_id();
    let validator = event_validator(&schemas);
    let mut disagreements = Vec::new();
    for url in [
        "http://a",
        "https://www.example.com/products/x?utm_content=Q1#top",
        "HTTP://EXAMPLE.COM:8080",
        "https://example.com:0",
        "https://example.com:65535/",
        "https://example.com:65536/",
        "https://example.com:080/",
        "https://example.com:/",
        "https://1.2.3.4/",
        "https://1.2.3.256/",
        "https://01.2.3.4/",
        "https://1.2.3/",
        "https://a.1/",
        "https://1a.b2/",
        "https://a.b2c/",
        "https://-a.com/",
        "https://a-.com/",
        "https://a--b.com/",
        "https://xn--nxasmq6b.com/",
        "https://XN--abc.com/",
        "https://axn--b.com/",
        "https://a..b/",
        "https://a.b./",
        "https://[::1]/",
        "https://u@a.com/",
        "https://a.com/@x:y",
        "https://a.com/a b",
        "https://a.com/a\\b",
        "https://a.com/?q=a?b",
        "https://a.com/#a?b",
        "https://a.com/#a#b",
        "https://a.com/\u{7f}",
        "https://a.com/é?é#é",
        "https://a.com?x",
        "https://a.com#x",
        "https:/a.com",
        "https:a.com",
        "ftp://a.com",
        "https://",
        "//a.com/x",
        "https://a_b.com",
    ] {
        let hit = json!({"event_id": "w", "kind": "web.hit", "ts": 0, "url": url});
        let raw = serde_json::to_vec(&hit).expect("serialises");
        let by_schema = schema_accepts(&validator, &raw).is_ok();
        let by_decoder = event::decode(&raw).is_ok();
        if by_schema != by_decoder {
            disagreements.push(format!("{url:?}: schema {by_schema}, decoder {by_decoder}"));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

/// Sample output records written from the formats of EVENTS.md §8 / the common brief.
fn output_samples() -> Vec<(&'static str, Value)> {
    vec![
        (
            "alert",
            json!({
                "alert_id": "quote_hot_no_contract:Q-2026-0001",
                "rule": "quote_hot_no_contract",
                "status": "firing",
                "rep_id": "R001",
                "customer_id": "C001",
                "region": "east",
                "asset_id": "Q-2026-0001",
                "due_at": "2026-11-07T09:00:00.000Z",
                "fired_at": "2026-11-07T09:00:00.000Z",
                "evidence": {
                    "quote_sent_at": "2026-11-02T09:00:00.000Z",
                    "counted_opens": 3,
                    "excluded_opens": 1,
                    "last_open_at": "2026-11-03T10:15:00.000Z",
                    "customer_online_at_send": true,
                    "product_page_visits_30m": 2
                }
            }),
        ),
        (
            "alert",
            json!({
                "alert_id": "quote_hot_no_contract:Q-2026-0001",
                "rule": "quote_hot_no_contract",
                "status": "resolved",
                "rep_id": "R001",
                "customer_id": "C001",
                "region": "east",
                "asset_id": "Q-2026-0001",
                "due_at": "2026-11-07T09:00:00.000Z",
                "fired_at": "2026-11-07T09:00:00.000Z",
                "evidence": {
                    "quote_sent_at": "2026-11-02T09:00:00.000Z",
                    "counted_opens": 3,
                    "excluded_opens": 0,
                    "last_open_at": null,
                    "customer_online_at_send": false,
                    "product_page_visits_30m": 0,
                    "resolved_at": "2026-11-07T09:30:00.000Z",
                    "resolved_by": "dt-0001"
                }
            }),
        ),
        (
            "session",
            json!({
                "session_id": "R001:C001:1793610000000",
                "rep_id": "R001",
                "customer_id": "C001",
                "start": "2026-11-02T09:00:00.000Z",
                "end": "2026-11-02T09:30:00.000Z",
                "event_count": 4,
                "channels": ["email", "wechat"],
                "opens": 1,
                "messages_in": 1,
                "messages_out": 0
            }),
        ),
        (
            "cdi",
            json!({
                "rep_id": "R001",
                "customer_id": "C001",
                "breadth": 2,
                "depth": 1,
                "density": 0,
                "cdi": 3,
                "band": "high",
                "as_of": "2026-12-01T00:00:00.000Z"
            }),
        ),
        (
            "dead_letter",
            json!({
                "reason": "schema_violation",
                "error": "crm.action: field `channel` is required for action `quote_sent`",
                "raw": "{\"event_id\":\"e1\",\"kind\":\"crm.action\"}",
                "at": "2026-11-02T09:00:00.123Z"
            }),
        ),
        (
            "dead_letter",
            json!({
                "reason": "invalid_json",
                "error": "invalid unicode code point at line 1 column 3",
                "raw": "/w==",
                "at": "2026-11-02T09:00:00.000Z",
                "encoding": "base64"
            }),
        ),
    ]
}

#[test]
fn output_schemas_accept_samples_and_reject_extra_fields() {
    let schemas = schemas_by_id();
    for (name, sample) in output_samples() {
        let id = format!("https://touchstream.dev/schemas/output/{name}.json");
        let validator = standalone(&schemas[&id]);
        let errors: Vec<String> = validator
            .iter_errors(&sample)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{name} sample rejected: {errors:?}\n{sample}"
        );

        let mut extra = sample.clone();
        extra["unexpected"] = json!(1);
        assert!(!validator.is_valid(&extra), "{name} accepts an extra field");
    }
}

#[test]
fn output_schemas_reject_broken_records() {
    let schemas = schemas_by_id();
    let validator = |name: &str| {
        standalone(&schemas[&format!("https://touchstream.dev/schemas/output/{name}.json")])
    };
    let samples = output_samples();
    let firing = samples[0].1.clone();
    let session = samples[2].1.clone();
    let cdi = samples[3].1.clone();
    let dead = samples[4].1.clone();
    let mutate = |base: &Value, f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "alert",
            mutate(&firing, &|v| v["status"] = json!("open")),
            "unknown status",
        ),
        (
            "alert",
            mutate(&firing, &|v| v["due_at"] = json!("2026-11-07T09:00:00Z")),
            "time without millis",
        ),
        (
            "alert",
            mutate(&firing, &|v| {
                v["fired_at"] = json!("2026-11-07T17:00:00.000+08:00")
            }),
            "time not UTC",
        ),
        (
            "alert",
            mutate(&firing, &|v| {
                v.as_object_mut().map(|o| o.remove("asset_id"));
            }),
            "headline alert without asset_id",
        ),
        (
            "alert",
            mutate(&firing, &|v| {
                v["evidence"]
                    .as_object_mut()
                    .map(|o| o.remove("counted_opens"));
            }),
            "evidence without counted_opens",
        ),
        (
            "alert",
            mutate(&firing, &|v| v["evidence"]["counted_opens"] = json!(2.5)),
            "fractional count",
        ),
        (
            "alert",
            mutate(&firing, &|v| v["status"] = json!("resolved")),
            "resolved without resolved_at/by",
        ),
        (
            "alert",
            mutate(&firing, &|v| v["evidence"]["resolved_by"] = json!("x")),
            "firing with resolved_by",
        ),
        (
            "session",
            mutate(&session, &|v| v["channels"] = json!(["email", "email"])),
            "repeated channel",
        ),
        (
            "session",
            mutate(&session, &|v| v["channels"] = json!(["fax"])),
            "unknown channel",
        ),
        (
            "session",
            mutate(&session, &|v| v["event_count"] = json!(0)),
            "empty session",
        ),
        ("cdi", mutate(&cdi, &|v| v["cdi"] = json!(8)), "cdi above 7"),
        (
            "cdi",
            mutate(&cdi, &|v| v["band"] = json!("medium")),
            "unknown band",
        ),
        (
            "cdi",
            mutate(&cdi, &|v| v["breadth"] = json!(6)),
            "breadth above 5",
        ),
        (
            "dead_letter",
            mutate(&dead, &|v| v["reason"] = json!("duplicate")),
            "unknown reason",
        ),
        (
            "dead_letter",
            mutate(&dead, &|v| v["encoding"] = json!("hex")),
            "encoding other than base64",
        ),
        (
            "dead_letter",
            mutate(&dead, &|v| v["encoding"] = json!("base64")),
            "raw not base64",
        ),
    ];
    for (name, record, what) in cases {
        assert!(
            !validator(name).is_valid(&record),
            "{name} accepts {what}: {record}"
        );
    }
}

/// `format_time` output is what the output schemas call a time.
#[test]
fn format_time_matches_the_output_time_pattern() {
    let schemas = schemas_by_id();
    let validator = standalone(&schemas["https://touchstream.dev/schemas/output/cdi.json"]);
    let cdi = &output_samples()[3].1;
    for ms in [
        0,
        1,
        951_782_400_000,
        1_793_610_000_123,
        event::MAX_EPOCH_MILLIS,
    ] {
        let mut record = cdi.clone();
        record["as_of"] = json!(event::format_time(ms));
        assert!(validator.is_valid(&record), "{}", record["as_of"]);
    }
}
