//! Checks of single values, each failing with a [`ConfigError`] that names the variable.
//! A leaf: `access` and `limits` parse their own settings with these.

use std::time::Duration;

/// A configuration value that cannot be used. Displays as one line:
/// `DISTRAFT_X: "value" problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {value:?} {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub problem: String,
}

impl ConfigError {
    pub(crate) fn new(var: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            var,
            value: value.to_string(),
            problem: problem.into(),
        }
    }
}

pub(super) fn parse_host(var: &'static str, raw: &str) -> Result<String, ConfigError> {
    let host = raw.trim().to_lowercase();
    if host.is_empty() {
        return Err(ConfigError::new(var, raw, "is empty"));
    }
    Ok(host)
}

pub(super) fn parse_port(var: &'static str, raw: &str) -> Result<u16, ConfigError> {
    match raw.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(ConfigError::new(var, raw, "is not a port number (1-65535)")),
    }
}

pub(super) fn parse_f64(var: &'static str, raw: &str) -> Result<f64, ConfigError> {
    match raw.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(ConfigError::new(var, raw, "is not a number")),
    }
}

/// A positive duration in (possibly fractional) seconds, as the original's floats.
pub(crate) fn parse_seconds(var: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let seconds = parse_f64(var, raw)?;
    if seconds <= 0.0 {
        return Err(ConfigError::new(
            var,
            raw,
            "must be a positive number of seconds",
        ));
    }
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ConfigError::new(var, raw, "is not a usable number of seconds"))
}

pub(crate) fn parse_positive(var: &'static str, raw: &str) -> Result<u64, ConfigError> {
    match raw.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError::new(var, raw, "is not a positive integer")),
    }
}

/// The original wrote booleans as `True`/`False`; accept the usual spellings.
pub(super) fn parse_bool(var: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_lowercase().as_str() {
        "true" | "t" | "1" | "yes" | "y" | "on" => Ok(true),
        "false" | "f" | "0" | "no" | "n" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            var,
            raw,
            "is not a boolean (true/false, 1/0, yes/no)",
        )),
    }
}

/// How log lines are written (DISTRAFT_LOG_FORMAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message, fields).
    Json,
}

impl LogFormat {
    pub(super) fn parse(raw: &str) -> Result<LogFormat, ConfigError> {
        match raw.trim().to_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(ConfigError::new(
                "DISTRAFT_LOG_FORMAT",
                raw,
                "is not a log format (text, json)",
            )),
        }
    }
}

/// Maps the original's Python level names onto a tracing filter; anything else must be
/// a valid tracing filter directive (for example `distraft=debug,tonic=info`).
pub(super) fn parse_log_level(raw: &str) -> Result<String, ConfigError> {
    let level = match raw.trim().to_lowercase().as_str() {
        "critical" | "fatal" | "error" => "error",
        "warning" | "warn" => "warn",
        "info" => "info",
        "debug" => "debug",
        "trace" => "trace",
        _ => {
            // Only `target=level` lists: a lone word would be taken as a target name.
            let directive = raw.trim();
            return match tracing_subscriber::EnvFilter::try_new(directive) {
                Ok(_) if directive.contains('=') => Ok(directive.to_string()),
                _ => Err(ConfigError::new(
                    "DISTRAFT_LOG_LEVEL",
                    raw,
                    "is not a log level (DEBUG, INFO, WARNING, ERROR)",
                )),
            };
        }
    };
    Ok(level.to_string())
}
