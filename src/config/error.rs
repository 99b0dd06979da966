//! Configuration errors that say where: `file:line:col: message`.

use std::fmt;

/// A position in a configuration source (1-based line and column).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    /// The start of the file: where an error about the file as a whole (no `routes`, a YAML
    /// error the parser gives no place for) points.
    pub const START: Pos = Pos { line: 1, col: 1 };

    pub fn of(loc: &serde_saphyr::Location) -> Pos {
        Pos {
            line: u32::try_from(loc.line()).unwrap_or(0),
            col: u32::try_from(loc.column()).unwrap_or(0),
        }
    }
}

/// One configuration error. `source` is the file path, or `env PORTCULLIS_X` for an
/// environment override; a position of 0:0 means "the file as a whole".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub pos: Pos,
    pub msg: String,
}

impl ConfigError {
    pub fn new(source: &str, pos: Pos, msg: impl Into<String>) -> Self {
        ConfigError {
            source: source.to_string(),
            pos,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pos.line == 0 {
            write!(f, "{}: {}", self.source, self.msg)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.source, self.pos.line, self.pos.col, self.msg
            )
        }
    }
}

/// Every error found in one load; never empty.
#[derive(Clone, Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors while compiling, so one run reports all of them.
#[derive(Debug)]
pub struct Errors<'a> {
    pub source: &'a str,
    pub list: Vec<ConfigError>,
}

impl<'a> Errors<'a> {
    pub fn new(source: &'a str) -> Self {
        Errors {
            source,
            list: Vec::new(),
        }
    }

    pub fn at(&mut self, pos: Pos, msg: impl Into<String>) {
        self.list.push(ConfigError::new(self.source, pos, msg));
    }

    pub fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.list))
        }
    }
}

/// Turns a YAML parser error into a positioned config error.
pub fn from_yaml(source: &str, err: &serde_saphyr::Error) -> ConfigError {
    let pos = err
        .location()
        .map(|l| Pos::of(&l))
        .filter(|p| p.line > 0)
        .unwrap_or(Pos::START);
    let mut msg = err.without_snippet().to_string();
    // The parser appends " at line L, column C"; we print the position in front instead.
    if let Some(i) = msg.rfind(" at line ") {
        if msg[i..].contains(", column ") {
            msg.truncate(i);
        }
    }
    ConfigError::new(source, pos, msg)
}
