//! A string that never prints: provider keys, the admin token, Stripe and SMTP
//! secrets. `Debug` and `Display` show `[redacted]`; only `expose()` reads it.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is sent to its one destination.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Expands `${NAME}` references from the environment. A missing variable is an
/// error naming it (never its value); `$$` is a literal `$`.
pub fn expand_env(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unclosed `${` in value".to_string())?;
            let name = &body[..end];
            let value =
                lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("sk-live-123");
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(secret.expose(), "sk-live-123");
    }

    #[test]
    fn expands_env_references() {
        let lookup = |name: &str| (name == "KEY").then(|| "v4lue".to_string());
        assert_eq!(expand_env("${KEY}", lookup).unwrap(), "v4lue");
        assert_eq!(expand_env("a-${KEY}-b", lookup).unwrap(), "a-v4lue-b");
        assert_eq!(expand_env("cost $$5", lookup).unwrap(), "cost $5");
        assert_eq!(expand_env("plain", lookup).unwrap(), "plain");
        let missing = expand_env("${NOPE}", lookup).unwrap_err();
        assert!(missing.contains("NOPE"));
        assert!(expand_env("${KEY", lookup).is_err());
    }
}
