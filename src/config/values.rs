//! The typed values of settings that are more than a number.

use std::fmt;
use std::str::FromStr;

use http::HeaderValue;

/// What happens to the plaintext `originalContent` the stock client sends
/// beside each ciphertext (see docs/PROTOCOL.md, `send-message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OriginalContent {
    /// Echoed back to its author in that call's `message-sent` only.
    #[default]
    Echo,
    /// As `Echo`, and also kept for the author's own `messages-history`.
    Author,
    /// Never echoed or stored.
    Drop,
}

impl FromStr for OriginalContent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "echo" => Ok(Self::Echo),
            "author" => Ok(Self::Author),
            "drop" => Ok(Self::Drop),
            _ => Err("expected one of echo, author, drop".into()),
        }
    }
}

/// Origins allowed by CORS and by the Socket.IO handshake origin check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// `CLIENT_URL=*`: any origin (the request's origin is mirrored).
    Any,
    /// Exact origins, compared byte for byte with the `Origin` header.
    List(Vec<HeaderValue>),
}

impl AllowedOrigins {
    /// Parses a comma-separated list of origins, or `*`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Self::Any);
        }
        let mut list = Vec::new();
        for origin in s.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            // Browsers never send a trailing slash in `Origin`.
            let origin = origin.trim_end_matches('/');
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(format!("origin {origin:?} must start with http:// or https://"));
            }
            let value = HeaderValue::from_str(origin)
                .map_err(|_| format!("origin {origin:?} is not a valid header value"))?;
            list.push(value);
        }
        if list.is_empty() {
            return Err("expected `*` or at least one origin".into());
        }
        Ok(Self::List(list))
    }

    /// Whether a request carrying this `Origin` header may be served.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        match self {
            Self::Any => true,
            Self::List(list) => list.iter().any(|o| o == origin),
        }
    }
}

impl fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::List(list) => {
                let parts: Vec<&str> = list.iter().filter_map(|o| o.to_str().ok()).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected text or json".into()),
        }
    }
}
