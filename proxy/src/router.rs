//! Route matching: host, path prefix, methods and headers, first match wins.

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header::HOST};
use rafael_config::{HostMatch, RouteMatch};

/// A compiled [`RouteMatch`]: everything parsed up front so matching allocates nothing.
#[derive(Debug, Clone)]
pub struct Matcher {
    host: Option<HostMatch>,
    path_prefix: String,
    methods: Option<Vec<Method>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

// === impl Matcher ===

impl Matcher {
    /// Compiles a route's match section. Validation already checked every part, so a part that
    /// still fails to parse matches nothing rather than everything.
    pub fn new(spec: &RouteMatch) -> Self {
        let methods = spec.methods.as_ref().map(|methods| {
            methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect()
        });
        let headers = spec
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        Self {
            host: spec.host.clone(),
            path_prefix: spec.path_prefix.clone().unwrap_or_else(|| "/".to_owned()),
            methods,
            headers,
        }
    }

    /// True when the request meets every condition.
    pub fn matches(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        if !uri.path().starts_with(self.path_prefix.as_str()) {
            return false;
        }
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return false;
            }
        }
        if let Some(host) = &self.host {
            match request_host(uri, headers) {
                Some(name) if host_matches(host, name) => {}
                _ => return false,
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

/// The request's host without port: the URI authority (HTTP/2, absolute-form) or `Host`.
pub fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let authority = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => headers.get(HOST)?.to_str().ok()?,
    };
    Some(strip_port(authority))
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

fn host_matches(pattern: &HostMatch, host: &str) -> bool {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        pattern.matches(&host.to_ascii_lowercase())
    } else {
        pattern.matches(host)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn spec(host: Option<&str>, prefix: Option<&str>, methods: Option<&[&str]>) -> RouteMatch {
        RouteMatch {
            host: host.map(|h| HostMatch::try_from(h.to_owned()).unwrap()),
            path_prefix: prefix.map(str::to_owned),
            methods: methods.map(|m| m.iter().map(|s| (*s).to_owned()).collect()),
            headers: BTreeMap::new(),
        }
    }

    fn req(method: &str, uri: &str, host: Option<&str>) -> (Method, Uri, HeaderMap) {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(HOST, HeaderValue::from_str(host).unwrap());
        }
        (method.parse().unwrap(), uri.parse().unwrap(), headers)
    }

    #[test]
    fn path_methods_and_hosts() {
        let m = Matcher::new(&spec(
            Some("*.example.com"),
            Some("/orders"),
            Some(&["GET"]),
        ));
        let (method, uri, headers) = req("GET", "/orders/7", Some("API.example.com:8443"));
        assert!(m.matches(&method, &uri, &headers));
        let (method, uri, headers) = req("POST", "/orders/7", Some("api.example.com"));
        assert!(!m.matches(&method, &uri, &headers), "method not allowed");
        let (method, uri, headers) = req("GET", "/users", Some("api.example.com"));
        assert!(!m.matches(&method, &uri, &headers), "path outside prefix");
        let (method, uri, headers) = req("GET", "/orders", Some("example.com"));
        assert!(
            !m.matches(&method, &uri, &headers),
            "the bare domain is not a subdomain"
        );
        let (method, uri, headers) = req("GET", "http://x.example.com/orders", None);
        assert!(
            m.matches(&method, &uri, &headers),
            "authority from an absolute URI"
        );
    }

    #[test]
    fn headers_must_match_exactly() {
        let mut s = spec(None, None, None);
        s.headers.insert("x-tenant".into(), "blue".into());
        let m = Matcher::new(&s);
        let (method, uri, mut headers) = req("GET", "/", None);
        assert!(!m.matches(&method, &uri, &headers));
        headers.insert("x-tenant", HeaderValue::from_static("green"));
        assert!(!m.matches(&method, &uri, &headers));
        headers.append("x-tenant", HeaderValue::from_static("blue"));
        assert!(m.matches(&method, &uri, &headers));
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
