//! Who may reach what: the compiled per-route policy and its one pure evaluator.
//!
//! A route's YAML (`policy`, `allowed_*`, `allow_*`) is compiled once by [`parse`] into a
//! [`Policy`]; every request is decided by [`eval::evaluate`], which `portcullis explain` calls
//! too. Forwarding code accepts only a [`Permitted`], which nothing outside this module can make,
//! so a request that was not decided cannot reach an upstream.

pub mod eval;
pub mod identity;
pub mod parse;

pub use eval::{authorize, evaluate, Decision, Facts, Outcome, Refusal};
pub use identity::{ClaimValue, Identity};

use ipnet::IpNet;
use std::sync::Arc;

use crate::config::error::Pos;

/// The compiled policy of one route.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// The route's `to` entries, in order: the first whose condition holds picks the upstream.
    /// Empty for a plain `to` (its one list of upstreams serves everyone).
    pub targets: Vec<Choice>,
    /// The route's `grants`, in order: the first whose condition holds sets its headers.
    pub grants: Vec<Choice>,
    /// True when some allow clause refers to who the user is: an anonymous request that no
    /// rule lets through is then asked to sign in rather than refused.
    pub wants_identity: bool,
    /// True when any rule mentions who the user is: only then is the session read.
    pub uses_identity: bool,
}

impl Policy {
    /// A policy over these rules; whether it wants an identity is derived from them.
    pub fn new(rules: Vec<Rule>) -> Policy {
        let wants_identity = rules
            .iter()
            .any(|r| r.allow.is_some() && r.allow_needs_identity);
        let uses_identity = wants_identity
            || rules
                .iter()
                .any(|r| r.deny.as_ref().is_some_and(Expr::needs_identity));
        Policy {
            rules,
            targets: Vec::new(),
            grants: Vec::new(),
            wants_identity,
            uses_identity,
        }
    }

    /// With the route's `to` entries and grants: the session is then read when any of them
    /// mentions who the user is, and an anonymous request that only a signed-in user could
    /// be given an upstream for is asked to sign in.
    pub fn with_choices(mut self, targets: Vec<Choice>, grants: Vec<Choice>) -> Policy {
        let chooses_by_identity = targets.iter().chain(&grants).any(|c| c.needs_identity);
        self.uses_identity |= chooses_by_identity;
        self.targets = targets;
        self.grants = grants;
        self
    }
}

/// A `when` of a `to` entry or a grant, with where it is written. `None` is the entry without
/// `when`: everyone.
#[derive(Clone, Debug)]
pub struct Choice {
    pub when: Option<Expr>,
    pub pos: Pos,
    /// The condition mentions who the user is: it never holds for an anonymous request.
    pub needs_identity: bool,
}

impl Choice {
    pub fn new(when: Option<Expr>, pos: Pos) -> Choice {
        Choice {
            needs_identity: when.as_ref().is_some_and(Expr::needs_identity),
            when,
            pos,
        }
    }
}

impl Rule {
    pub fn new(allow: Option<Expr>, deny: Option<Expr>, origin: RuleOrigin) -> Rule {
        Rule {
            allow_needs_identity: allow.as_ref().is_some_and(Expr::needs_identity),
            allow,
            deny,
            origin,
        }
    }
}

impl Expr {
    /// Does this expression mention who the user is anywhere?
    pub fn needs_identity(&self) -> bool {
        match self {
            Expr::Always => false,
            Expr::And(v) | Expr::Or(v) | Expr::Not(v) | Expr::Nor(v) => {
                v.iter().any(Expr::needs_identity)
            }
            Expr::Crit(c) => c.needs_identity(),
        }
    }
}

/// One rule: `allow` and/or `deny`, with where it was written. Build it with [`Rule::new`].
#[derive(Clone, Debug)]
pub struct Rule {
    pub allow: Option<Expr>,
    pub deny: Option<Expr>,
    pub origin: RuleOrigin,
    /// An allow clause that mentions identity criteria never matches an anonymous request.
    pub allow_needs_identity: bool,
}

/// Where a rule came from, for `explain` and the logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleOrigin {
    /// The key that produced it: `policy`, `allowed_users`, `allow_public_unauthenticated_access`...
    pub key: &'static str,
    pub pos: Pos,
}

/// A logical expression over criteria.
#[derive(Clone, Debug)]
pub enum Expr {
    /// Every request (`allow_public_unauthenticated_access`).
    Always,
    And(Vec<Expr>),
    Or(Vec<Expr>),
    /// Not (all of): Pomerium's `not`.
    Not(Vec<Expr>),
    /// None of: Pomerium's `nor`.
    Nor(Vec<Expr>),
    Crit(Criterion),
}

/// One criterion, with its matcher compiled.
#[derive(Clone, Debug)]
pub enum Criterion {
    AuthenticatedUser,
    /// Compared lower-case; never satisfied by an unverified email.
    Email(StrMatch),
    Domain(StrMatch),
    User(StrMatch),
    Groups(ListMatch),
    Claim(Arc<str>, ClaimMatch),
    HttpMethod(Vec<http::Method>),
    HttpPath(StrMatch),
    SourceIp(Vec<IpNet>),
}

impl Criterion {
    pub fn needs_identity(&self) -> bool {
        !matches!(
            self,
            Criterion::HttpMethod(_) | Criterion::HttpPath(_) | Criterion::SourceIp(_)
        )
    }
}

/// String matchers; several in one criterion must all hold.
#[derive(Clone, Debug, Default)]
pub struct StrMatch {
    pub is: Option<Box<str>>,
    pub starts_with: Option<Box<str>>,
    pub ends_with: Option<Box<str>>,
    pub contains: Option<Box<str>>,
    pub one_of: Option<Vec<Box<str>>>,
}

/// List matcher: `has`.
#[derive(Clone, Debug)]
pub struct ListMatch {
    pub has: Box<str>,
}

/// A claim is matched as a string (string matchers) or as a list (`has`).
#[derive(Clone, Debug)]
pub enum ClaimMatch {
    Str(StrMatch),
    Has(Box<str>),
}
