//! Strict percent-decoding of keys (in the path) and form fields.

/// Why a URL- or form-encoded string could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum DecodeError {
    #[error("'%' at byte {0} is not followed by two hex digits")]
    BadEscape(usize),
    #[error("not valid UTF-8 once decoded")]
    NotUtf8,
}

/// Strict percent-decoding: unlike the lenient decoders (which keep a malformed `%zz`
/// or replace invalid UTF-8), a malformed escape or invalid UTF-8 is an error, so a
/// client never stores something other than what it meant. In form bodies `+` is a
/// space; in paths it is a `+`.
pub(super) fn percent_decode_utf8(
    input: &[u8],
    plus_is_space: bool,
) -> Result<String, DecodeError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' => {
                let high = input.get(i + 1).and_then(|&b| hex_digit(b));
                let low = input.get(i + 2).and_then(|&b| hex_digit(b));
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(DecodeError::BadEscape(i));
                };
                out.push(high << 4 | low);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| DecodeError::NotUtf8)
}

pub(super) fn hex_digit(byte: u8) -> Option<u8> {
    char::from(byte)
        .to_digit(16)
        .and_then(|digit| u8::try_from(digit).ok())
}
