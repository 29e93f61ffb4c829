//! Contracts between the member and the VEN beyond the message shapes: values
//! both sides compute and must compute alike. Here, so neither side keeps its
//! own copy to drift.

/// The most addresses a VEN may report for its host (at pairing and in
/// every hello): a member refuses more, so the VEN checks before it starts
/// rather than reconnecting forever with a hello that is refused.
pub const MAX_ADDRESSES: usize = 64;

/// The policy hash: lower-case hex SHA-256 of the exact policy JSON bytes the
/// member sends. The VEN checks what it received against it and echoes it in
/// acknowledgements and heartbeats, so the member knows which policy each VEN
/// enforces without comparing documents. Written into one buffer, without a
/// `format!` per byte: a member hashes every policy it renders and a simulator
/// checks thousands per provision.
pub fn policy_hash(json: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, json);
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_policy_hash_is_lower_case_hex_sha256() {
        // FIPS 180-2's "abc".
        assert_eq!(
            super::policy_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
