//! The versioned binary encoding of every value Nexus stores or sends between nodes: one
//! format byte, then the value in postcard. A reader refuses a format byte it does not know
//! instead of misreading it, so that a format change is always explicit.

use serde::{de::DeserializeOwned, Serialize};

/// The current value format.
pub const VALUE_FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty value")]
    Empty,
    #[error("unknown value format {0} (this build reads format {VALUE_FORMAT_V1}); was the data written by a newer Nexus?")]
    UnknownFormat(u8),
    #[error("malformed value: {0}")]
    Malformed(#[from] postcard::Error),
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let out = vec![VALUE_FORMAT_V1];
    postcard::to_extend(value, out).expect("encoding into a Vec cannot fail")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&VALUE_FORMAT_V1, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&other, _)) => Err(CodecError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_formats() {
        let v = ("a".to_string(), 7u64, Some(-3i64));
        let bytes = encode(&v);
        assert_eq!(bytes[0], VALUE_FORMAT_V1);
        assert_eq!(decode::<(String, u64, Option<i64>)>(&bytes).unwrap(), v);
        let mut newer = bytes.clone();
        newer[0] = 9;
        assert!(matches!(
            decode::<(String, u64, Option<i64>)>(&newer),
            Err(CodecError::UnknownFormat(9))
        ));
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
    }
}
