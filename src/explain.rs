//! What Portcullis decides for a request described in words: `portcullis explain`, the config's
//! own `tests:` (run by `check` and before every reload), and `explain --diff` between two
//! configs. It finds the route and calls the same evaluator as the proxy (`policy::evaluate`).

use http::Method;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::error::Pos;
use crate::http::target::normalize_path;
use crate::policy::identity::normalize_email;
use crate::policy::{evaluate, ClaimValue, Facts, Identity, Outcome, RuleOrigin};
pub use crate::route::RouteTable;

/// A request as a test or `explain` describes it.
#[derive(Clone, Debug)]
pub struct Request {
    /// `https://host[:port]/path` as given, for messages.
    pub url: String,
    pub host: String,
    pub port: Option<u16>,
    /// Normalized, as the proxy would see it.
    pub path: String,
    pub method: Method,
    pub ip: Option<IpAddr>,
    /// A CONNECT to a TCP route (`tcp+https://host:port`): decided by the route that names
    /// that host and port, with method `CONNECT` and path `/`.
    pub tcp: bool,
    /// `None`: anonymous.
    pub identity: Option<Arc<Identity>>,
}

/// Who a described request comes from.
#[derive(Clone, Debug, Default)]
pub struct Who {
    pub email: Option<String>,
    pub verified: bool,
    pub user: Option<String>,
    pub groups: Vec<String>,
    pub claims: BTreeMap<String, ClaimValue>,
}

impl Request {
    /// From a URL, a method and a client address; `who` is `None` for an anonymous request.
    /// An identity needs an email or a user (subject).
    pub fn new(
        url: &str,
        method: &str,
        ip: Option<IpAddr>,
        who: Option<Who>,
    ) -> Result<Request, String> {
        let u = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL ({e})"))?;
        let tcp = match u.scheme() {
            "https" | "http" => false,
            "tcp+https" | "tcp+http" => true,
            _ => {
                return Err(format!(
                    "`{url}` is not an http(s) URL (or tcp+https://host:port for a TCP route)"
                ))
            }
        };
        if tcp && (u.port().is_none() || !(u.path().is_empty() || u.path() == "/")) {
            return Err(format!(
                "`{url}`: a TCP route is asked for as tcp+https://host:port, without a path"
            ));
        }
        let host = u
            .host_str()
            .ok_or_else(|| format!("`{url}` has no host"))?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let path = if tcp {
            "/".to_string()
        } else {
            normalize_path(u.path())
                .map_err(|e| format!("`{url}`: {e} (Portcullis answers 400)"))?
        };
        let method = if tcp {
            Method::CONNECT
        } else {
            Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("`{method}` is not an HTTP method"))?
        };
        let identity = match who {
            None => None,
            Some(w) => {
                let email = match &w.email {
                    Some(e) => Some(
                        normalize_email(e)
                            .ok_or_else(|| format!("`{e}` is not a plain email address"))?,
                    ),
                    None => None,
                };
                let sub = w
                    .user
                    .clone()
                    .or_else(|| email.clone())
                    .ok_or("a signed-in user needs an email or a user")?;
                Some(Arc::new(Identity {
                    iss: String::new(),
                    sub,
                    email,
                    email_verified: Some(w.verified),
                    groups: w.groups,
                    claims: w.claims,
                    ..Default::default()
                }))
            }
        };
        Ok(Request {
            url: url.to_string(),
            host,
            port: u.port(),
            path,
            method,
            ip,
            tcp,
            identity,
        })
    }

    /// Who, in a few words: the email, else the subject, else "anonymous"; then the groups and
    /// claims (two users with the same email but other groups are told apart).
    pub fn who(&self) -> String {
        let Some(i) = &self.identity else {
            return "anonymous".into();
        };
        let mut s = i.email.clone().unwrap_or_else(|| i.sub.clone());
        if !i.groups.is_empty() {
            s.push_str(&format!(" in {}", i.groups.join(", ")));
        }
        for (k, v) in &i.claims {
            let v = match v {
                ClaimValue::Str(s) => s.clone(),
                ClaimValue::List(l) => l.join(","),
            };
            s.push_str(&format!(" with {k}={v}"));
        }
        s
    }
}

/// What Portcullis does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Forwarded.
    Allow,
    /// 403 for a signed-in user, 404 when no route matches.
    Deny,
    /// Anonymous, and a sign-in could change the answer: a browser is sent to the IdP (other
    /// clients get 401).
    SignIn,
}

impl Answer {
    pub fn word(self) -> &'static str {
        match self {
            Answer::Allow => "allow",
            Answer::Deny => "deny",
            Answer::SignIn => "sign_in",
        }
    }

    pub fn parse(s: &str) -> Option<Answer> {
        match s {
            "allow" => Some(Answer::Allow),
            "deny" => Some(Answer::Deny),
            "sign_in" => Some(Answer::SignIn),
            _ => None,
        }
    }
}

/// The decision for one request, with what made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub answer: Answer,
    /// The route's name and line, or `None` when no route matches (404).
    pub route: Option<(String, u32)>,
    /// The rule that decided, if one did.
    pub rule: Option<RuleOrigin>,
    pub reason: &'static str,
    /// On an allow: the upstreams that serve it (`Target::describe`).
    pub upstream: Option<String>,
    /// On an allow with a grant: the headers it sets (`Name: value, …`) and where it is written.
    pub grant: Option<(String, Pos)>,
}

impl Verdict {
    /// "route `R` (FILE:LINE), rule KEY at FILE:LINE:COL: REASON", as `explain` prints it.
    pub fn describe(&self, source: &str) -> String {
        let Some((name, line)) = &self.route else {
            return "no route matches (404)".into();
        };
        let rule = match &self.rule {
            Some(r) => format!("{} at {source}:{}:{}", r.key, r.pos.line, r.pos.col),
            None => "no rule".into(),
        };
        let mut out = format!(
            "route `{name}` ({source}:{line}), decided by {rule}: {}",
            self.reason
        );
        if let Some(u) = &self.upstream {
            out.push_str(&format!("; upstream {u}"));
        }
        if let Some((g, at)) = &self.grant {
            out.push_str(&format!(
                "; grant at {source}:{}:{} sets {g}",
                at.line, at.col
            ));
        }
        out
    }

    /// Everything that reaches the upstream for this request: whether, where, and with what
    /// grant (what `explain --diff` compares).
    pub fn effect(&self) -> (Answer, Option<&str>, Option<&str>) {
        (
            self.answer,
            self.upstream.as_deref(),
            self.grant.as_ref().map(|(g, _)| g.as_str()),
        )
    }
}

/// Decides `r` under `routes` as the proxy would.
pub fn decide(routes: &RouteTable, r: &Request) -> Verdict {
    let route = match (r.tcp, r.port) {
        (true, Some(port)) => routes.find_tcp(&r.host, port),
        (true, None) => None,
        (false, _) => routes.find(&r.host, r.port, &r.path),
    };
    let Some(route) = route else {
        return Verdict {
            answer: Answer::Deny,
            route: None,
            rule: None,
            reason: "no route matches",
            upstream: None,
            grant: None,
        };
    };
    let facts = Facts {
        method: &r.method,
        path: &r.path,
        ip: r.ip,
    };
    let d = evaluate(&route.policy, r.identity.as_deref(), &facts);
    let allowed = d.outcome == Outcome::Allow;
    let grant = d.grant.filter(|_| allowed).and_then(|g| {
        let at = route.policy.grants.get(g)?.pos;
        let headers: Vec<String> = route
            .granted(Some(g))
            .iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        Some((headers.join(", "), at))
    });
    Verdict {
        upstream: allowed.then(|| route.target(d.target).describe()),
        grant,
        answer: match d.outcome {
            Outcome::Allow => Answer::Allow,
            Outcome::Deny => Answer::Deny,
            Outcome::Unauthenticated => Answer::SignIn,
        },
        route: Some((route.name.clone(), route.line)),
        rule: d.rule.cloned(),
        reason: d.reason,
    }
}

/// One of the config's `tests:`.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: Option<String>,
    /// Where it is written.
    pub pos: Pos,
    pub request: Request,
    pub expect: Answer,
}

impl Case {
    /// `"name" (url as who)`, for messages.
    pub fn label(&self) -> String {
        let what = format!(
            "{} {} as {}",
            self.request.method,
            self.request.url,
            self.request.who()
        );
        match &self.name {
            Some(n) => format!("\"{n}\" ({what})"),
            None => what,
        }
    }
}

/// A test whose expectation the config does not meet.
#[derive(Clone, Debug)]
pub struct Failure {
    pub pos: Pos,
    pub message: String,
}

/// Runs the config's tests under its routes; each failure names the case, what it expected,
/// what it got and what decided.
pub fn run_tests(routes: &RouteTable, cases: &[Case], source: &str) -> Vec<Failure> {
    cases
        .iter()
        .filter_map(|c| {
            let v = decide(routes, &c.request);
            (v.answer != c.expect).then(|| Failure {
                pos: c.pos,
                message: format!(
                    "test {}: expected {}, got {}: {}",
                    c.label(),
                    c.expect.word(),
                    v.answer.word(),
                    v.describe(source)
                ),
            })
        })
        .collect()
}

/// The requests a set of routes' policies name, to compare two configs on: on each route's host
/// (its scheme and port), the paths its matcher and its rules name (and `/`), as each user a
/// rule, a `to` entry or a grant names (an email, a subject, someone at a named domain, a member of a named group, a user
/// with a named claim value), as a signed-in user no rule names, and anonymously; with each
/// method and client address a rule names.
pub fn probes(routes: &RouteTable) -> Vec<Request> {
    use crate::policy::{ClaimMatch, Criterion, Expr, StrMatch};
    use crate::route::PathMatch;
    let mut hosts = Vec::new();
    let mut paths = vec!["/".to_string()];
    let mut who: Vec<Option<Who>> = vec![
        None,
        Some(Who {
            email: Some("nobody@probe.invalid".into()),
            verified: true,
            ..Who::default()
        }),
    ];
    let mut methods = vec![Method::GET];
    let mut ips: Vec<Option<IpAddr>> = vec![None];
    /// Values each matcher of `m` accepts: the value itself for `is`, `starts_with`,
    /// `contains` and `in`, and one ending in it for `ends_with`.
    fn strs(m: &StrMatch) -> Vec<String> {
        let mut v: Vec<String> = [&m.is, &m.starts_with, &m.contains]
            .into_iter()
            .flatten()
            .map(|s| s.to_string())
            .collect();
        // As an email and as a domain: whichever the criterion reads, one of them is valid.
        if let Some(s) = &m.ends_with {
            let dot = if s.starts_with('.') || s.contains('@') {
                ""
            } else {
                "."
            };
            v.push(format!("probe{dot}{s}"));
            if !s.contains('@') {
                v.push(format!("probe@probe{dot}{s}"));
            }
        }
        v.extend(m.one_of.iter().flatten().map(|s| s.to_string()));
        v
    }
    fn walk(
        e: &Expr,
        paths: &mut Vec<String>,
        who: &mut Vec<Option<Who>>,
        methods: &mut Vec<Method>,
        ips: &mut Vec<Option<IpAddr>>,
    ) {
        let user = |w: Who| {
            Some(Who {
                verified: true,
                ..w
            })
        };
        match e {
            Expr::Always => {}
            Expr::And(v) | Expr::Or(v) | Expr::Not(v) | Expr::Nor(v) => {
                for e in v {
                    walk(e, paths, who, methods, ips);
                }
            }
            Expr::Crit(c) => match c {
                Criterion::AuthenticatedUser => {}
                Criterion::Email(m) => who.extend(strs(m).into_iter().map(|e| {
                    user(Who {
                        email: Some(e),
                        ..Who::default()
                    })
                })),
                Criterion::Domain(m) => who.extend(strs(m).into_iter().map(|d| {
                    user(Who {
                        email: Some(format!("someone@{d}")),
                        ..Who::default()
                    })
                })),
                Criterion::User(m) => who.extend(strs(m).into_iter().map(|u| {
                    user(Who {
                        user: Some(u),
                        ..Who::default()
                    })
                })),
                Criterion::Groups(l) => who.push(user(Who {
                    email: Some("member@probe.invalid".into()),
                    groups: vec![l.has.to_string()],
                    ..Who::default()
                })),
                Criterion::Claim(name, m) => {
                    let values = match m {
                        ClaimMatch::Str(s) => {
                            strs(s).into_iter().map(ClaimValue::Str).collect::<Vec<_>>()
                        }
                        ClaimMatch::Has(h) => vec![ClaimValue::List(vec![h.to_string()])],
                    };
                    who.extend(values.into_iter().map(|v| {
                        user(Who {
                            email: Some("claimant@probe.invalid".into()),
                            claims: [(name.to_string(), v)].into(),
                            ..Who::default()
                        })
                    }));
                }
                Criterion::HttpMethod(m) => methods.extend(m.iter().cloned()),
                Criterion::HttpPath(m) => paths.extend(strs(m)),
                Criterion::SourceIp(nets) => ips.extend(nets.iter().map(|n| Some(n.addr()))),
            },
        }
    }
    for r in routes.iter() {
        // A TCP route's origin is `tcp+https://host:port`: its probes are CONNECTs (`Request`
        // makes every one of them a CONNECT to `/`).
        let origin = r.from.origin_string();
        if !hosts.contains(&origin) {
            hosts.push(origin);
        }
        match &r.path {
            PathMatch::Prefix(p) | PathMatch::Exact(p) => paths.push(p.clone()),
            PathMatch::Any | PathMatch::Regex(_) => {}
        }
        for rule in &r.policy.rules {
            for e in rule.allow.iter().chain(&rule.deny) {
                walk(e, &mut paths, &mut who, &mut methods, &mut ips);
            }
        }
        // Who a `to` entry or a grant picks: a change of upstream or of grant shows too.
        for c in r.policy.targets.iter().chain(&r.policy.grants) {
            if let Some(e) = &c.when {
                walk(e, &mut paths, &mut who, &mut methods, &mut ips);
            }
        }
    }
    // Members of several named groups at once: which `to` entry or grant comes first for
    // them is what a reordering changes.
    let mut groups: Vec<String> = who
        .iter()
        .flatten()
        .flat_map(|w| w.groups.iter().cloned())
        .collect();
    groups.sort();
    groups.dedup();
    let member = |gs: Vec<String>| {
        Some(Who {
            email: Some("member@probe.invalid".into()),
            verified: true,
            groups: gs,
            ..Who::default()
        })
    };
    if groups.len() > 1 {
        if groups.len() <= 8 {
            for (i, a) in groups.iter().enumerate() {
                for b in &groups[i + 1..] {
                    who.push(member(vec![a.clone(), b.clone()]));
                }
            }
        }
        who.push(member(groups.clone()));
    }
    paths.retain(|p| p.starts_with('/'));
    paths.sort();
    paths.dedup();
    let mut out = Vec::new();
    for h in &hosts {
        let tcp = h.starts_with("tcp+");
        for w in &who {
            if tcp {
                out.extend(Request::new(h, "CONNECT", None, w.clone()));
                for ip in ips.iter().skip(1) {
                    out.extend(Request::new(h, "CONNECT", *ip, w.clone()));
                }
                continue;
            }
            for p in &paths {
                out.extend(Request::new(&format!("{h}{p}"), "GET", None, w.clone()));
            }
            for m in methods.iter().skip(1) {
                out.extend(Request::new(&format!("{h}/"), m.as_str(), None, w.clone()));
            }
            for ip in ips.iter().skip(1) {
                out.extend(Request::new(&format!("{h}/"), "GET", *ip, w.clone()));
            }
        }
    }
    out
}
