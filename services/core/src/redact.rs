//! Making values and errors fit for messages and logs.

/// A value fit for printing: a URL's password becomes `***`, a string that looks like a URL but
/// does not parse becomes `<invalid url>` (it may hold a password), anything else is unchanged.
pub fn redact_url_password(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => s.to_string(),
        Err(_) if s.contains("://") => "<invalid url>".to_string(),
        Err(_) => s.to_string(),
    }
}

/// The error and every cause below it, joined with `: `.
pub fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted_and_other_values_kept() {
        assert_eq!(redact_url_password("amqp://admin:admin@h:5672/%2f"), "amqp://admin:***@h:5672/%2f");
        assert_eq!(redact_url_password("postgres://u:p@h:1/db"), "postgres://u:***@h:1/db");
        assert_eq!(redact_url_password("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url_password("postgres://u:p@h:notaport/db"), "<invalid url>");
        assert_eq!(redact_url_password("nginx/ssl/self-signed.crt"), "nginx/ssl/self-signed.crt");
    }

    #[test]
    fn broker_urls_in_messages_hide_the_password() {
        assert_eq!(
            redact_url_password("amqp://admin:secret@127.0.0.1:5672/%2f"),
            "amqp://admin:***@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn a_cause_chain_joins_every_source() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("reading the file")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(cause_chain(&e), "reading the file: disk on fire");
    }
}
