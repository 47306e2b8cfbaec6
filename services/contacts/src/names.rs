//! List names: one name finds one list, so names are compared without regard to case or to
//! the Unicode form they were typed in (a composed "é" and "e" with a combining accent).

use unicode_normalization::UnicodeNormalization;

/// The key two names share when they are the same name: trimmed, NFC, lower case.
pub fn list_name_key(name: &str) -> String {
    name.trim().nfc().collect::<String>().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::list_name_key;

    #[test]
    fn names_that_read_the_same_share_a_key() {
        assert_eq!(list_name_key("Ärzte"), list_name_key("ärzte"));
        assert_eq!(list_name_key("ÄRZTE"), list_name_key("ärzte"));
        assert_eq!(list_name_key("Café"), list_name_key("Cafe\u{301}"));
        assert_eq!(list_name_key("  VIP "), "vip");
        assert_ne!(list_name_key("VIP"), list_name_key("VIP 2"));
    }
}
