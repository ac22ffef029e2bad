//! Input rules and password hashing: email and name validation, the password policy, and
//! argon2id with the OWASP-recommended parameters (19 MiB, 2 iterations, 1 lane).

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Algorithm, Argon2, Params, Version,
};
use mfe_kit::ApiError;

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(19 * 1024, 2, 1, None).expect("valid argon2 params"))
}

/// Hashes `password` into a PHC string. CPU-heavy: call from `spawn_blocking`.
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(hasher().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// Whether `password` matches the PHC string `hash` (parameters are read from the hash, so
/// hashes made with other argon2 settings still verify).
pub fn verify(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => hasher().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A valid hash of a password no one knows, verified against when the email is unknown so
/// that sign-in takes the same time whether or not the account exists.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash(&uuid::Uuid::new_v4().to_string()).expect("hashing a random password works"))
}

/// At least 8 characters (at most 128), with a letter and a digit.
pub fn check_policy(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if n < 8 {
        return Err(ApiError::Validation("password must be at least 8 characters long".into()));
    }
    if n > 128 {
        return Err(ApiError::Validation("password must be at most 128 characters long".into()));
    }
    if !password.chars().any(char::is_alphabetic) || !password.chars().any(|c| c.is_ascii_digit()) {
        return Err(ApiError::Validation("password must contain at least one letter and one digit".into()));
    }
    Ok(())
}

/// The normalised (trimmed, lower-case) email, or 422 when it is not a plausible address.
pub fn normalise_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let invalid = || ApiError::Validation(format!("{:?} is not a valid email address", raw.trim()));
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    let domain_ok = domain.contains('.')
        && !domain.contains('@')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain.chars().all(|c| c.is_alphanumeric() || c == '.' || c == '-');
    if local.is_empty() || local.len() > 64 || !domain_ok {
        return Err(invalid());
    }
    Ok(email)
}

/// The trimmed display name, 1 to 100 characters.
pub fn check_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::Validation("name must be 1 to 100 characters".into()));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
        let h = hash("correct horse 1").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("correct horse 1", &h));
        assert!(!verify("correct horse 2", &h));
    }

    #[test]
    fn the_password_policy_wants_eight_chars_a_letter_and_a_digit() {
        assert!(check_policy("abc1").is_err());
        assert!(check_policy("abcdefgh").is_err());
        assert!(check_policy("12345678").is_err());
        assert!(check_policy("abcdefg1").is_ok());
    }

    #[test]
    fn emails_are_normalised_and_nonsense_is_refused() {
        assert_eq!(normalise_email("  Ann@Example.COM ").unwrap(), "ann@example.com");
        for bad in ["", "ann", "ann@", "@example.com", "ann@example", "ann@@example.com", "a b@example.com"] {
            assert!(normalise_email(bad).is_err(), "{bad}");
        }
    }
}
