//! Tracked-link targets: which URLs a link may redirect to (no open redirect), and the UTM
//! parameters the collector appends.

use url::{Host, Url, form_urlencoded};

/// The UTM parameters the collector sets; parameters of these names already in the target are
/// replaced, every other parameter is kept as written.
pub const UTM_KEYS: [&str; 4] = ["utm_source", "utm_medium", "utm_campaign", "utm_content"];
/// `utm_source` of every tracked link.
pub const UTM_SOURCE: &str = "touchstream";
/// `utm_campaign` when the token names no campaign.
pub const NO_CAMPAIGN: &str = "none";

/// Checks a link target written by a user (`u=` of a tracked link, `target_url` of a minted
/// asset) and returns it parsed. Only `http`/`https` URLs whose host is one of `allowed` or a
/// subdomain of one (case-insensitive) pass. Refused, with a message for the person who
/// clicked: other schemes, protocol-relative and relative URLs, user info
/// (`https://example.com@evil.com`), backslashes, whitespace and control characters,
/// percent-encoded or non-ASCII hosts, IP literals not listed exactly, and hosts that merely
/// contain or start with an allowed domain (`example.com.evil.com`).
pub fn check_target(raw: &str, allowed: &[String]) -> Result<Url, String> {
    let refuse = |why: &str| Err(format!("redirect target refused: {why}"));
    if raw.is_empty() {
        return refuse("empty URL");
    }
    if raw
        .chars()
        .any(|c| c == '\\' || c.is_whitespace() || c.is_control())
    {
        return refuse("the URL contains a backslash, whitespace or a control character");
    }
    let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &raw[8..]
    } else if lower.starts_with("http://") {
        &raw[7..]
    } else {
        return refuse("only absolute http:// and https:// URLs are allowed");
    };
    // The authority as written, before any normalisation by the URL parser.
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') {
        return refuse("user info (`user@host`) is not allowed");
    }
    if authority.is_empty() || authority.contains('%') || !authority.is_ascii() {
        return refuse("the host must be a plain ASCII host name");
    }
    let url = Url::parse(raw).map_err(|e| format!("redirect target refused: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("user info (`user@host`) is not allowed");
    }
    let ok = match url.host() {
        Some(Host::Domain(host)) => domain_allowed(host, allowed),
        Some(Host::Ipv4(ip)) => allowed.iter().any(|d| d == &ip.to_string()),
        Some(Host::Ipv6(_)) | None => false,
    };
    if !ok {
        return Err(format!(
            "redirect target refused: {} is not an allowed domain (collect.allowed_redirect_domains)",
            url.host_str().unwrap_or("the host")
        ));
    }
    Ok(url)
}

/// Whether `host` is one of `allowed` or a subdomain of one, ignoring ASCII case.
pub fn domain_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.to_ascii_lowercase();
    allowed.iter().filter(|d| !d.is_empty()).any(|d| {
        let d = d.to_ascii_lowercase();
        host == d
            || (host.len() > d.len()
                && host.ends_with(&d)
                && host.as_bytes()[host.len() - d.len() - 1] == b'.')
    })
}

/// `url` with `utm_source=touchstream`, `utm_medium`, `utm_campaign` (`none` when absent) and
/// `utm_content` appended, replacing parameters of those names; the other parameters and the
/// fragment stay as they were.
pub fn with_utm(url: &Url, medium: &str, campaign: Option<&str>, content: &str) -> Url {
    let mut query: Vec<String> = url
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            let key: String = form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            !UTM_KEYS.contains(&key.as_str())
        })
        .map(str::to_string)
        .collect();
    let campaign = campaign.filter(|c| !c.is_empty()).unwrap_or(NO_CAMPAIGN);
    for (key, value) in UTM_KEYS
        .into_iter()
        .zip([UTM_SOURCE, medium, campaign, content])
    {
        let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        query.push(format!("{key}={value}"));
    }
    let mut out = url.clone();
    out.set_query(Some(&query.join("&")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec!["example.com".into(), "Shop.Example.org".into()]
    }

    #[test]
    fn listed_domains_and_their_subdomains_pass() {
        for ok in [
            "https://example.com",
            "https://example.com/products/x?a=1#top",
            "http://www.EXAMPLE.com:8443/p",
            "HTTPS://a.b.example.com/",
            "https://shop.example.org/cart",
        ] {
            assert!(check_target(ok, &allowed()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn open_redirect_tricks_are_refused() {
        for evil in [
            "https://evil.com/",
            "https://example.com@evil.com/",
            "https://user:pw@example.com/",
            "https://evil.com/?x=example.com",
            "https://evil.com/#example.com",
            "https://example.com.evil.com/",
            "https://notexample.com/",
            "https://evil.com\\@example.com",
            "https:\\\\evil.com",
            "https:/\\evil.com",
            "//evil.com",
            "/\\evil.com",
            "javascript:alert(1)//example.com",
            "ftp://example.com/",
            "data:text/html,example.com",
            "https://%65vil.com/",
            "https://exa%6dple.com/",
            "https://example.com%2eevil.com/",
            " https://example.com/",
            "https://example.com/\n",
            "https://[::1]/",
            "https://127.0.0.1/",
            "https://xn--exmple-cua.com/",
            "https://exämple.com/",
            "",
            "example.com",
        ] {
            assert!(check_target(evil, &allowed()).is_err(), "{evil:?} passed");
        }
    }

    #[test]
    fn utm_parameters_are_appended_and_replace_their_namesakes() {
        let url = Url::parse("https://example.com/p?a=1&utm_source=x&b=%20c&UTM_x=2#frag").unwrap();
        let out = with_utm(&url, "quote", Some("spring 2026"), "q/1");
        assert_eq!(
            out.as_str(),
            "https://example.com/p?a=1&b=%20c&UTM_x=2&utm_source=touchstream&utm_medium=quote\
             &utm_campaign=spring+2026&utm_content=q%2F1#frag"
        );
        let plain = Url::parse("https://example.com").unwrap();
        assert_eq!(
            with_utm(&plain, "quote", None, "q1").as_str(),
            "https://example.com/?utm_source=touchstream&utm_medium=quote&utm_campaign=none\
             &utm_content=q1"
        );
        let pairs: Vec<(String, String)> = out.query_pairs().into_owned().collect();
        assert!(pairs.contains(&("utm_content".into(), "q/1".into())));
    }
}
