//! Endpoint addresses: validation up front, so a typo fails at `connect`
//! instead of as a transport error on the first call.

use tonic::transport::Endpoint;

use crate::Error;

/// Host names longer than this are not valid DNS names (RFC 1035).
const MAX_HOST_BYTES: usize = 253;

/// Checks one address and returns it in the form the client stores and
/// compares: `host:port`, without a scheme. A leading `http://` is accepted
/// and dropped; other schemes are rejected because the client speaks
/// plaintext HTTP/2 only.
pub(crate) fn normalize_endpoint(raw: &str) -> Result<String, Error> {
    let invalid = |why: &str| Error::InvalidEndpoint(format!("{raw:?}: {why}"));
    let trimmed = raw.trim();
    let without_scheme = match trimmed.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) => {
            return Err(invalid(&format!(
                "scheme {scheme:?} is not supported; give host:port"
            )))
        }
        None => trimmed,
    };
    let addr = without_scheme.strip_suffix('/').unwrap_or(without_scheme);
    if addr.is_empty() {
        return Err(invalid("empty address; give host:port"));
    }
    let (host, port) = split_host_port(addr).ok_or_else(|| invalid("expected host:port"))?;
    if host.is_empty() || host.len() > MAX_HOST_BYTES {
        return Err(invalid("missing or overlong host"));
    }
    let host_chars_ok = if host.starts_with('[') {
        host.len() > 2
            && host[1..host.len() - 1]
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    } else {
        host.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    };
    if !host_chars_ok {
        return Err(invalid(
            "host contains characters not allowed in a host name",
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => {}
        _ => return Err(invalid("port must be a number from 1 to 65535")),
    }
    let normalized = format!("{host}:{port}");
    // The last word belongs to the URI parser tonic itself uses.
    Endpoint::from_shared(format!("http://{normalized}"))
        .map_err(|error| invalid(&error.to_string()))?;
    Ok(normalized)
}

/// Validates a whole endpoint list: at least one address, each valid,
/// duplicates dropped (keeping the first occurrence's position).
pub(crate) fn normalize_endpoints<I, S>(endpoints: I) -> Result<Vec<String>, Error>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut normalized: Vec<String> = Vec::new();
    for raw in endpoints {
        let addr = normalize_endpoint(&raw.into())?;
        if !normalized.contains(&addr) {
            normalized.push(addr);
        }
    }
    if normalized.is_empty() {
        return Err(Error::InvalidEndpoint(
            "no endpoints given; need at least one host:port".to_string(),
        ));
    }
    Ok(normalized)
}

/// Splits `host:port` or `[v6]:port`. An unbracketed IPv6 address is
/// ambiguous and rejected.
fn split_host_port(addr: &str) -> Option<(&str, &str)> {
    if addr.starts_with('[') {
        let close = addr.find(']')?;
        let (host, rest) = addr.split_at(close + 1);
        let port = rest.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = addr.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_endpoints_are_normalized() {
        let cases = [
            ("127.0.0.11:7001", "127.0.0.11:7001"),
            (" 127.0.0.11:7001 ", "127.0.0.11:7001"),
            ("http://127.0.0.11:7001", "127.0.0.11:7001"),
            ("HTTP://node-1.example:7001/", "node-1.example:7001"),
            ("localhost:1", "localhost:1"),
            ("[::1]:7001", "[::1]:7001"),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize_endpoint(raw).as_deref(), Ok(expected), "{raw}");
        }
    }

    #[test]
    fn invalid_endpoints_are_rejected() {
        let cases = [
            "",
            "   ",
            "127.0.0.11",
            "127.0.0.11:",
            ":7001",
            "127.0.0.11:0",
            "127.0.0.11:65536",
            "127.0.0.11:port",
            "https://127.0.0.11:7001",
            "::1:7001",
            "[]:7001",
            "[::1]7001",
            "host name:7001",
            "host/path:7001",
            "127.0.0.11:7001/path",
            "höst:7001",
        ];
        for raw in cases {
            assert!(
                matches!(normalize_endpoint(raw), Err(Error::InvalidEndpoint(_))),
                "{raw:?} should be rejected"
            );
        }
    }

    #[test]
    fn endpoint_lists_must_be_non_empty_and_are_deduplicated() {
        assert!(matches!(
            normalize_endpoints(Vec::<String>::new()),
            Err(Error::InvalidEndpoint(_))
        ));
        assert_eq!(
            normalize_endpoints(["a:1", "b:2", "http://a:1"]),
            Ok(vec!["a:1".to_string(), "b:2".to_string()])
        );
        assert!(matches!(
            normalize_endpoints(["a:1", "bad"]),
            Err(Error::InvalidEndpoint(_))
        ));
    }
}
