//! The decision table: what a request gets for the policy's answer, as one short ordered
//! function (Pomerium's `handleResult`). Only an allow yields the [`Permitted`] value that
//! forwarding takes.

use http::{header, Method, Request};

use super::error::ProxyError;
use crate::policy::eval::Permitted;
use crate::policy::Refusal;

/// What the request was, as far as the table cares.
#[derive(Clone, Copy, Debug)]
pub struct Asked {
    /// A top-level browser navigation ([`is_navigation`]) that is not a WebSocket upgrade.
    pub navigation: bool,
    /// Sign-in is set up (an IdP is configured).
    pub sign_in: bool,
}

/// Where the request goes next.
#[derive(Debug)]
pub enum Next {
    /// To the upstream.
    Forward(Permitted),
    /// To the IdP, coming back to the same path afterwards.
    SignIn,
    /// A page: 401 for anything that cannot follow a sign-in redirect, 403 for a refused user.
    Refuse(ProxyError),
}

impl Next {
    /// The access log's `decision`.
    pub fn label(&self) -> &'static str {
        match self {
            Next::Forward(_) => "allow",
            Next::SignIn | Next::Refuse(ProxyError::Unauthenticated) => "unauthenticated",
            Next::Refuse(_) => "deny",
        }
    }
}

/// The table. An anonymous request a rule could let in after a sign-in is sent to sign in
/// when it is a browser navigation and an IdP is set up; anything else without a session
/// (fetch, XHR, a WebSocket upgrade, another method) gets 401. A refused user gets 403 naming
/// who is signed in.
pub fn decide(verdict: Result<Permitted, Refusal>, asked: Asked) -> Next {
    match verdict {
        Ok(p) => Next::Forward(p),
        Err(Refusal::Unauthenticated) if asked.navigation && asked.sign_in => Next::SignIn,
        Err(Refusal::Unauthenticated) => Next::Refuse(ProxyError::Unauthenticated),
        Err(Refusal::Denied {
            identity, reason, ..
        }) => Next::Refuse(ProxyError::Forbidden {
            who: who(identity),
            reason: reason.to_string(),
        }),
        Err(Refusal::Unassigned { identity, .. }) => {
            Next::Refuse(ProxyError::NoUpstream { who: who(identity) })
        }
    }
}

/// The user a refusal page names: the email, else the subject.
fn who(identity: Option<std::sync::Arc<crate::policy::Identity>>) -> Option<String> {
    identity.map(|i| i.email.clone().unwrap_or_else(|| i.sub.clone()))
}

/// A top-level browser navigation (which is sent to sign in rather than given a 401): a GET
/// or HEAD accepting HTML, not marked by the browser as anything but a navigation.
pub fn is_navigation<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && h.get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
        && h.get("sec-fetch-mode").is_none_or(|m| m == "navigate")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{authorize, Facts, Identity};
    use std::sync::Arc;

    fn denied() -> Refusal {
        Refusal::Denied {
            identity: Some(Arc::new(Identity {
                sub: "u1".into(),
                email: Some("a@b.test".into()),
                ..Default::default()
            })),
            rule: None,
            reason: "no rule allows",
        }
    }

    /// Let in, but no `to` entry picks the user.
    fn unassigned() -> Refusal {
        match denied() {
            Refusal::Denied { identity, .. } => Refusal::Unassigned {
                identity,
                rule: None,
            },
            r => r,
        }
    }

    /// The table is part of the contract.
    #[test]
    fn the_table_is_pinned() {
        let asked = |navigation, sign_in| Asked {
            navigation,
            sign_in,
        };
        let cases = [
            (Err(Refusal::Unauthenticated), asked(true, true), "sign in"),
            (Err(Refusal::Unauthenticated), asked(false, true), "401"),
            (Err(Refusal::Unauthenticated), asked(true, false), "401"),
            (Err(denied()), asked(true, true), "403 a@b.test"),
            (Err(denied()), asked(false, false), "403 a@b.test"),
            (
                Err(unassigned()),
                asked(true, true),
                "403 no upstream a@b.test",
            ),
        ];
        for (verdict, a, want) in cases {
            let got = match decide(verdict, a) {
                Next::Forward(_) => "forward".to_string(),
                Next::SignIn => "sign in".to_string(),
                Next::Refuse(ProxyError::Unauthenticated) => "401".to_string(),
                Next::Refuse(ProxyError::Forbidden { who, .. }) => {
                    format!("403 {}", who.unwrap_or_default())
                }
                Next::Refuse(ProxyError::NoUpstream { who }) => {
                    format!("403 no upstream {}", who.unwrap_or_default())
                }
                Next::Refuse(e) => format!("{e:?}"),
            };
            assert_eq!(got, want, "{a:?}");
        }
        // An allow is forwarded whatever the request was.
        let public = crate::config::first_policy(
            "insecure_server: true\nroutes:\n  - from: http://a\n    to: http://b\n    allow_public_unauthenticated_access: true\n",
        );
        let facts = Facts {
            method: &Method::GET,
            path: "/",
            ip: None,
        };
        for a in [asked(true, true), asked(false, false)] {
            let next = decide(authorize(&public, None, &facts), a);
            assert!(matches!(next, Next::Forward(_)), "{a:?}");
            assert_eq!(next.label(), "allow");
        }
    }

    #[test]
    fn a_navigation_is_a_get_or_head_for_html_not_marked_otherwise() {
        let req = |m: Method, accept: &str, mode: Option<&str>| {
            let mut b = Request::builder()
                .method(m)
                .uri("/")
                .header("accept", accept);
            if let Some(mode) = mode {
                b = b.header("sec-fetch-mode", mode);
            }
            b.body(()).unwrap()
        };
        assert!(is_navigation(&req(Method::GET, "text/html,*/*", None)));
        assert!(is_navigation(&req(
            Method::HEAD,
            "text/html",
            Some("navigate")
        )));
        assert!(!is_navigation(&req(Method::GET, "text/html", Some("cors"))));
        assert!(!is_navigation(&req(Method::GET, "application/json", None)));
        assert!(!is_navigation(&req(Method::POST, "text/html", None)));
    }
}
