//! `tests:`: the requests the config says what must be decided for, checked once the routes
//! are built (`runtime`).

use crate::config::error::Pos;
use crate::config::raw::{OneOrMany, RawConfig};
use crate::explain::{Answer, Case, Request, Who};
use crate::policy::ClaimValue;

use super::{pos, Ctx};

/// The config's test cases; each problem is an error at its field.
pub(super) fn cases(raw: &RawConfig, cx: &mut Ctx<'_>) -> Vec<Case> {
    let mut out = Vec::new();
    for t in raw.tests.iter().flatten() {
        let at = pos(t);
        let t = &t.value;
        let Some(expect) = Answer::parse(&t.expect.value) else {
            cx.errs.at(
                pos(&t.expect),
                format!("expect: `{}` (use allow, deny or sign_in)", t.expect.value),
            );
            continue;
        };
        let ip = match &t.ip {
            None => None,
            Some(ip) => match ip.value.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    cx.errs
                        .at(pos(ip), format!("ip: `{}` is not an IP address", ip.value));
                    continue;
                }
            },
        };
        let signed_in = t.email.is_some() || t.user.is_some();
        if !signed_in && (t.groups.is_some() || t.claims.is_some()) {
            cx.errs.at(
                at,
                "groups and claims belong to a signed-in user: give an email or a user too",
            );
            continue;
        }
        let who = signed_in.then(|| Who {
            email: t.email.as_ref().map(|e| e.value.clone()),
            verified: true,
            user: t.user.as_ref().map(|u| u.value.clone()),
            groups: t
                .groups
                .as_ref()
                .map(|g| g.value.clone())
                .unwrap_or_default(),
            claims: t
                .claims
                .as_ref()
                .map(|c| {
                    c.value
                        .iter()
                        .map(|(k, v)| {
                            let v = match v {
                                OneOrMany::One(s) => ClaimValue::Str(s.clone()),
                                OneOrMany::Many(l) => ClaimValue::List(l.clone()),
                            };
                            (k.clone(), v)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        });
        let method = t.method.as_ref().map_or("GET", |m| m.value.as_str());
        match Request::new(&t.url.value, method, ip, who) {
            Ok(request) => out.push(Case {
                name: t.name.as_ref().map(|n| n.value.clone()),
                pos: at,
                request,
                expect,
            }),
            Err(e) => {
                let p: Pos = if e.contains("HTTP method") {
                    t.method.as_ref().map_or(at, pos)
                } else if e.contains("email") {
                    t.email.as_ref().map_or(at, pos)
                } else {
                    pos(&t.url)
                };
                cx.errs.at(p, e);
            }
        }
    }
    out
}
