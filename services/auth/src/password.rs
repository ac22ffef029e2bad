//! Input rules and password hashing: email and name validation, the password policy, and
//! argon2id with the OWASP-recommended parameters (19 MiB, 2 iterations, 1 lane).
//!
//! # Hashes migrated from POC-2
//! The POC-2 (Node) database holds what its libraries wrote: bcrypt (`$2a$` from bcryptjs 2,
//! `$2b$` from node.bcrypt and bcryptjs 3, `$2y$`, PHP's name, in data that passed through PHP — one
//! algorithm under three names) and argon2 PHC strings with node-argon2's parameters (argon2id m=65536,t=3,p=4) or
//! others. [`verify`] accepts all of them, each through its well-kept crate (`bcrypt`, `argon2`),
//! never a verifier of our own. `$2x$` (crypt_blowfish's buggy variant, never written by Node) is
//! refused: verifying it as `$2b$` would be wrong for non-ASCII passwords. [`needs_rehash`] tells
//! the sign-in to replace any hash that is not argon2id with today's parameters, in the sign-in's
//! own transaction (see `users::signin`), so after one sign-in every account is on argon2id.
//!
//! Timing: an unknown email is verified against [`dummy_hash`] (today's argon2id), so it costs
//! what an argon2id account costs. A POC-2 account not yet signed in since the migration costs
//! its own hash's work instead — measured here (10 verifications each, optimised hash crates, the
//! 2-core machine at load 13): today's argon2id 90–130 ms, bcrypt cost 10 ~190 ms, node-argon2's
//! default argon2id (64 MiB, t=3, p=4) ~550 ms. That difference only tells "this email has a
//! POC-2 account not yet rehashed" and disappears at the account's first sign-in; equalising it
//! would mean paying the slowest scheme on every sign-in.

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Algorithm, Argon2, Params, Version,
};
use mfe_kit::ApiError;

/// Today's parameters: argon2id, 19 MiB, 2 iterations, 1 lane, 32-byte output.
fn params() -> Params {
    Params::new(19 * 1024, 2, 1, None).expect("valid argon2 params")
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params())
}

/// Hashes `password` into a PHC string. CPU-heavy: call from `spawn_blocking`.
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(hasher().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// The family of a stored hash, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `$argon2id$`, `$argon2i$`, `$argon2d$` PHC strings, any parameters.
    Argon2,
    /// `$2a$`, `$2b$`, `$2y$` (modular crypt format, 60 characters).
    Bcrypt,
    /// Anything else: never verifies.
    Unknown,
}

impl Scheme {
    pub fn of(hash: &str) -> Self {
        if hash.starts_with("$argon2") {
            Scheme::Argon2
        } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
            Scheme::Bcrypt
        } else {
            Scheme::Unknown
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Argon2 => "argon2",
            Scheme::Bcrypt => "bcrypt",
            Scheme::Unknown => "unknown",
        }
    }
}

/// Whether `password` matches the stored `hash`: argon2 with the parameters the hash carries,
/// or bcrypt with its cost. A malformed hash is a mismatch, never a panic. CPU-heavy: call from
/// `spawn_blocking`.
pub fn verify(password: &str, hash: &str) -> bool {
    match Scheme::of(hash) {
        Scheme::Argon2 => match PasswordHash::new(hash) {
            // The verifier takes algorithm, version and parameters from the hash itself.
            Ok(parsed) => hasher().verify_password(password.as_bytes(), &parsed).is_ok(),
            Err(_) => false,
        },
        // bcrypt reads the first 72 bytes of the password, as node.bcrypt and bcryptjs did when
        // they wrote the hash; `verify` (not `non_truncating_verify`) does the same.
        Scheme::Bcrypt => bcrypt::verify(password, hash).unwrap_or(false),
        Scheme::Unknown => false,
    }
}

/// Whether a hash that just verified should be replaced by [`hash`]: true for bcrypt, for
/// argon2i/argon2d, for argon2id of another version or other parameters, and for anything
/// that does not parse.
pub fn needs_rehash(hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else { return true };
    if parsed.algorithm != Algorithm::Argon2id.ident() || parsed.version != Some(Version::V0x13.into()) {
        return true;
    }
    let current = params();
    match Params::try_from(&parsed) {
        Ok(p) => {
            p.m_cost() != current.m_cost()
                || p.t_cost() != current.t_cost()
                || p.p_cost() != current.p_cost()
                || p.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)
                    != current.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)
        }
        Err(_) => true,
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

/// The form an email is stored and looked up in: trimmed, Unicode NFKC (so a full-width
/// `ａｎｎ＠ｅｘａｍｐｌｅ.ｃｏｍ` or a ligature is the same address as its plain letters), lower case.
/// Sign-in looks accounts up by this form ([`lookup_email`]), case-insensitively, so legacy
/// accounts imported with upper-case emails still sign in.
pub fn lookup_email(raw: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    raw.trim().nfkc().collect::<String>().to_lowercase()
}

/// Characters that render as nothing or reorder text: zero-width spaces and joiners, the
/// bidi controls, soft hyphen, word joiner, BOM, variation selectors, fillers (every format
/// character, `Cf`, plus the default-ignorable code points that are not `Cf`).
fn is_invisible(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    matches!(c.general_category(), GeneralCategory::Format | GeneralCategory::Control)
        || matches!(c, '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}'
            | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FFA0}' | '\u{E0100}'..='\u{E01EF}')
}

/// The normalised email of a sign-up ([`lookup_email`]), or 422 naming the field when it is not
/// a plausible address or could pass for another one:
/// - invisible characters (zero-width, bidi controls, see [`is_invisible`]) are refused: they
///   make two different accounts look identical;
/// - after NFKC, only ASCII is accepted. That is the rule against lookalikes (Cyrillic `а` in
///   `pаypal.com`, Greek `ο`, …): a mixed-script check would still let a whole-Cyrillic
///   lookalike domain through, and mail systems carry international domains in their ASCII
///   (`xn--`, punycode) form anyway, in which a lookalike is visible. The cost: an address with
///   a non-ASCII local part (RFC 6531) cannot sign up; none of the platform's data has one.
pub fn normalise_email(raw: &str) -> Result<String, ApiError> {
    let shown = raw.trim();
    if let Some(c) = shown.chars().find(|&c| is_invisible(c)) {
        return Err(ApiError::Validation(format!(
            "email must not contain invisible or text-direction characters (found U+{:04X})",
            c as u32
        )));
    }
    let email = lookup_email(raw);
    if let Some(c) = email.chars().find(|c| !c.is_ascii()) {
        return Err(ApiError::Validation(format!(
            "email must be plain ASCII: U+{:04X} ({c}) can pass for a Latin letter; write an international domain \
             in its xn-- form",
            c as u32
        )));
    }
    let invalid = || ApiError::Validation(format!("email {shown:?} is not a valid email address"));
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid());
    }
    let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
    let domain_ok = domain.contains('.')
        && !domain.contains('@')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
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

    /// Hashes written by other implementations, so the crates are checked against the outside
    /// world rather than against themselves.
    const FOREIGN: &[(&str, &str, &str)] = &[
        // OpenBSD's bcrypt test vector.
        ("$2a$", "U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"),
        // bcryptjs 2.4 (Node), `hashSync("correct horse 1", 4)`.
        ("$2a$", "correct horse 1", "$2a$04$K/8QptL4Mgae/7GDLte6j.nXcQuHUGhr8VwK31f7WwC1j1Qlmr4ce"),
        // bcryptjs 3 (Node), `hashSync("correct horse 1", 4)`.
        ("$2b$", "correct horse 1", "$2b$04$gohGWP/.6sQ7qNtmVK.bGe9le52.UAlmDfThpTpja6Y6VaJ2WL/6W"),
        // The PHP manual's password_verify example.
        ("$2y$", "rasmuslerdorf", "$2y$07$BCryptRequires22Chrcte/VlQH0piJtjXl.0t1XkA8pw9dMXTpOq"),
        // The argon2 reference implementation's README (`argon2 somesalt -t 2 -m 16 -p 4 -l 24`).
        ("argon2i", "password", "$argon2i$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"),
    ];

    #[test]
    fn hashes_written_by_node_php_and_the_argon2_reference_verify() {
        for (what, password, hash) in FOREIGN {
            assert!(verify(password, hash), "{what} {hash} should verify");
            assert!(!verify(&format!("{password}x"), hash), "{what}: a wrong password must not verify");
            assert!(!verify("", hash), "{what}: an empty password must not verify");
            assert!(needs_rehash(hash), "{what} is not today's argon2id");
        }
    }

    #[test]
    fn every_bcrypt_prefix_verifies_the_same_digest() {
        // $2a$, $2b$ and $2y$ are one algorithm for UTF-8 passwords under three names.
        let parts = bcrypt::hash_with_salt("Pässwörd 123!", 4, *b"0123456789abcdef").unwrap();
        for version in [bcrypt::Version::TwoA, bcrypt::Version::TwoB, bcrypt::Version::TwoY] {
            let h = parts.format_for_version(version);
            assert_eq!(Scheme::of(&h), Scheme::Bcrypt, "{h}");
            assert!(verify("Pässwörd 123!", &h), "{h}");
            assert!(!verify("Passwort 123!", &h), "{h}");
            assert!(needs_rehash(&h));
        }
        // crypt_blowfish's buggy $2x$ is refused rather than verified as if it were $2b$.
        assert!(!verify("Pässwörd 123!", &parts.format_for_version(bcrypt::Version::TwoX)));
    }

    #[test]
    fn argon2_hashes_of_other_variants_and_parameters_verify_and_need_a_rehash() {
        let salt = SaltString::encode_b64(b"other-params-salt").unwrap();
        let node_default = Params::new(65536, 3, 4, None).unwrap();
        for (algorithm, params, prefix) in [
            (Algorithm::Argon2id, node_default.clone(), "$argon2id$v=19$m=65536,t=3,p=4$"),
            (Algorithm::Argon2i, params(), "$argon2i$v=19$m=19456,t=2,p=1$"),
            (Algorithm::Argon2id, Params::new(19 * 1024, 2, 1, Some(16)).unwrap(), "$argon2id$v=19$m=19456,t=2,p=1$"),
            (Algorithm::Argon2id, params(), "$argon2id$v=16$m=19456,t=2,p=1$"),
        ] {
            let version = if prefix.contains("v=16") { Version::V0x10 } else { Version::V0x13 };
            let h =
                Argon2::new(algorithm, version, params).hash_password(b"correct horse 1", &salt).unwrap().to_string();
            assert!(h.starts_with(prefix), "{h}");
            assert!(verify("correct horse 1", &h), "{h}");
            assert!(!verify("correct horse 2", &h), "{h}");
            assert!(needs_rehash(&h), "{h} is not today's argon2id");
        }
    }

    #[test]
    fn only_todays_argon2id_needs_no_rehash() {
        let h = hash("correct horse 1").unwrap();
        assert!(!needs_rehash(&h), "{h}");
        assert!(!needs_rehash(dummy_hash()));
        assert!(needs_rehash("not a hash"));
        assert!(needs_rehash(""));
    }

    #[test]
    fn garbage_hashes_are_refused_without_panicking() {
        let bcrypt_ok = "$2b$04$gohGWP/.6sQ7qNtmVK.bGe9le52.UAlmDfThpTpja6Y6VaJ2WL/6W";
        let garbage = [
            "",
            "$",
            "plaintext-password",
            "$2b$",
            "$2b$04$",
            "$2b$04$short",
            "$2b$99$gohGWP/.6sQ7qNtmVK.bGe9le52.UAlmDfThpTpja6Y6VaJ2WL/6W", // cost out of range
            "$2b$xx$gohGWP/.6sQ7qNtmVK.bGe9le52.UAlmDfThpTpja6Y6VaJ2WL/6W", // cost not a number
            "$2b$04$gohGWP/.6sQ7qNtmVK.bGe9le52.UAlmDfThpTpja6Y6VaJ2WL/6é", // not ASCII
            "$2b$04$!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", // not base64
            "$2b$04$gohGWP/.6sQ7qNtmVK.bGe9le52.UAlmDfThpTpja6Y6VaJ2WL/6W$extra",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$",
            "$argon2id$v=19$m=0,t=0,p=0$c2FsdHNhbHQ$aGFzaGhhc2g",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", // salt and hash too short
            "$argon2x$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
            "$1$saltsalt$hashhashhashhashhash", // md5-crypt
            "$5$rounds=5000$salt$hash",         // sha256-crypt
        ];
        for h in garbage {
            assert!(!verify("correct horse 1", h), "{h:?} must not verify");
        }
        assert_eq!(bcrypt_ok.len(), 60);
        assert!(verify("correct horse 1", bcrypt_ok));
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

    #[test]
    fn emails_are_nfkc_and_lower_case_and_lookalikes_or_invisibles_are_refused() {
        // Full-width letters and the full-width @ are the plain address after NFKC.
        assert_eq!(normalise_email("ＡＮＮ＠ｅｘａｍｐｌｅ.ｃｏｍ").unwrap(), "ann@example.com");
        assert_eq!(lookup_email(" Ann@Example.COM"), "ann@example.com");
        for (bad, why) in [
            ("ann\u{200B}@example.com", "U+200B"),
            ("ann@exa\u{200D}mple.com", "U+200D"),
            ("\u{202E}moc.elpmaxe@nna", "U+202E"),
            ("ann@example.com\u{FEFF}", "U+FEFF"),
            ("ann@ex\u{00AD}ample.com", "U+00AD"),
        ] {
            let err = normalise_email(bad).unwrap_err().to_string();
            assert!(err.starts_with("email ") && err.contains("invisible") && err.contains(why), "{bad:?}: {err}");
        }
        for (bad, why) in
            [("billing@p\u{0430}ypal.com", "U+0430"), ("\u{03BF}ne@example.com", "U+03BF"), ("ann@bücher.de", "U+00FC")]
        {
            let err = normalise_email(bad).unwrap_err().to_string();
            assert!(err.starts_with("email must be plain ASCII") && err.contains(why), "{bad:?}: {err}");
        }
        assert!(matches!(normalise_email("billing@p\u{0430}ypal.com"), Err(ApiError::Validation(_))));
        assert_eq!(normalise_email("ann@xn--bcher-kva.de").unwrap(), "ann@xn--bcher-kva.de");
    }
}
