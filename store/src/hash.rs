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
    fn hex_matches_the_formatter_and_sha256_its_test_vector() {
        let all: Vec<u8> = (0..=255).collect();
        let want: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::hex(&all), want);
        // FIPS 180-2's "abc"; split across parts, as callers salt their input.
        assert_eq!(
            super::sha256_hex(&[b"a", b"bc"]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
