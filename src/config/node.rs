//! A YAML tree that keeps the position of every node, for the parts of the config whose
//! keys are not fixed in advance (policies: `claim/NAME`, nested operators).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

use super::error::Pos;

#[derive(Clone, Debug)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Clone, Debug)]
pub enum NodeKind {
    /// Key/value pairs in file order, each key with its own position.
    Map(Vec<(String, Pos, Node)>),
    Seq(Vec<Node>),
    /// A string scalar.
    Str(String),
    /// A scalar YAML reads as a number (`10`, `0x10`, `1.10`), as the parser gave it back:
    /// not always as written (`0x10` is `16`), so where the text matters it must be quoted.
    Num(String),
    Bool(bool),
    Null,
}

impl Node {
    pub fn describe(&self) -> &'static str {
        match self.kind {
            NodeKind::Map(_) => "a mapping",
            NodeKind::Seq(_) => "a list",
            NodeKind::Str(_) => "a string",
            NodeKind::Num(_) => "a number",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Null => "nothing",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Spanned<NodeKind> = Spanned::deserialize(d)?;
        Ok(Node {
            pos: Pos::of(&s.referenced),
            kind: s.value,
        })
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = NodeKind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeKind, E> {
        Ok(NodeKind::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<NodeKind, E> {
        Ok(NodeKind::Str(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<NodeKind, E> {
        Ok(NodeKind::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NodeKind, E> {
        Ok(NodeKind::Num(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeKind, E> {
        Ok(NodeKind::Num(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<NodeKind, E> {
        Ok(NodeKind::Num(v.to_string()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<NodeKind, E> {
        Ok(NodeKind::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<NodeKind, E> {
        Ok(NodeKind::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<NodeKind, A::Error> {
        let mut v = Vec::new();
        while let Some(n) = a.next_element::<Node>()? {
            v.push(n);
        }
        Ok(NodeKind::Seq(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<NodeKind, A::Error> {
        let mut v: Vec<(String, Pos, Node)> = Vec::new();
        while let Some(k) = a.next_key::<Spanned<String>>()? {
            let n = a.next_value::<Node>()?;
            v.push((k.value, Pos::of(&k.referenced), n));
        }
        Ok(NodeKind::Map(v))
    }
}

impl<'de> Deserialize<'de> for NodeKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}
