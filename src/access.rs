//! Who may use a node's client API: the API token (HTTP `Authorization: Bearer`, gRPC
//! metadata `authorization`), the origins whose web pages may call the HTTP gateway
//! (CORS), and the host names the gateway answers to (the DNS-rebinding guard).
//!
//! The checks themselves live here so that the HTTP gateway and the gRPC services
//! apply exactly the same rules; see docs/security.md for the threat model.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::config::cluster::Member;
use crate::config::parse::ConfigError;

/// The access settings as given on the command line or in the environment.
#[derive(Clone, clap::Args)]
pub struct AccessArgs {
    /// When set, every key route, /stop and /start over HTTP and the gRPC Kv service
    /// and Admin.Stop/Start require `Authorization: Bearer <token>`. Prefer
    /// DISTRAFT_API_TOKEN_FILE: the environment of a process is readable in /proc.
    #[arg(long, env = "DISTRAFT_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// A file holding the API token (surrounding whitespace ignored).
    #[arg(long, env = "DISTRAFT_API_TOKEN_FILE")]
    pub api_token_file: Option<String>,
    /// Origins whose web pages may call the HTTP API from a browser: `*` (every
    /// origin, the original's behaviour), a comma list of `scheme://host[:port]`, or
    /// `none`.
    #[arg(long, env = "DISTRAFT_CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,
    /// Host names the HTTP gateway answers to, besides localhost names, IP literals and
    /// the hosts named in the cluster configuration (comma list); `*` turns the Host
    /// check off.
    #[arg(long, env = "DISTRAFT_ALLOWED_HOSTS")]
    pub allowed_hosts: Option<String>,
}

/// Never print the token, even in a debug dump of the arguments.
impl std::fmt::Debug for AccessArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessArgs")
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("api_token_file", &self.api_token_file)
            .field("cors_origins", &self.cors_origins)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

/// The validated access settings of a node. The default is the quick start's: no
/// token, every origin, the default Host allowlist.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub token: Option<ApiToken>,
    pub cors: CorsOrigins,
    pub hosts: HostAllowlist,
}

impl Access {
    /// Validates the arguments; `members`, `own_hosts` are the host names this node's
    /// configuration names (they are allowed in the Host header).
    pub fn from_args(
        args: &AccessArgs,
        members: &[Member],
        own_hosts: &[&str],
    ) -> Result<Access, ConfigError> {
        let token = match (&args.api_token, &args.api_token_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "DISTRAFT_API_TOKEN_FILE",
                    args.api_token_file.as_deref().unwrap_or_default(),
                    "is set together with DISTRAFT_API_TOKEN: set only one",
                ))
            }
            (Some(token), None) => Some(ApiToken::parse("DISTRAFT_API_TOKEN", token, false)?),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path.trim()).map_err(|err| {
                    ConfigError::new(
                        "DISTRAFT_API_TOKEN_FILE",
                        path,
                        format!("cannot be read: {err}"),
                    )
                })?;
                Some(ApiToken::parse("DISTRAFT_API_TOKEN_FILE", &text, true)?)
            }
            (None, None) => None,
        };
        let cors = CorsOrigins::parse(&args.cors_origins)?;
        let mut named: Vec<&str> = own_hosts.to_vec();
        for member in members {
            named.push(&member.peer_host);
            named.push(&member.client_host);
        }
        let hosts = HostAllowlist::parse(args.allowed_hosts.as_deref(), &named)?;
        Ok(Access { token, cors, hosts })
    }

    /// Checks the `Authorization` header (or gRPC metadata) of a protected request.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), Denied> {
        if crate::plant::active(crate::plant::Plant::OpenApi) {
            return Ok(());
        }
        match &self.token {
            None => Ok(()),
            Some(token) => token.check(authorization),
        }
    }

    /// The `Authorization` value this node puts on requests it makes on a client's
    /// behalf (a write forwarded to the leader), if a token is set.
    pub fn bearer(&self) -> Option<String> {
        self.token.as_ref().map(ApiToken::bearer)
    }
}

/// The shared secret of the client API.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Why a protected request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No bearer credentials: HTTP 401, gRPC UNAUTHENTICATED.
    Missing,
    /// A bearer token that is not ours: HTTP 403, gRPC PERMISSION_DENIED.
    Wrong,
}

impl Denied {
    pub fn message(self) -> &'static str {
        match self {
            Denied::Missing => "this node requires an API token: Authorization: Bearer <token>",
            Denied::Wrong => "the API token is not valid",
        }
    }

    pub fn status(self) -> tonic::Status {
        match self {
            Denied::Missing => tonic::Status::unauthenticated(self.message()),
            Denied::Wrong => tonic::Status::permission_denied(self.message()),
        }
    }
}

impl ApiToken {
    /// A token is what fits in a header unchanged: visible ASCII, no spaces. A file's
    /// surrounding whitespace (its final newline) is not part of the token.
    fn parse(var: &'static str, raw: &str, trim: bool) -> Result<ApiToken, ConfigError> {
        let token = if trim { raw.trim() } else { raw };
        // Never echo the token in the error.
        let shown = if trim { "<file contents>" } else { "<token>" };
        if token.is_empty() {
            return Err(ConfigError::new(var, shown, "is empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                var,
                shown,
                "must be visible ASCII characters without spaces",
            ));
        }
        Ok(ApiToken(token.to_string()))
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// Compares in time independent of where the given token differs from ours, so
    /// that the token cannot be guessed byte by byte from response times.
    fn check(&self, authorization: Option<&[u8]>) -> Result<(), Denied> {
        let given = authorization
            .and_then(bearer_token)
            .ok_or(Denied::Missing)?;
        if constant_time_eq(given, self.0.as_bytes()) {
            Ok(())
        } else {
            Err(Denied::Wrong)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive), or `None` for another scheme.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    let scheme = value.get(..SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = value.get(SCHEME.len()..)?.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Equality whose time depends only on the lengths: every byte is looked at.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(given.len() != expected.len());
    for (i, &byte) in expected.iter().enumerate() {
        difference |= byte ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(difference) == 0
}

/// The origins whose pages may call the HTTP API from a browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Every origin (the default, as the original): any web page open in a browser on
    /// a machine that reaches the gateway may call it.
    #[default]
    Any,
    /// Only these origins (`scheme://host[:port]`, lower case); none if empty.
    List(Vec<String>),
}

impl CorsOrigins {
    fn parse(raw: &str) -> Result<CorsOrigins, ConfigError> {
        const VAR: &str = "DISTRAFT_CORS_ORIGINS";
        let text = raw.trim();
        if text == "*" {
            return Ok(CorsOrigins::Any);
        }
        if text.is_empty() || text.eq_ignore_ascii_case("none") {
            return Ok(CorsOrigins::List(Vec::new()));
        }
        let mut origins = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let origin = item.trim_end_matches('/').to_lowercase();
            if !is_origin(&origin) {
                return Err(ConfigError::new(
                    VAR,
                    item,
                    "is not an origin (http://host[:port] or https://host[:port]), `*` or `none`",
                ));
            }
            origins.push(origin);
        }
        Ok(CorsOrigins::List(origins))
    }
}

/// `http(s)://host[:port]` as a browser sends it in `Origin`: a name or an IPv4
/// address, or a bracketed IPv6 address, and an optional port.
fn is_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    match split_host_port(rest) {
        Some((host, _port)) => {
            host.parse::<IpAddr>().is_ok()
                || (!host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        }
        None => false,
    }
}

/// Splits `host[:port]` or `[v6]:port`; `None` if the port is not a number.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((authority, None)),
    }
}

/// The names the HTTP gateway answers to in the `Host` header. A web page from
/// `evil.example` whose DNS entry is switched to 127.0.0.1 (DNS rebinding) makes the
/// browser send `Host: evil.example`: refused unless that name is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAllowlist {
    /// No check (`DISTRAFT_ALLOWED_HOSTS=*`).
    Any,
    /// Localhost names and IP literals, plus these names (lower case).
    Names(BTreeSet<String>),
}

impl Default for HostAllowlist {
    fn default() -> Self {
        HostAllowlist::Names(BTreeSet::new())
    }
}

impl HostAllowlist {
    fn parse(extra: Option<&str>, named: &[&str]) -> Result<HostAllowlist, ConfigError> {
        let extra = extra.map(str::trim).unwrap_or_default();
        if extra == "*" {
            return Ok(HostAllowlist::Any);
        }
        let mut names: BTreeSet<String> = named.iter().map(|h| normalize_host(h)).collect();
        for item in extra.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item.contains(['/', ' ', '*']) {
                return Err(ConfigError::new(
                    "DISTRAFT_ALLOWED_HOSTS",
                    item,
                    "is not a host name (a comma list of names, or `*`)",
                ));
            }
            names.insert(normalize_host(item));
        }
        Ok(HostAllowlist::Names(names))
    }

    /// Whether a request with this `Host` (`host[:port]`) may be answered. A request
    /// without one (HTTP/1.0) cannot come from a browser and is allowed.
    pub fn allows(&self, host_header: Option<&str>) -> bool {
        if crate::plant::active(crate::plant::Plant::OpenApi) {
            return true;
        }
        let names = match self {
            HostAllowlist::Any => return true,
            HostAllowlist::Names(names) => names,
        };
        let Some(authority) = host_header else {
            return true;
        };
        let Some((host, _port)) = split_host_port(authority.trim()) else {
            return false;
        };
        let host = normalize_host(host);
        host.parse::<IpAddr>().is_ok()
            || host == "localhost"
            || host.ends_with(".localhost")
            || names.contains(&host)
    }
}

/// Lower case, without the trailing dot of a fully qualified name or IPv6 brackets.
fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(token: Option<&str>) -> Access {
        Access {
            token: token.map(|t| ApiToken(t.to_string())),
            ..Access::default()
        }
    }

    #[test]
    fn tokens_are_checked_as_bearer_credentials() {
        let open = access(None);
        assert_eq!(open.authorize(None), Ok(()));
        assert_eq!(open.bearer(), None);

        let locked = access(Some("s3cret"));
        assert_eq!(locked.authorize(Some(b"Bearer s3cret")), Ok(()));
        assert_eq!(locked.authorize(Some(b"bearer  s3cret ")), Ok(()));
        assert_eq!(locked.authorize(None), Err(Denied::Missing));
        assert_eq!(
            locked.authorize(Some(b"Basic czNjcmV0")),
            Err(Denied::Missing)
        );
        assert_eq!(locked.authorize(Some(b"Bearer ")), Err(Denied::Missing));
        assert_eq!(locked.authorize(Some(b"s3cret")), Err(Denied::Missing));
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"Bearer S3CRET",
            b"Bearer x",
        ] {
            assert_eq!(
                locked.authorize(Some(wrong)),
                Err(Denied::Wrong),
                "{wrong:?}"
            );
        }
        assert_eq!(locked.bearer().as_deref(), Some("Bearer s3cret"));
        assert!(!format!("{locked:?}").contains("s3cret"));
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"\0", b""));
    }

    fn args(
        token: Option<&str>,
        file: Option<&str>,
        cors: &str,
        hosts: Option<&str>,
    ) -> AccessArgs {
        AccessArgs {
            api_token: token.map(String::from),
            api_token_file: file.map(String::from),
            cors_origins: cors.to_string(),
            allowed_hosts: hosts.map(String::from),
        }
    }

    #[test]
    fn settings_are_validated_without_echoing_the_token() {
        let ok = Access::from_args(&args(Some("t0k"), None, "*", None), &[], &[]).unwrap();
        assert_eq!(ok.token, Some(ApiToken("t0k".into())));
        for bad in ["", "two words", "tab\there", "é"] {
            let err = Access::from_args(&args(Some(bad), None, "*", None), &[], &[]).unwrap_err();
            assert_eq!(err.var, "DISTRAFT_API_TOKEN");
            assert!(!err.to_string().contains(bad) || bad.is_empty(), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let path = file.to_str().unwrap();
        let from_file = Access::from_args(&args(None, Some(path), "*", None), &[], &[]).unwrap();
        assert_eq!(from_file.token, Some(ApiToken("from-a-file".into())));
        let both = Access::from_args(&args(Some("x"), Some(path), "*", None), &[], &[]);
        assert_eq!(both.unwrap_err().var, "DISTRAFT_API_TOKEN_FILE");
        let missing = dir.path().join("missing");
        let missing = args(None, Some(missing.to_str().unwrap()), "*", None);
        assert!(Access::from_args(&missing, &[], &[]).is_err());
    }

    #[test]
    fn cors_origins_parse() {
        assert_eq!(CorsOrigins::parse(" * ").unwrap(), CorsOrigins::Any);
        assert_eq!(
            CorsOrigins::parse("none").unwrap(),
            CorsOrigins::List(vec![])
        );
        assert_eq!(
            CorsOrigins::parse("http://Viewer.example:8080/, https://[::1]:3000,https://a-b.c")
                .unwrap(),
            CorsOrigins::List(vec![
                "http://viewer.example:8080".into(),
                "https://[::1]:3000".into(),
                "https://a-b.c".into()
            ])
        );
        for bad in [
            "viewer.example",
            "ftp://x",
            "http://",
            "http://x:y",
            "http://x/path",
            "*,http://x",
        ] {
            assert!(CorsOrigins::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_host_allowlist_refuses_rebound_names() {
        let hosts =
            HostAllowlist::parse(Some("kv.example, Other.Example."), &["node1", "127.0.0.1"])
                .unwrap();
        for allowed in [
            None,
            Some("localhost:5000"),
            Some("LOCALHOST"),
            Some("app.localhost"),
            Some("127.0.0.1:5000"),
            Some("10.1.2.3"),
            Some("[::1]:5000"),
            Some("node1:5001"),
            Some("kv.example"),
            Some("other.example.:80"),
        ] {
            assert!(hosts.allows(allowed), "{allowed:?}");
        }
        for refused in [
            Some("evil.example"),
            Some("evil.example:5000"),
            Some("localhost.evil.example"),
            Some("node1.evil.example"),
            Some("127.0.0.1.evil.example"),
            Some("node1:notaport"),
            Some(""),
        ] {
            assert!(!hosts.allows(refused), "{refused:?}");
        }
        assert!(HostAllowlist::parse(Some("*"), &[])
            .unwrap()
            .allows(Some("evil.example")));
        assert!(HostAllowlist::parse(Some("a/b"), &[]).is_err());
    }
}
