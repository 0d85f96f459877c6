//! The C2SP `tlog-tiles` layout (<https://c2sp.org/tlog-tiles>) of the tree.
//!
//! A tile is up to 256 consecutive stored hashes at one level of the tree; level `L`
//! tiles hold the hashes of subtrees of 256^L leaves (stored level `8 L`, tile
//! height 8 as the spec fixes it). This module implements the spec's "Merkle Tree"
//! section (tile contents: [`tile_data_indexes`], [`tile_data`]; which tiles a tree
//! has: [`tiles_for_size`], [`tiles_for_growth`]; partial tiles), the path grammar
//! of "Merkle Tree" and "Log entries" ([`Tile::path`], [`EntryBundle::path`],
//! [`parse_tile_path`], which rejects every non-canonical spelling), and the entry
//! bundle encoding ([`encode_entry_bundle`], [`decode_entry_bundle`]).
//!
//! For a client that downloads tiles, [`tiles_needed`] says which tiles to fetch to
//! read some stored hashes, and [`VerifiedTiles`] checks fetched tiles against a
//! trusted checkpoint (size and root) before serving hashes from them, as Go's
//! `tlog.TileHashReader` does: tiles that do not hash up to the root are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::hash::{Hash, MAX_TREE_SIZE, TreeSize, node_hash};
use crate::tree::{
    HashReader, StoredHashIndex, TreeError, fold_subtrees, read_exact, split_stored_hash_index,
    stored_hash_index, tree_hash_indexes,
};

/// Tree levels per tile (fixed by C2SP `tlog-tiles`).
pub const TILE_HEIGHT: u8 = 8;
/// Hashes in a full tile.
pub const TILE_WIDTH: u16 = 256;
/// Highest tile level of a tree of at most 2^63 leaves.
pub const MAX_TILE_LEVEL: u8 = 7;
/// Largest entry an entry bundle can hold (its length prefix is a `u16`).
pub const MAX_ENTRY_LEN: usize = u16::MAX as usize;

/// Errors of tile paths, tile data and entry bundles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TileError {
    /// A path that is not a canonical tile or entry bundle path.
    #[error(
        "{0:?} is not a canonical tile path (tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>])"
    )]
    BadPath(String),
    /// A tile whose width is 0 or above 256.
    #[error("tile width {0} is invalid: a tile holds 1 to 256 hashes")]
    BadWidth(u16),
    /// A tile that no tree of at most 2^63 leaves has.
    #[error("tile level {level} index {index} is beyond a tree of 2^63 leaves")]
    OutOfRange {
        /// Tile level.
        level: u8,
        /// Tile index.
        index: u64,
    },
    /// A tile that is not part of the tree of the given size (or has another width
    /// there).
    #[error("tile {tile} is not a tile of the tree of size {size}")]
    NotInTree {
        /// The tile's path.
        tile: String,
        /// The tree size.
        size: u64,
    },
    /// Tile data that is not `width * 32` bytes.
    #[error("tile {tile} has {len} bytes of data; a tile of its width has {expected}")]
    BadDataLength {
        /// The tile's path.
        tile: String,
        /// Bytes received.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// Tile data that does not hash up to the trusted root.
    #[error("tile {tile} does not match the trusted tree root: the tile server sent wrong data")]
    Inconsistent {
        /// The tile's path.
        tile: String,
    },
    /// A tile's parent tile was not provided, so it cannot be checked.
    #[error("tile {tile} cannot be checked: its parent tile {parent} was not provided")]
    MissingParent {
        /// The tile's path.
        tile: String,
        /// The parent's path.
        parent: String,
    },
    /// An entry too long for an entry bundle.
    #[error(
        "entry {index} of the bundle is {len} bytes; entry bundles hold entries up to 65535 bytes"
    )]
    EntryTooLong {
        /// Position in the bundle.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// An entry bundle with more than 256 entries.
    #[error("entry bundle has {0} entries; a bundle holds at most 256")]
    TooManyEntries(usize),
    /// An entry bundle that ends inside a length prefix or an entry.
    #[error("entry bundle is truncated at byte {offset}: a length prefix or entry is cut short")]
    TruncatedBundle {
        /// Where the cut entry starts.
        offset: usize,
    },
    /// Reading stored hashes failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// A hash tile: `level`, `index` within the level, and `width` (256 for a full tile).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Tile {
    /// Tile level (0 holds leaf hashes).
    pub level: u8,
    /// Index within the level.
    pub index: u64,
    /// Number of hashes, 1..=256.
    pub width: u16,
}

/// An entry bundle: the entries of level-0 tile `index`, `width` of them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct EntryBundle {
    /// Index of the bundle (the same as its level-0 tile).
    pub index: u64,
    /// Number of entries, 1..=256.
    pub width: u16,
}

/// A parsed tile path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TilePath {
    /// `tile/<L>/<N>[.p/<W>]`.
    Hashes(Tile),
    /// `tile/entries/<N>[.p/<W>]`.
    Entries(EntryBundle),
}

/// Checks that hashes `index * 256 .. index * 256 + width` at stored level
/// `8 * level` exist in a tree of at most 2^63 leaves.
fn check_tile(level: u8, index: u64, width: u16) -> Result<(), TileError> {
    if width == 0 || width > TILE_WIDTH {
        return Err(TileError::BadWidth(width));
    }
    let out = TileError::OutOfRange { level, index };
    if level > MAX_TILE_LEVEL {
        return Err(out);
    }
    let end = index
        .checked_mul(u64::from(TILE_WIDTH))
        .and_then(|s| s.checked_add(u64::from(width)))
        .and_then(|e| e.checked_mul(1u64 << (8 * u32::from(level))))
        .ok_or(out.clone())?;
    if end > MAX_TREE_SIZE {
        return Err(out);
    }
    Ok(())
}

impl Tile {
    /// A tile, checked: width 1..=256 and inside a tree of at most 2^63 leaves.
    pub fn new(level: u8, index: u64, width: u16) -> Result<Tile, TileError> {
        check_tile(level, index, width)?;
        Ok(Tile {
            level,
            index,
            width,
        })
    }

    /// Whether the tile is full (256 hashes).
    pub fn is_full(&self) -> bool {
        self.width == TILE_WIDTH
    }

    /// The tile's path, `tile/<L>/<N>[.p/<W>]`.
    pub fn path(&self) -> String {
        format!("tile/{}/{}", self.level, index_path(self.index, self.width))
    }
}

impl fmt::Display for Tile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

impl EntryBundle {
    /// A bundle, checked like a level-0 tile.
    pub fn new(index: u64, width: u16) -> Result<EntryBundle, TileError> {
        check_tile(0, index, width)?;
        Ok(EntryBundle { index, width })
    }

    /// The bundle's path, `tile/entries/<N>[.p/<W>]`.
    pub fn path(&self) -> String {
        format!("tile/entries/{}", index_path(self.index, self.width))
    }

    /// The level-0 tile holding the leaf hashes of this bundle's entries.
    pub fn tile(&self) -> Tile {
        Tile {
            level: 0,
            index: self.index,
            width: self.width,
        }
    }

    /// The index of the bundle's first entry.
    pub fn first_entry(&self) -> u64 {
        self.index.saturating_mul(u64::from(TILE_WIDTH))
    }
}

impl fmt::Display for EntryBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

/// `<N>[.p/<W>]`: N in groups of three digits, all but the last prefixed with `x`.
fn index_path(mut n: u64, width: u16) -> String {
    let mut groups = vec![format!("{:03}", n % 1000)];
    while n >= 1000 {
        n /= 1000;
        groups.push(format!("x{:03}", n % 1000));
    }
    groups.reverse();
    let mut s = groups.join("/");
    if width != TILE_WIDTH {
        s.push_str(&format!(".p/{width}"));
    }
    s
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a tile or entry bundle path. Only the canonical spelling is accepted:
/// no leading zeroes in `<L>` and `<W>`, `.p/256` is spelled as a full tile, and the
/// tile must be inside a tree of at most 2^63 leaves.
pub fn parse_tile_path(path: &str) -> Result<TilePath, TileError> {
    let bad = || TileError::BadPath(path.to_owned());
    let rest = path.strip_prefix("tile/").ok_or_else(bad)?;
    let (kind, rest) = rest.split_once('/').ok_or_else(bad)?;
    let (n_part, width) = match rest.split_once(".p/") {
        Some((n, w)) => {
            let w = parse_decimal(w)
                .and_then(|w| u16::try_from(w).ok())
                .filter(|w| (1..TILE_WIDTH).contains(w))
                .ok_or_else(bad)?;
            (n, w)
        }
        None => (rest, TILE_WIDTH),
    };
    let groups: Vec<&str> = n_part.split('/').collect();
    if groups.len() > 7 {
        return Err(bad());
    }
    let mut index: u64 = 0;
    for (i, g) in groups.iter().enumerate() {
        let digits = if i + 1 == groups.len() {
            *g
        } else {
            g.strip_prefix('x').ok_or_else(bad)?
        };
        if digits.len() != 3 {
            return Err(bad());
        }
        let d = parse_decimal(digits).ok_or_else(bad)?;
        index = index
            .checked_mul(1000)
            .and_then(|x| x.checked_add(d))
            .ok_or_else(bad)?;
    }
    let parsed = if kind == "entries" {
        TilePath::Entries(EntryBundle::new(index, width)?)
    } else {
        let level = parse_decimal(kind)
            .and_then(|l| u8::try_from(l).ok())
            .ok_or_else(bad)?;
        if level > 63 {
            return Err(bad());
        }
        TilePath::Hashes(Tile::new(level, index, width)?)
    };
    let canonical = match parsed {
        TilePath::Hashes(t) => t.path(),
        TilePath::Entries(b) => b.path(),
    };
    if canonical != path {
        return Err(bad());
    }
    Ok(parsed)
}

/// The tile at `level`, `index` in the tree of `size` leaves, with its width there;
/// `None` if the tree has no such tile.
pub fn tile_in_tree(size: TreeSize, level: u8, index: u64) -> Option<Tile> {
    if level > MAX_TILE_LEVEL || size.0 > MAX_TREE_SIZE {
        return None;
    }
    let hashes = size.0 >> (8 * u32::from(level));
    let start = index.checked_mul(u64::from(TILE_WIDTH))?;
    if start >= hashes {
        return None;
    }
    let width = (hashes - start).min(u64::from(TILE_WIDTH)) as u16;
    Some(Tile {
        level,
        index,
        width,
    })
}

/// Every hash tile of the tree of `size` leaves, full and partial, level by level.
///
/// This is O(size / 256) tiles; a log that grows uses [`tiles_for_growth`].
pub fn tiles_for_size(size: TreeSize) -> Vec<Tile> {
    tiles_for_growth(TreeSize(0), size)
}

/// The tiles to write when the published tree grows from `old` to `new` leaves: the
/// full tiles completed since `old`, and the partial tiles of `new` (a tile of a
/// width that `old` already had is not repeated). Empty if `new <= old` or `new` is
/// out of range.
pub fn tiles_for_growth(old: TreeSize, new: TreeSize) -> Vec<Tile> {
    let mut out = Vec::new();
    if new.0 <= old.0 || new.0 > MAX_TREE_SIZE {
        return out;
    }
    for level in 0..=MAX_TILE_LEVEL {
        let shift = 8 * u32::from(level);
        let (old_n, new_n) = (old.0 >> shift, new.0 >> shift);
        if new_n == 0 {
            break;
        }
        for index in (old_n >> 8)..(new_n >> 8) {
            out.push(Tile {
                level,
                index,
                width: TILE_WIDTH,
            });
        }
        let width = (new_n & 0xff) as u16;
        if width > 0 && new_n != old_n {
            out.push(Tile {
                level,
                index: new_n >> 8,
                width,
            });
        }
    }
    out
}

/// The entry bundles to write when the tree grows from `old` to `new` leaves (the
/// bundles of the level-0 tiles of [`tiles_for_growth`]).
pub fn entry_bundles_for_growth(old: TreeSize, new: TreeSize) -> Vec<EntryBundle> {
    tiles_for_growth(old, new)
        .into_iter()
        .filter(|t| t.level == 0)
        .map(|t| EntryBundle {
            index: t.index,
            width: t.width,
        })
        .collect()
}

/// The stored hashes that make up a tile's data, in order.
///
/// The tile is assumed valid ([`Tile::new`]); for a hand-built invalid one the width
/// is clamped to 256 and the indexes wrap rather than panic.
pub fn tile_data_indexes(tile: &Tile) -> Vec<StoredHashIndex> {
    let level = (TILE_HEIGHT * tile.level.min(MAX_TILE_LEVEL)).min(63);
    let start = tile.index.wrapping_mul(u64::from(TILE_WIDTH));
    (0..u64::from(tile.width.min(TILE_WIDTH)))
        .map(|i| stored_hash_index(level, start.wrapping_add(i)))
        .collect()
}

/// A tile's data: its hashes concatenated (32 bytes each).
pub fn tile_data(tile: &Tile, reader: &impl HashReader) -> Result<Vec<u8>, TileError> {
    check_tile(tile.level, tile.index, tile.width)?;
    let hashes = read_exact(reader, &tile_data_indexes(tile))?;
    Ok(hashes.iter().flat_map(|h| h.0).collect())
}

/// Splits tile data into hashes.
pub fn tile_hashes(tile: &Tile, data: &[u8]) -> Result<Vec<Hash>, TileError> {
    let expected = usize::from(tile.width) * Hash::LEN;
    if data.len() != expected {
        return Err(TileError::BadDataLength {
            tile: tile.path(),
            len: data.len(),
            expected,
        });
    }
    Ok(data
        .chunks_exact(Hash::LEN)
        .filter_map(|c| Hash::from_slice(c).ok())
        .collect())
}

/// The Merkle root of a run of tile hashes whose length is a power of two (as every
/// run [`locate`] gives is): pairs combine level by level.
fn subtree_of(hashes: &[Hash]) -> Option<Hash> {
    let mut level: Vec<Hash> = hashes.to_vec();
    while level.len() > 1 {
        level = level
            .chunks_exact(2)
            .filter_map(|pair| match pair {
                [l, r] => Some(node_hash(l, r)),
                _ => None,
            })
            .collect();
    }
    level.first().copied()
}

/// Where a stored hash lives in the tile layout: the tile level, the tile index, the
/// first and last-plus-one tile positions it covers.
fn locate(index: StoredHashIndex) -> (u8, u64, usize, usize) {
    let (level, n) = split_stored_hash_index(index);
    let tile_level = level / TILE_HEIGHT;
    let sub = u32::from(level % TILE_HEIGHT);
    // Position of the subtree's first hash at the tile's base level.
    let first = n << sub;
    let tile_index = first >> 8;
    let pos = (first & 0xff) as usize;
    (tile_level, tile_index, pos, pos + (1usize << sub))
}

/// The tiles (with their widths in the tree of `size`) that [`VerifiedTiles`] needs
/// to read `indexes` and check them against the tree's root: the tiles of the root's
/// own subtrees, each index's tile, and the parents of every full tile involved up
/// to a partial one.
pub fn tiles_needed(size: TreeSize, indexes: &[StoredHashIndex]) -> Result<Vec<Tile>, TileError> {
    let mut set = BTreeSet::new();
    let root_parts = tree_hash_indexes(size);
    for idx in root_parts.iter().chain(indexes) {
        let (level, tindex, _, end) = locate(*idx);
        let mut tile = tile_in_tree(size, level, tindex)
            .filter(|t| end <= usize::from(t.width))
            .ok_or(TreeError::IndexOutOfRange {
                index: *idx,
                size: size.0,
            })?;
        loop {
            if !set.insert(tile) || !tile.is_full() {
                break;
            }
            match parent_of(size, &tile) {
                Some(p) => tile = p,
                None => break,
            }
        }
    }
    Ok(set.into_iter().collect())
}

fn parent_of(size: TreeSize, tile: &Tile) -> Option<Tile> {
    tile_in_tree(size, tile.level.checked_add(1)?, tile.index >> 8)
}

/// Tiles checked against a trusted tree head, serving the hashes they hold.
#[derive(Clone, Debug)]
pub struct VerifiedTiles {
    size: TreeSize,
    tiles: BTreeMap<(u8, u64), Vec<Hash>>,
}

impl VerifiedTiles {
    /// Checks `tiles` (tile and data, as fetched) against the tree of `size` leaves
    /// with root `root` (from a verified checkpoint). Every tile must be a tile of
    /// that tree with its width there, every partial tile is checked by recomputing
    /// the root, and every full tile by its hash in its parent tile (which must be
    /// given too). Tiles from [`tiles_needed`] satisfy this.
    pub fn new(
        size: TreeSize,
        root: &Hash,
        tiles: Vec<(Tile, Vec<u8>)>,
    ) -> Result<VerifiedTiles, TileError> {
        let mut map: BTreeMap<(u8, u64), (Tile, Vec<Hash>)> = BTreeMap::new();
        for (tile, data) in tiles {
            if tile_in_tree(size, tile.level, tile.index) != Some(tile) {
                return Err(TileError::NotInTree {
                    tile: tile.path(),
                    size: size.0,
                });
            }
            let hashes = tile_hashes(&tile, &data)?;
            if let Some((_, old)) = map.get(&(tile.level, tile.index))
                && *old != hashes
            {
                return Err(TileError::Inconsistent { tile: tile.path() });
            }
            map.insert((tile.level, tile.index), (tile, hashes));
        }
        // Partial tiles: the root's subtrees are read from them (and only them).
        let parts = tree_hash_indexes(size);
        let mut part_hashes = Vec::with_capacity(parts.len());
        for idx in &parts {
            let (level, tindex, start, end) = locate(*idx);
            let (tile, hashes) = map
                .get(&(level, tindex))
                .ok_or(TreeError::MissingHash(*idx))?;
            let run = hashes.get(start..end).ok_or_else(|| TileError::NotInTree {
                tile: tile.path(),
                size: size.0,
            })?;
            part_hashes.push(subtree_of(run).ok_or(TreeError::MissingHash(*idx))?);
        }
        let computed = fold_subtrees(&part_hashes).unwrap_or_else(crate::hash::empty_root);
        if computed != *root {
            let tile = map
                .values()
                .find(|(t, _)| !t.is_full())
                .map(|(t, _)| t.path())
                .unwrap_or_else(|| "tile/0/000".to_owned());
            return Err(TileError::Inconsistent { tile });
        }
        // Full tiles: each must hash to its entry in its parent tile. Parents are at
        // higher levels; a tile's chain ends at a partial tile, checked above.
        for (tile, hashes) in map.values() {
            let mut tile = *tile;
            let mut hashes = hashes;
            while tile.is_full() {
                let Some(parent) = parent_of(size, &tile) else {
                    return Err(TileError::NotInTree {
                        tile: tile.path(),
                        size: size.0,
                    });
                };
                let (_, parent_hashes) =
                    map.get(&(parent.level, parent.index)).ok_or_else(|| {
                        TileError::MissingParent {
                            tile: tile.path(),
                            parent: parent.path(),
                        }
                    })?;
                let pos = (tile.index & 0xff) as usize;
                if parent_hashes.get(pos) != subtree_of(hashes).as_ref() {
                    return Err(TileError::Inconsistent { tile: tile.path() });
                }
                tile = parent;
                hashes = parent_hashes;
            }
        }
        Ok(VerifiedTiles {
            size,
            tiles: map.into_iter().map(|(k, (_, h))| (k, h)).collect(),
        })
    }

    /// The tree size the tiles were checked against.
    pub fn size(&self) -> TreeSize {
        self.size
    }
}

impl HashReader for VerifiedTiles {
    fn read_hashes(&self, indexes: &[StoredHashIndex]) -> Result<Vec<Hash>, TreeError> {
        indexes
            .iter()
            .map(|idx| {
                let (level, tindex, start, end) = locate(*idx);
                // Only hashes of complete subtrees inside the tree of `size`.
                let in_tree = tile_in_tree(self.size, level, tindex)
                    .is_some_and(|t| end <= usize::from(t.width));
                if !in_tree {
                    return Err(TreeError::IndexOutOfRange {
                        index: *idx,
                        size: self.size.0,
                    });
                }
                self.tiles
                    .get(&(level, tindex))
                    .and_then(|h| h.get(start..end))
                    .and_then(subtree_of)
                    .ok_or(TreeError::MissingHash(*idx))
            })
            .collect()
    }
}

/// Encodes entries as an entry bundle: each entry with a big-endian `u16` length
/// prefix. At most 256 entries of at most 65535 bytes each.
pub fn encode_entry_bundle(entries: &[&[u8]]) -> Result<Vec<u8>, TileError> {
    if entries.len() > usize::from(TILE_WIDTH) {
        return Err(TileError::TooManyEntries(entries.len()));
    }
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.len() + 2).sum());
    for (index, e) in entries.iter().enumerate() {
        let len = u16::try_from(e.len()).map_err(|_| TileError::EntryTooLong {
            index,
            len: e.len(),
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Decodes an entry bundle into its entries.
pub fn decode_entry_bundle(bundle: &[u8]) -> Result<Vec<Vec<u8>>, TileError> {
    let mut out = Vec::new();
    let mut rest = bundle;
    while !rest.is_empty() {
        let offset = bundle.len() - rest.len();
        if out.len() == usize::from(TILE_WIDTH) {
            return Err(TileError::TooManyEntries(out.len() + 1));
        }
        let (len, tail) = rest
            .split_first_chunk::<2>()
            .ok_or(TileError::TruncatedBundle { offset })?;
        let (entry, tail) = tail
            .split_at_checked(usize::from(u16::from_be_bytes(*len)))
            .ok_or(TileError::TruncatedBundle { offset })?;
        out.push(entry.to_vec());
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{MemoryTree, tree_hash};

    #[test]
    fn paths_follow_the_spec_examples() {
        let t = Tile::new(0, 1234067, 256).unwrap();
        assert_eq!(t.path(), "tile/0/x001/x234/067");
        assert_eq!(Tile::new(1, 0, 17).unwrap().path(), "tile/1/000.p/17");
        assert_eq!(
            EntryBundle::new(5, 3).unwrap().path(),
            "tile/entries/005.p/3"
        );
        assert_eq!(
            EntryBundle::new(1000, 256).unwrap().path(),
            "tile/entries/x001/000"
        );
        for p in [
            "tile/0/x001/x234/067",
            "tile/1/000.p/17",
            "tile/entries/005.p/3",
            "tile/entries/x001/000",
            "tile/7/000.p/128",
        ] {
            let parsed = parse_tile_path(p).unwrap();
            let back = match parsed {
                TilePath::Hashes(t) => t.path(),
                TilePath::Entries(b) => b.path(),
            };
            assert_eq!(back, p);
        }
    }

    #[test]
    fn non_canonical_paths_are_rejected() {
        for p in [
            "",
            "tile",
            "tile/",
            "tile/0",
            "tile/0/",
            "tile/00/000",
            "tile/+0/000",
            "tile/0/0",
            "tile/0/0000",
            "tile/0/x000/001",
            "tile/0/001/001",
            "tile/0/x001",
            "tile/0/000.p/256",
            "tile/0/000.p/0",
            "tile/0/000.p/012",
            "tile/0/000.p/",
            "tile/0/000.p/1/2",
            "tile/0/-01",
            "tile/0/+01",
            "tile/64/000",
            "tile/8/000",
            "tile/data/000",
            "tile/entries/x000/000",
            "tile/0/x999/x999/x999/x999/x999/x999/x999/999",
            "/tile/0/000",
            "tile/0/000/",
            "tiles/0/000",
            "tile/0/０００",
        ] {
            assert!(parse_tile_path(p).is_err(), "{p:?} accepted");
        }
    }

    #[test]
    fn tiles_for_size_matches_the_spec_example() {
        // "a tree of size 70,000 will be represented by 273 full level 0 tiles, one
        // partial level 0 tile of width 112, one full level 1 tile, one partial
        // level 1 tile of width 17, and one partial level 2 tile of width 1."
        let tiles = tiles_for_size(TreeSize(70_000));
        let count = |level, full| {
            tiles
                .iter()
                .filter(|t| t.level == level && t.is_full() == full)
                .count()
        };
        assert_eq!((count(0, true), count(0, false)), (273, 1));
        assert_eq!((count(1, true), count(1, false)), (1, 1));
        assert_eq!((count(2, true), count(2, false)), (0, 1));
        assert!(tiles.contains(&Tile::new(0, 273, 112).unwrap()));
        assert!(tiles.contains(&Tile::new(1, 1, 17).unwrap()));
        assert!(tiles.contains(&Tile::new(2, 0, 1).unwrap()));
        // "a tree of size 256 will be represented by a full level 0 tile and a
        // partial level 1 tile of width 1."
        assert_eq!(
            tiles_for_size(TreeSize(256)),
            vec![Tile::new(0, 0, 256).unwrap(), Tile::new(1, 0, 1).unwrap()]
        );
        assert_eq!(
            tiles_for_growth(TreeSize(256), TreeSize(300)),
            vec![Tile::new(0, 1, 44).unwrap()]
        );
        assert!(tiles_for_size(TreeSize(0)).is_empty());
    }

    fn tree(n: u64) -> MemoryTree {
        let mut t = MemoryTree::new();
        for i in 0..n {
            t.append_entry(&i.to_be_bytes());
        }
        t
    }

    fn fetch(t: &MemoryTree, tiles: &[Tile]) -> Vec<(Tile, Vec<u8>)> {
        tiles
            .iter()
            .map(|tile| (*tile, tile_data(tile, t).unwrap()))
            .collect()
    }

    #[test]
    fn verified_tiles_serve_every_hash_of_the_tree() {
        let size = 70_000u64;
        let t = tree(size);
        let root = t.root();
        let all = tiles_for_size(TreeSize(size));
        let v = VerifiedTiles::new(TreeSize(size), &root, fetch(&t, &all)).unwrap();
        assert_eq!(tree_hash(TreeSize(size), &v), Ok(root));
        let idx: Vec<StoredHashIndex> = (0..crate::tree::stored_hash_count(size))
            .step_by(97)
            .map(StoredHashIndex)
            .collect();
        assert_eq!(v.read_hashes(&idx), t.read_hashes(&idx));
        // A proof built from downloaded tiles is the log's proof.
        let p = crate::proof::prove_inclusion(TreeSize(size), crate::hash::LeafIndex(777), &v);
        assert_eq!(
            p,
            crate::proof::prove_inclusion(TreeSize(size), crate::hash::LeafIndex(777), &t)
        );
    }

    #[test]
    fn tiles_needed_are_enough_and_tampering_is_caught() {
        let size = 70_000u64;
        let t = tree(size);
        let root = t.root();
        let want = crate::proof::inclusion_proof_indexes(TreeSize(size), crate::hash::LeafIndex(5))
            .unwrap();
        let needed = tiles_needed(TreeSize(size), &want).unwrap();
        let fetched = fetch(&t, &needed);
        let v = VerifiedTiles::new(TreeSize(size), &root, fetched.clone()).unwrap();
        assert_eq!(v.read_hashes(&want), t.read_hashes(&want));
        for i in 0..fetched.len() {
            let mut bad = fetched.clone();
            bad[i].1[7] ^= 1;
            assert!(
                matches!(
                    VerifiedTiles::new(TreeSize(size), &root, bad),
                    Err(TileError::Inconsistent { .. })
                ),
                "tampered {} accepted",
                fetched[i].0
            );
            // Without one of the tiles, either the set no longer checks out (a
            // parent or partial tile is gone) or the hashes cannot be read.
            let mut missing = fetched.clone();
            missing.remove(i);
            match VerifiedTiles::new(TreeSize(size), &root, missing) {
                Err(_) => {}
                Ok(v) => assert!(v.read_hashes(&want).is_err()),
            }
        }
        // A tile with the wrong width for this size is refused.
        let mut wrong = fetched.clone();
        wrong.push((Tile::new(0, 273, 1).unwrap(), vec![0; 32]));
        assert!(matches!(
            VerifiedTiles::new(TreeSize(size), &root, wrong),
            Err(TileError::NotInTree { .. })
        ));
        // Hashes beyond the tree are refused, not invented.
        let outside = StoredHashIndex(crate::tree::stored_hash_count(size));
        assert!(v.read_hashes(&[outside]).is_err());
        assert!(tiles_needed(TreeSize(size), &[outside]).is_err());
    }

    #[test]
    fn entry_bundles_round_trip_and_reject_bad_input() {
        let entries: Vec<&[u8]> = vec![b"", b"a", &[7u8; 300]];
        let b = encode_entry_bundle(&entries).unwrap();
        assert_eq!(&b[..5], &[0, 0, 0, 1, b'a']);
        assert_eq!(decode_entry_bundle(&b).unwrap(), entries);
        let big = vec![0u8; 65536];
        assert_eq!(
            encode_entry_bundle(&[b"x", &big]),
            Err(TileError::EntryTooLong {
                index: 1,
                len: 65536
            })
        );
        assert!(encode_entry_bundle(&[&big[..65535]]).is_ok());
        assert_eq!(
            decode_entry_bundle(&b[..b.len() - 1]),
            Err(TileError::TruncatedBundle { offset: 5 })
        );
        assert_eq!(
            decode_entry_bundle(&[0]),
            Err(TileError::TruncatedBundle { offset: 0 })
        );
        let many = vec![0u8; 2 * 257];
        assert_eq!(
            decode_entry_bundle(&many),
            Err(TileError::TooManyEntries(257))
        );
        let many_in: Vec<&[u8]> = vec![b""; 257];
        assert_eq!(
            encode_entry_bundle(&many_in),
            Err(TileError::TooManyEntries(257))
        );
    }
}
