//! The health endpoint's setting. It is the root key `health_listen` of the
//! agent's config (a key of the whole agent since the first release, so
//! existing files keep loading); what it may hold is decided here.

/// Checks `health_listen`: empty (the endpoint is off) or `host:port` with
/// a port number, the host an IP address or a name (`localhost`). The
/// address is only bound at start, so a port in use is reported then.
pub fn validate_listen(listen: &str) -> Result<(), String> {
    if listen.is_empty() {
        return Ok(());
    }
    let Some((host, port)) = listen.rsplit_once(':') else {
        return Err(format!(
            "{listen:?} has no port (host:port, or \"\" for off)"
        ));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{listen:?}: the port must be 0..=65535"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = |h: &str| {
        !h.is_empty()
            && h.split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    };
    if host.parse::<std::net::IpAddr>().is_err() && !name(host) {
        return Err(format!(
            "{listen:?}: {host:?} is no IP address or host name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_listen;

    #[test]
    fn addresses_are_checked_before_the_agent_starts() {
        for ok in [
            "",
            "127.0.0.1:9750",
            "0.0.0.0:0",
            "[::1]:9750",
            "localhost:80",
            "board-7.lan:9750",
        ] {
            assert_eq!(validate_listen(ok), Ok(()), "{ok}");
        }
        for bad in [
            "9750",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:65536",
            "127.0.0.1:http",
            ":9750",
            "a b:1",
        ] {
            assert!(validate_listen(bad).is_err(), "{bad}");
        }
    }
}
