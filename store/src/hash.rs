//! The digests the store's contracts are built on (pairing-key and API-key
//! hashes), in one place so every writer and reader computes them alike.

/// Lower-case hex. Written by hand because it runs on hot paths (every pairing,
/// every authenticated request): a `format!` per byte showed up in profiles.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// SHA-256 of `parts` (concatenated), lower-case hex.
pub fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    hex(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_matches_the_test_vector() {
        assert_eq!(
            super::sha256_hex(&[b"a", b"bc"]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
