//! The failure of an engine (Redis, etcd, Kafka, …) as the store, registry and
//! queue seams report it: what kind of failure, which engine, what was being done,
//! and the engine's own error as [`std::error::Error::source`]. It reads, for
//! logs, `<engine> <seam> <kind>: <what>: <cause>`, e.g.
//! `redis store unavailable: reading routes: connection refused`.

use std::error::Error;
use std::fmt;

/// The kinds of failure of one seam.
pub trait Kind: Copy + fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// The seam's name in messages: `store`, `registry`, `queue`.
    const SEAM: &'static str;
}

/// A failed engine operation.
#[derive(Debug)]
pub struct Failure<K> {
    kind: K,
    engine: &'static str,
    context: String,
    source: Option<Box<dyn Error + Send + Sync>>,
}

impl<K: Kind> Failure<K> {
    /// `engine` (empty when none is known) failed with `kind` while doing
    /// `context`.
    pub fn new(kind: K, engine: &'static str, context: impl Into<String>) -> Failure<K> {
        Failure {
            kind,
            engine,
            context: context.into(),
            source: None,
        }
    }

    /// The same failure, caused by `source` (the engine's or client's error).
    pub fn caused_by(mut self, source: impl Into<Box<dyn Error + Send + Sync>>) -> Failure<K> {
        self.source = Some(source.into());
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> K {
        self.kind
    }

    /// The engine that failed (empty when none is known).
    pub fn engine(&self) -> &'static str {
        self.engine
    }
}

impl<K: Kind> fmt::Display for Failure<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.engine.is_empty() {
            write!(f, "{} ", self.engine)?;
        }
        write!(f, "{} {}", K::SEAM, self.kind)?;
        if !self.context.is_empty() {
            write!(f, ": {}", self.context)?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl<K: Kind> Error for Failure<K> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Down;

    impl fmt::Display for Down {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("unavailable")
        }
    }

    impl Kind for Down {
        const SEAM: &'static str = "store";
    }

    #[test]
    fn reads_engine_seam_kind_context_and_cause() {
        let cause = std::io::Error::other("connection refused");
        let e = Failure::new(Down, "redis", "reading routes").caused_by(cause);
        assert_eq!(
            e.to_string(),
            "redis store unavailable: reading routes: connection refused"
        );
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("connection refused")
        );
        assert_eq!((e.kind(), e.engine()), (Down, "redis"));
        assert_eq!(Failure::new(Down, "", "").to_string(), "store unavailable");
    }
}
