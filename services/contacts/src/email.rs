//! Email addresses: checked, trimmed, and keyed lower-case for uniqueness per account.

/// An address as given (trimmed) and the key it is unique under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email {
    pub address: String,
    pub key: String,
}

/// The longest address SMTP carries, in bytes of UTF-8: a character beyond ASCII takes two to
/// four of them.
const MAX_LEN: usize = 254;

pub fn parse(raw: &str) -> Result<Email, String> {
    let address = raw.trim();
    if address.is_empty() {
        return Err("required".into());
    }
    if address.len() > MAX_LEN {
        return Err(format!("at most {MAX_LEN} bytes of UTF-8, SMTP's limit ({} here)", address.len()));
    }
    // Display names ("Ada <ada@example.com>") and addresses without a dotted domain are refused.
    let valid = email_address::EmailAddress::is_valid(address)
        && !address.contains(['<', '>', ' '])
        && address.rsplit_once('@').is_some_and(|(_, domain)| domain.contains('.') && !domain.ends_with('.'));
    if !valid {
        return Err("not a valid email address".into());
    }
    Ok(Email { address: address.to_owned(), key: address.to_lowercase() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_are_checked_and_keyed_without_case() {
        let e = super::parse("  Ada.Lovelace@Example.COM ").unwrap();
        assert_eq!(
            (e.address.as_str(), e.key.as_str()),
            ("Ada.Lovelace@Example.COM", "ada.lovelace@example.com")
        );
        assert!(super::parse("first+tag@sub.example.org").is_ok());
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a b@example.com",
            "Ada <ada@example.com>",
            "a@example.",
            "a@@example.com",
        ] {
            assert!(super::parse(bad).is_err(), "{bad:?}");
        }
        assert!(super::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
        // The limit is SMTP's, in bytes, and the refusal says so.
        let cyrillic = format!("{}@{}.ru", "ж".repeat(30), "д".repeat(100));
        assert_eq!(cyrillic.chars().count(), 134);
        let err = super::parse(&cyrillic).unwrap_err();
        assert_eq!(err, "at most 254 bytes of UTF-8, SMTP's limit (264 here)");
    }
}
