//! PII redaction: finds e-mail addresses, phone numbers, payment card numbers (Luhn-checked),
//! IBANs (mod-97-checked), IPv4 and IPv6 addresses, and secrets (common API-key formats, JWTs,
//! private-key blocks, and long high-entropy tokens), plus custom patterns, and replaces each
//! with a typed placeholder such as `[EMAIL]`.
//!
//! Candidates come from regular expressions; checksums and parsers then drop look-alikes
//! (a 16-digit order number that fails Luhn, `999.1.1.1`, a hex digest). Where candidates
//! overlap, the earlier one wins, then the more specific kind (secret before e-mail before card
//! before IBAN before IP before phone), so a card number is never also reported as a phone.

use std::net::Ipv6Addr;

use regex::Regex;

/// What a finding is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiKind {
    /// An API key, token or private key.
    Secret,
    /// An e-mail address.
    Email,
    /// A payment card number.
    Card,
    /// An international bank account number.
    Iban,
    /// An IPv6 address.
    Ipv6,
    /// An IPv4 address.
    Ipv4,
    /// A phone number.
    Phone,
    /// A custom pattern, by name.
    Custom(String),
}

impl PiiKind {
    /// The placeholder that replaces it.
    pub fn placeholder(&self) -> String {
        match self {
            Self::Secret => "[SECRET]".into(),
            Self::Email => "[EMAIL]".into(),
            Self::Card => "[CARD]".into(),
            Self::Iban => "[IBAN]".into(),
            Self::Ipv6 | Self::Ipv4 => "[IP]".into(),
            Self::Phone => "[PHONE]".into(),
            Self::Custom(name) => format!("[{}]", name.to_ascii_uppercase()),
        }
    }

    /// A stable label.
    pub fn label(&self) -> String {
        match self {
            Self::Secret => "secret".into(),
            Self::Email => "email".into(),
            Self::Card => "card".into(),
            Self::Iban => "iban".into(),
            Self::Ipv6 => "ipv6".into(),
            Self::Ipv4 => "ipv4".into(),
            Self::Phone => "phone".into(),
            Self::Custom(n) => n.clone(),
        }
    }
}

/// One finding: its kind and byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Kind.
    pub kind: PiiKind,
    /// Start byte.
    pub start: usize,
    /// End byte (exclusive).
    pub end: usize,
}

struct Detector {
    kind: PiiKind,
    pattern: Regex,
    check: fn(&str) -> bool,
}

/// Finds and replaces PII.
pub struct Redactor {
    detectors: Vec<Detector>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor").field("detectors", &self.detectors.len()).finish()
    }
}

fn always(_: &str) -> bool {
    true
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// The Luhn checksum of a card number's digits.
pub fn luhn(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| if i % 2 == 1 { if x * 2 > 9 { x * 2 - 9 } else { x * 2 } } else { x })
        .sum();
    sum.is_multiple_of(10)
}

/// The ISO 13616 mod-97 check of an IBAN.
pub fn iban_valid(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) || !compact.is_ascii() {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u64 = 0;
    for c in tail.chars().chain(head.chars()) {
        let v = match c {
            '0'..='9' => u64::from(c as u8 - b'0'),
            'A'..='Z' => u64::from(c as u8 - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

fn ipv6(s: &str) -> bool {
    s.matches(':').count() >= 2 && s.parse::<Ipv6Addr>().is_ok()
}

fn phone(s: &str) -> bool {
    let n = digits(s).len();
    (7..=15).contains(&n)
}

/// Shannon entropy in bits per character.
fn entropy(s: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for c in s.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = s.chars().count() as f64;
    counts.values().map(|&k| k as f64 / n).map(|p| -p * p.log2()).sum()
}

/// A long token that looks random: mixed letters and digits, not just hex, high entropy.
fn random_token(s: &str) -> bool {
    let has_digit = s.chars().any(|c| c.is_ascii_digit());
    let has_upper = s.chars().any(|c| c.is_ascii_uppercase());
    let has_lower = s.chars().any(|c| c.is_ascii_lowercase());
    let hex_only = s.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    has_digit && has_upper && has_lower && !hex_only && entropy(s) >= 4.0
}

fn detector(kind: PiiKind, pattern: &str, check: fn(&str) -> bool) -> Result<Detector, regex::Error> {
    Ok(Detector { kind, pattern: Regex::new(pattern)?, check })
}

impl Redactor {
    /// The built-in detectors plus `custom` (name, regular expression) patterns.
    pub fn new(custom: &[(String, String)]) -> Result<Self, regex::Error> {
        let mut detectors = vec![
            detector(
                PiiKind::Secret,
                concat!(
                    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
                    r"|\bsk-(?:ant-|proj-|sluice-)?[A-Za-z0-9_-]{20,}",
                    r"|\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{22,}",
                    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\bxox[baprs]-[A-Za-z0-9-]{10,}",
                    r"|\bAIza[0-9A-Za-z_-]{35}\b|\b(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,}",
                    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
                ),
                always,
            )?,
            detector(PiiKind::Secret, r"\b[A-Za-z0-9+/_-]{32,}={0,2}", random_token)?,
            detector(PiiKind::Email, r"(?i)\b[a-z0-9][a-z0-9._%+-]*@(?:[a-z0-9-]+\.)+[a-z]{2,24}\b", always)?,
            detector(PiiKind::Card, r"\b\d(?:[ -]?\d){12,18}\b", luhn)?,
            detector(PiiKind::Iban, r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", iban_valid)?,
            detector(PiiKind::Ipv6, r"(?i)(?:[0-9a-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9a-f]{0,4})", ipv6)?,
            detector(
                PiiKind::Ipv4,
                r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b",
                always,
            )?,
            detector(
                PiiKind::Phone,
                concat!(
                    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}\b",
                    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}\b",
                    r"|\b\d{3}[.-]\d{3}[.-]\d{4}\b",
                    r"|\b0\d{1,4}[ -]\d{3,4}[ -]\d{3,4}\b",
                ),
                phone,
            )?,
        ];
        for (name, pattern) in custom {
            detectors.push(detector(PiiKind::Custom(name.clone()), pattern, always)?);
        }
        Ok(Self { detectors })
    }

    /// Every finding, in text order, without overlaps.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        let mut all = Vec::new();
        for (rank, d) in self.detectors.iter().enumerate() {
            for m in d.pattern.find_iter(text) {
                // IPv6 candidates may start mid-word (hex letters): require a boundary.
                let before = text[..m.start()].chars().next_back();
                let after = text[m.end()..].chars().next();
                if d.kind == PiiKind::Ipv6
                    && (before.is_some_and(|c| c.is_ascii_alphanumeric()) || after.is_some_and(|c| c.is_ascii_alphanumeric()))
                {
                    continue;
                }
                if (d.check)(m.as_str()) {
                    all.push((m.start(), rank, m.end(), d.kind.clone()));
                }
            }
        }
        // Earliest first; at the same start, the higher-ranked kind, then the longer match.
        all.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
        let mut out: Vec<Finding> = Vec::new();
        for (start, _, end, kind) in all {
            if out.last().is_some_and(|f| start < f.end) {
                continue;
            }
            out.push(Finding { kind, start, end });
        }
        out
    }

    /// `text` with every finding replaced by its placeholder.
    pub fn redact(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in self.find(text) {
            out.push_str(&text[at..f.start]);
            out.push_str(&f.kind.placeholder());
            at = f.end;
        }
        out.push_str(&text[at..]);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn checksums() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(!luhn("4111 1111 1111 1112"));
        assert!(iban_valid("GB82 WEST 1234 5698 7654 32"));
        assert!(!iban_valid("GB82 WEST 1234 5698 7654 33"));
        assert!(iban_valid("DE89370400440532013000"));
    }

    #[test]
    fn redacts_with_typed_placeholders() {
        let r = Redactor::new(&[("employee_id".into(), r"\bEMP-\d{6}\b".into())]).unwrap();
        let text = "Mail jane.doe@example.com or call +1 415-555-0132 about card 4111-1111-1111-1111, \
                    IBAN DE89 3704 0044 0532 0130 00, host 10.0.0.12 / fe80::1ff:fe23:4567:890a, key sk-proj-abcDEF1234567890ghijKLMN, EMP-123456.";
        assert_eq!(
            r.redact(text),
            "Mail [EMAIL] or call [PHONE] about card [CARD], IBAN [IBAN], host [IP] / [IP], key [SECRET], [EMPLOYEE_ID]."
        );
        assert_eq!(r.redact("Version 2.1.0 shipped on 2024-05-01 with build 0x1f."), "Version 2.1.0 shipped on 2024-05-01 with build 0x1f.");
    }
}
