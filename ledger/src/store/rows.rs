//! Checks shared by the SQL backends: converting between the log's unsigned numbers
//! and SQL's `BIGINT`, and turning the rows a query returns into the trait's answers,
//! with every bad or missing row a [`StoreError::Corrupt`] that names it.

use super::{Corruption, StoreError};
use crate::hash::{Hash, LeafIndex, TreeSize};
use crate::tree::StoredHashIndex;

/// Converts an index or size to the `BIGINT` both backends store.
pub(super) fn to_sql_int(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| {
        StoreError::Invalid(format!("{what} {value} is past the largest storable value"))
    })
}

/// Converts a stored `BIGINT` back, refusing negatives as corruption.
pub(super) fn from_sql_int(value: i64, table: &'static str, index: u64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        table,
        index,
        problem: Corruption::Negative(value),
    })
}

/// Checks a stored hash blob.
pub(super) fn hash_from_row(blob: &[u8], index: u64) -> Result<Hash, StoreError> {
    let bytes: [u8; 32] = blob.try_into().map_err(|_| StoreError::Corrupt {
        table: "hashes",
        index,
        problem: Corruption::HashLength(blob.len()),
    })?;
    Ok(Hash(bytes))
}

/// Puts rows fetched by index back in the order asked, failing on the first missing one.
pub(super) fn order_hashes(
    indexes: &[StoredHashIndex],
    mut found: Vec<(u64, Hash)>,
) -> Result<Vec<Hash>, StoreError> {
    found.sort_unstable_by_key(|(index, _)| *index);
    indexes
        .iter()
        .map(|wanted| {
            found
                .binary_search_by_key(&wanted.0, |(index, _)| *index)
                .ok()
                .and_then(|at| found.get(at))
                .map(|(_, hash)| *hash)
                .ok_or(StoreError::Corrupt {
                    table: "hashes",
                    index: wanted.0,
                    problem: Corruption::Missing,
                })
        })
        .collect()
}

/// Checks that `rows` (index, data) are exactly `start..end` in order, and returns the
/// data. `stored_size` is asked for only when rows are missing, to tell a range past the
/// end of the log (the caller's mistake) from a gap (corruption).
pub(super) async fn contiguous_entries<F>(
    start: u64,
    end: u64,
    rows: Vec<(i64, Vec<u8>)>,
    stored_size: F,
) -> Result<Vec<Vec<u8>>, StoreError>
where
    F: std::future::Future<Output = Result<TreeSize, StoreError>>,
{
    let mut out = Vec::with_capacity(rows.len());
    let mut expected = start;
    for (index, data) in rows {
        let index = from_sql_int(index, "entries", expected)?;
        if index != expected {
            break;
        }
        out.push(data);
        expected += 1;
    }
    if expected == end {
        return Ok(out);
    }
    let size = stored_size.await?.0;
    if end > size {
        return Err(StoreError::OutOfRange { start, end, size });
    }
    Err(StoreError::Corrupt {
        table: "entries",
        index: expected,
        problem: Corruption::Missing,
    })
}

/// Checks the arguments of an append before a backend opens its transaction.
pub(super) fn check_batch(
    first_index: LeafIndex,
    entries: &[Vec<u8>],
    hashes: &[(StoredHashIndex, Hash)],
) -> Result<(i64, i64), StoreError> {
    let count = u64::try_from(entries.len())
        .map_err(|_| StoreError::Invalid("batch too large".to_owned()))?;
    let new_size = first_index
        .0
        .checked_add(count)
        .ok_or_else(|| StoreError::Invalid("batch runs past the largest leaf index".to_owned()))?;
    for (index, _) in hashes {
        to_sql_int(index.0, "stored hash index")?;
    }
    Ok((
        to_sql_int(first_index.0, "first index")?,
        to_sql_int(new_size, "tree size")?,
    ))
}

/// Refuses a metadata row with an empty key, before anything is written.
pub(super) fn check_meta(meta: &[super::Meta]) -> Result<(), StoreError> {
    if meta.iter().any(|(key, _)| key.is_empty()) {
        return Err(StoreError::Invalid(
            "metadata keys are not empty".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_hashes_follows_the_request_and_names_a_missing_row() {
        let a = Hash([1; 32]);
        let b = Hash([2; 32]);
        let found = vec![(7, b), (3, a)];
        let asked = [StoredHashIndex(3), StoredHashIndex(7), StoredHashIndex(3)];
        assert_eq!(
            order_hashes(&asked, found.clone()).ok(),
            Some(vec![a, b, a])
        );
        match order_hashes(&[StoredHashIndex(3), StoredHashIndex(5)], found) {
            Err(StoreError::Corrupt {
                table: "hashes",
                index: 5,
                problem: Corruption::Missing,
            }) => {}
            other => panic!("expected a missing-row error, got {other:?}"),
        }
    }

    #[test]
    fn hash_rows_of_the_wrong_length_are_corrupt() {
        assert!(hash_from_row(&[0; 32], 0).is_ok());
        assert!(matches!(
            hash_from_row(&[0; 31], 9),
            Err(StoreError::Corrupt {
                index: 9,
                problem: Corruption::HashLength(31),
                ..
            })
        ));
    }
}
