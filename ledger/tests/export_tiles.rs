//! The `export-tiles` example, run with a small N: the files it writes must be a
//! valid C2SP `tlog-tiles` tree. The test re-reads them as a client would, with
//! nothing but the verifier key: the checkpoint's signature verifies, the tiles hash
//! up to its root, and the entry bundles hash to the level-0 tiles.

use std::path::Path;

use lupus_ledger::checkpoint::open_checkpoint;
use lupus_ledger::entry::Entry;
use lupus_ledger::hash::leaf_hash;
use lupus_ledger::note::NoteVerifier;
use lupus_ledger::tiles::{TilePath, VerifiedTiles, decode_entry_bundle, parse_tile_path};
use lupus_ledger::tree::MemoryTree;

// The example itself, compiled into this test so its own code is what is tested; its
// `main` is not called here.
#[allow(dead_code)]
#[path = "../examples/export-tiles.rs"]
mod export_tiles;

fn files_under(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read a tile directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files_under(root, &path, out);
        } else {
            let relative = path.strip_prefix(root).expect("under the root");
            out.push(relative.to_str().expect("UTF-8 path").to_owned());
        }
    }
}

fn args(out: &Path, entries: u64, force: bool) -> export_tiles::Args {
    export_tiles::Args {
        entries,
        out: out.to_path_buf(),
        force,
        db_dir: None,
        origin: "lupus.example/export-test".to_owned(),
        chunk: 1000,
        quiet: true,
    }
}

#[test]
fn exported_tiles_verify_with_only_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiles");
    // 256 * 256 + 300 entries: full and partial tiles at levels 0, 1 and 2.
    let n = 65_536 + 300;
    let summary = export_tiles::run(&args(&out, n, false)).expect("the export runs");
    assert_eq!(summary.size, n);

    let vkey = std::fs::read_to_string(out.join("log.vkey")).unwrap();
    let verifier = NoteVerifier::parse(vkey.trim_end()).expect("a verifier key");
    let note = std::fs::read_to_string(out.join("checkpoint")).unwrap();
    let checkpoint = open_checkpoint(&note, &verifier)
        .expect("the checkpoint is signed by the key")
        .checkpoint;
    assert_eq!(checkpoint.size.0, n);

    let mut paths = Vec::new();
    files_under(&out, &out.join("tile"), &mut paths);
    let mut tiles = Vec::new();
    let mut bundles = Vec::new();
    for path in &paths {
        let data = std::fs::read(out.join(path)).unwrap();
        match parse_tile_path(path).unwrap_or_else(|e| panic!("{path}: {e}")) {
            TilePath::Hashes(tile) => tiles.push((tile, data)),
            TilePath::Entries(bundle) => bundles.push((bundle, data)),
        }
    }
    assert_eq!(tiles.len(), summary.tiles);
    assert_eq!(bundles.len(), summary.bundles);
    // 65,836 leaves: level 0 has 257 full tiles and one of 44; level 1 (257 hashes)
    // one full and one of 1; level 2 (1 hash) one of 1.
    assert_eq!(tiles.len(), 258 + 2 + 1);

    // The tiles hash up to the signed root (full tiles through their parents).
    VerifiedTiles::new(checkpoint.size, &checkpoint.root, tiles.clone())
        .expect("the tiles verify against the checkpoint");

    // The entries, decoded from the bundles, give the same root from scratch, and
    // each is a well-formed Lupus entry.
    bundles.sort_by_key(|(bundle, _)| bundle.index);
    let mut tree = MemoryTree::new();
    let mut leaves = Vec::new();
    for (bundle, data) in &bundles {
        let entries = decode_entry_bundle(data).expect("a bundle");
        assert_eq!(entries.len(), usize::from(bundle.width));
        for entry in &entries {
            Entry::decode(entry).expect("a valid entry");
            tree.append_entry(entry);
            leaves.push(leaf_hash(entry));
        }
    }
    assert_eq!(tree.size(), checkpoint.size);
    assert_eq!(tree.root(), checkpoint.root);
    // And the level-0 tiles are exactly those leaf hashes.
    for (tile, data) in tiles.iter().filter(|(t, _)| t.level == 0) {
        let start = tile.index as usize * 256;
        let expected: Vec<u8> = leaves[start..start + usize::from(tile.width)]
            .iter()
            .flat_map(|h| h.0)
            .collect();
        assert_eq!(&expected, data, "{}", tile.path());
    }
}

#[test]
fn a_non_empty_directory_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiles");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep-me"), b"x").unwrap();
    let refused = export_tiles::run(&args(&out, 10, false)).expect_err("must refuse");
    assert!(refused.to_string().contains("--force"), "{refused}");
    let first = export_tiles::run(&args(&out, 10, true)).expect("forced export");
    assert_eq!(first.size, 10);
    // A second forced export replaces the first one's files, and only those.
    let second = export_tiles::run(&args(&out, 3, true)).expect("forced export");
    assert_eq!(second.size, 3);
    assert!(out.join("keep-me").exists());
    assert!(out.join("tile/entries/000.p/3").exists());
    assert!(!out.join("tile/entries/000.p/10").exists());
}
