//! Route matching: host, path prefix, methods and headers, first match wins.
//!
//! A listener's routes are indexed ([`RouteIndex`]) by host and path prefix, so a lookup costs
//! about the same with ten routes or a thousand and gives the answer trying them in order
//! would give: only the routes whose host and prefix fit the request are tried, lowest index
//! first.

use std::{borrow::Cow, collections::HashMap};

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
        if let Some(host) = &self.host {
            match request_host(uri, headers) {
                Some(name) if host_matches(host, name) => {}
                _ => return false,
            }
        }
        self.matches_rest(method, headers)
    }

    /// The conditions besides host and path prefix: methods and header values.
    fn matches_rest(&self, method: &Method, headers: &HeaderMap) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.contains(method) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

/// Listeners with at most this many routes try them in order: a few prefix comparisons cost less
/// than the index's hash lookups.
const LINEAR_UP_TO: usize = 16;

/// A listener's routes indexed by host, then by path prefix.
#[derive(Debug, Default)]
pub struct RouteIndex {
    matchers: Vec<Matcher>,
    /// Routes for one exact host (lowercase).
    exact: HashMap<String, Prefixes>,
    /// Routes for a host suffix (`*.suffix`), by suffix.
    suffix: Vec<(HostMatch, Prefixes)>,
    /// Routes for any host.
    any: Prefixes,
}

/// Routes by path prefix: the prefixes' lengths, and each prefix's routes in match order.
#[derive(Debug, Default)]
struct Prefixes {
    lengths: Vec<usize>,
    routes: HashMap<String, Vec<usize>>,
}

// === impl RouteIndex ===

impl RouteIndex {
    /// Indexes `matchers`, in match order.
    pub fn new(matchers: impl IntoIterator<Item = Matcher>) -> Self {
        let mut index = Self::default();
        for (i, matcher) in matchers.into_iter().enumerate() {
            let group = match &matcher.host {
                None => &mut index.any,
                Some(HostMatch::Exact(host)) => index.exact.entry(host.clone()).or_default(),
                Some(suffix @ HostMatch::Suffix(_)) => {
                    let at = match index.suffix.iter().position(|(s, _)| s == suffix) {
                        Some(at) => at,
                        None => {
                            index.suffix.push((suffix.clone(), Prefixes::default()));
                            index.suffix.len() - 1
                        }
                    };
                    &mut index.suffix[at].1
                }
            };
            group.add(&matcher.path_prefix, i);
            index.matchers.push(matcher);
        }
        index
    }

    /// The index of the first route that matches the request, if any.
    pub fn find(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<usize> {
        if self.matchers.len() <= LINEAR_UP_TO {
            return self
                .matchers
                .iter()
                .position(|m| m.matches(method, uri, headers));
        }
        let path = uri.path();
        let mut best = self.any.first(path, None, &self.matchers, method, headers);
        if self.exact.is_empty() && self.suffix.is_empty() {
            return best;
        }
        let Some(host) = request_host(uri, headers) else {
            return best;
        };
        let host = lowercase(host);
        if let Some(group) = self.exact.get(host.as_ref()) {
            best = group.first(path, best, &self.matchers, method, headers);
        }
        for (suffix, group) in &self.suffix {
            if suffix.matches(&host) {
                best = group.first(path, best, &self.matchers, method, headers);
            }
        }
        best
    }
}

// === impl Prefixes ===

impl Prefixes {
    fn add(&mut self, prefix: &str, route: usize) {
        if let Err(at) = self.lengths.binary_search(&prefix.len()) {
            self.lengths.insert(at, prefix.len());
        }
        self.routes
            .entry(prefix.to_owned())
            .or_default()
            .push(route);
    }

    /// The lowest-indexed route of this group below `below` whose prefix starts `path` and
    /// whose other conditions hold, else `below`.
    fn first(
        &self,
        path: &str,
        below: Option<usize>,
        matchers: &[Matcher],
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<usize> {
        let mut best = below;
        for &length in &self.lengths {
            let Some(routes) = path.get(..length).and_then(|p| self.routes.get(p)) else {
                continue;
            };
            for &route in routes {
                if best.is_some_and(|b| route >= b) {
                    break;
                }
                if matchers[route].matches_rest(method, headers) {
                    best = Some(route);
                    break;
                }
            }
        }
        best
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
    pattern.matches(&lowercase(host))
}

/// `host` in lowercase, copied only when it has an uppercase letter.
fn lowercase(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
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

    proptest::proptest! {
        /// The index answers what trying every route in order answers.
        #[test]
        fn the_index_finds_the_first_matching_route(
            routes in proptest::collection::vec((0..5usize, 0..6usize, 0..3usize, 0..2usize), 0..48),
            requests in proptest::collection::vec((0..3usize, 0..7usize, 0..5usize, 0..2usize), 1..16),
        ) {
            const HOSTS: [Option<&str>; 5] = [None, Some("a.test"), Some("*.test"), Some("b.test"), Some("*.a.test")];
            const PREFIXES: [Option<&str>; 6] = [None, Some("/"), Some("/a"), Some("/a/"), Some("/ab"), Some("/b/c")];
            const METHODS: [Option<&[&str]>; 3] = [None, Some(&["GET"]), Some(&["POST", "PUT"])];
            const PATHS: [&str; 7] = ["/", "/a", "/a/x", "/ab", "/abc", "/b/c/d", "/zz"];
            const REQUEST_HOSTS: [Option<&str>; 5] = [None, Some("a.test"), Some("X.A.test:8080"), Some("b.test"), Some("test")];
            let matchers: Vec<Matcher> = routes
                .iter()
                .map(|&(h, p, m, x)| {
                    let mut s = spec(HOSTS[h], PREFIXES[p], METHODS[m]);
                    if x == 1 {
                        s.headers.insert("x-tenant".into(), "blue".into());
                    }
                    Matcher::new(&s)
                })
                .collect();
            let index = RouteIndex::new(matchers.iter().cloned());
            for &(method, path, host, tenant) in &requests {
                let (method, uri, mut headers) =
                    req(["GET", "POST", "DELETE"][method], PATHS[path], REQUEST_HOSTS[host]);
                if tenant == 1 {
                    headers.insert("x-tenant", HeaderValue::from_static("blue"));
                }
                let linear = matchers.iter().position(|m| m.matches(&method, &uri, &headers));
                proptest::prop_assert_eq!(index.find(&method, &uri, &headers), linear);
            }
        }
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("example.com"), "example.com");
    }
}
