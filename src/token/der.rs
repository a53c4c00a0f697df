//! Just enough DER reading to unwrap a PKCS#8 `PrivateKeyInfo` into the
//! PKCS#1 `RSAPrivateKey` that jsonwebtoken's RSA signer expects.

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;

/// Reads one TLV: returns (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The private key octets inside a PKCS#8 `PrivateKeyInfo`.
pub fn pkcs8_private_key(pkcs8: &[u8]) -> Option<&[u8]> {
    let (tag, body, _) = tlv(pkcs8)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _version, rest) = tlv(body)?;
    if tag != INTEGER {
        return None;
    }
    let (tag, _algorithm, rest) = tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, key, _) = tlv(rest)?;
    (tag == OCTET_STRING).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_truncated_and_foreign_input() {
        assert_eq!(pkcs8_private_key(&[]), None);
        assert_eq!(pkcs8_private_key(&[0x30, 0x05, 0x02]), None);
        assert_eq!(pkcs8_private_key(&[0x04, 0x00]), None);
        assert_eq!(
            pkcs8_private_key(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }

    #[test]
    fn unwraps_a_minimal_private_key_info() {
        // SEQUENCE { INTEGER 0, SEQUENCE {}, OCTET STRING "abc" }
        let der = [
            0x30, 0x0a, 0x02, 0x01, 0x00, 0x30, 0x00, 0x04, 0x03, b'a', b'b', b'c',
        ];
        assert_eq!(pkcs8_private_key(&der), Some(&b"abc"[..]));
    }
}
