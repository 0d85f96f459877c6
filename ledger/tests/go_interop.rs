//! Interop with Go's reference implementation (`golang.org/x/mod/sumdb/note` and
//! `golang.org/x/mod/sumdb/tlog`), through the Go program in `tests/go-interop/`.
//!
//! Go checks what this crate produces: roots, inclusion and consistency proofs
//! (`tlog.CheckRecord`, `tlog.CheckTree`, and equality with `tlog.ProveRecord` /
//! `tlog.ProveTree`), tile bytes (`tlog.ReadTileData`, and `tlog.TileHashReader`,
//! which checks served tiles against the root), entry bundles, signed checkpoints
//! (`note.Open` with our verifier-key string) and our private-key strings
//! (`note.NewSigner` must sign byte for byte what we sign). The other way, this crate
//! reads a key and a cosigned note that Go generated.
//!
//! Needs `go` and the Go sources of `golang.org/x/mod`; the test fails (it does not
//! skip) when they are missing.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use lupus_ledger::checkpoint::{Checkpoint, open_checkpoint, sign_checkpoint};
use lupus_ledger::hash::{Hash, LeafIndex, TreeSize};
use lupus_ledger::note::{NoteSigner, NoteVerifier, open_note};
use lupus_ledger::proof::{prove_consistency, prove_inclusion};
use lupus_ledger::tiles::{
    EntryBundle, encode_entry_bundle, entry_bundles_for_growth, tile_data, tiles_for_size,
};
use lupus_ledger::tree::{MemoryTree, tree_hash};
use serde_json::{Value, json};

const GOPATH: &str = "/usr/share/gocode";
const INSTALL: &str = "apt-get install -y golang-go golang-golang-x-mod-dev";

/// The Go program, built into a temporary directory that is removed with it.
struct GoInterop {
    dir: tempfile::TempDir,
}

impl GoInterop {
    /// Builds the Go program (Go's build cache makes a rebuild take a moment).
    fn build() -> GoInterop {
        let version = Command::new("go").arg("version").output();
        assert!(
            version.as_ref().is_ok_and(|o| o.status.success()),
            "the Go toolchain is missing, and this interop test needs it: run `{INSTALL}`"
        );
        assert!(
            Path::new(GOPATH)
                .join("src/golang.org/x/mod/sumdb/tlog/tlog.go")
                .exists(),
            "Go's golang.org/x/mod sources are missing from {GOPATH}: run `{INSTALL}`"
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go-interop");
        let mut cmd = Command::new("go");
        cmd.args(["build", "-o"])
            .arg(dir.path().join("go-interop"))
            .arg(".")
            .current_dir(&src)
            .env("GOPATH", GOPATH)
            .env("GO111MODULE", "off")
            .env_remove("GOFLAGS");
        if std::env::var_os("HOME").is_none() && std::env::var_os("GOCACHE").is_none() {
            cmd.env("GOCACHE", dir.path().join("cache"));
        }
        let out = cmd.output().expect("run go build");
        assert!(
            out.status.success(),
            "go build of {} failed (is `{INSTALL}` done?):\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        GoInterop { dir }
    }

    /// Runs the program; any disagreement it reports fails the test.
    fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        let mut child = Command::new(self.dir.path().join("go-interop"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start go-interop");
        {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            if let Some(input) = stdin {
                pipe.write_all(input).expect("write to go-interop");
            }
        }
        let out = child.wait_with_output().expect("wait for go-interop");
        assert!(
            out.status.success(),
            "Go disagrees with this crate:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("Go prints UTF-8")
    }
}

fn b64h(h: &Hash) -> String {
    B64.encode(h.0)
}

fn entry(i: u64) -> Vec<u8> {
    // Varied lengths, including empty entries, exercise the bundle encoding.
    let len = (i * 7919 % 41) as usize;
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

#[test]
fn go_verifies_rust_roots_proofs_tiles_and_notes() {
    const SIZE: u64 = 70_000;
    let mut tree = MemoryTree::new();
    let entries: Vec<Vec<u8>> = (0..SIZE).map(entry).collect();
    for e in &entries {
        tree.append_entry(e);
    }
    let sizes = [
        1u64, 2, 3, 7, 8, 255, 256, 257, 1000, 65535, 65536, 65537, SIZE,
    ];

    let roots: Vec<Value> = sizes
        .iter()
        .map(|&s| json!({"size": s, "root": b64h(&tree_hash(TreeSize(s), &tree).unwrap())}))
        .collect();

    let mut inclusion = Vec::new();
    for &size in &sizes {
        let mut indexes: Vec<u64> = (0..size).step_by((size as usize / 7).max(1)).collect();
        indexes.push(size - 1);
        for index in indexes {
            let p = prove_inclusion(TreeSize(size), LeafIndex(index), &tree).unwrap();
            inclusion.push(json!({
                "index": index, "size": size,
                "path": p.path.iter().map(b64h).collect::<Vec<_>>(),
            }));
        }
    }

    let mut consistency = Vec::new();
    for &new in &sizes {
        for &old in sizes.iter().filter(|&&o| o <= new) {
            let p = prove_consistency(TreeSize(old), TreeSize(new), &tree).unwrap();
            consistency.push(json!({
                "old": old, "new": new,
                "path": p.path.iter().map(b64h).collect::<Vec<_>>(),
            }));
        }
    }

    let mut tiles: Vec<Value> = tiles_for_size(TreeSize(SIZE))
        .iter()
        .map(|t| json!({"path": t.path(), "data": B64.encode(tile_data(t, &tree).unwrap())}))
        .collect();
    let bundles: Vec<EntryBundle> = entry_bundles_for_growth(TreeSize(0), TreeSize(SIZE));
    for b in &bundles {
        let start = b.first_entry() as usize;
        let slice: Vec<&[u8]> = entries[start..start + usize::from(b.width)]
            .iter()
            .map(Vec::as_slice)
            .collect();
        tiles.push(
            json!({"path": b.path(), "data": B64.encode(encode_entry_bundle(&slice).unwrap())}),
        );
    }

    // Signed checkpoints, one with a witness cosignature, and tampered ones.
    let log = NoteSigner::from_secret("lupus.example/interop", [5; 32]).unwrap();
    let witness = NoteSigner::from_secret("witness.example", [6; 32]).unwrap();
    let cp = Checkpoint {
        origin: log.name().to_owned(),
        size: TreeSize(SIZE),
        root: tree.root(),
        extensions: vec![],
    };
    let signed = sign_checkpoint(&cp, &log).unwrap();
    let cosigned = witness.cosign(&signed).unwrap();
    let with_ext = Checkpoint {
        extensions: vec!["lupus extension line".into()],
        ..cp.clone()
    };
    let tampered = signed.replacen(&SIZE.to_string(), &(SIZE + 1).to_string(), 1);
    let other_key = NoteSigner::from_secret("lupus.example/interop", [9; 32]).unwrap();
    let notes = vec![
        json!({"vkey": log.verifier_key(), "note": signed, "text": cp.to_body(), "unknown_signatures": 0}),
        json!({"vkey": log.verifier_key(), "note": cosigned, "text": cp.to_body(), "unknown_signatures": 1}),
        json!({"vkey": log.verifier_key(), "note": sign_checkpoint(&with_ext, &log).unwrap(),
               "text": with_ext.to_body(), "unknown_signatures": 0}),
        json!({"vkey": log.verifier_key(), "note": tampered, "must_fail": true}),
        json!({"vkey": other_key.verifier_key(), "note": signed, "must_fail": true}),
    ];
    let signers = vec![
        json!({"skey": log.private_key(), "text": cp.to_body(), "note": signed}),
        json!({"skey": witness.private_key(), "text": "any text\n", "note": witness.sign("any text\n").unwrap()}),
    ];

    let cases = json!({
        "entries": entries.iter().map(|e| B64.encode(e)).collect::<Vec<_>>(),
        "roots": roots,
        "inclusion": inclusion,
        "consistency": consistency,
        "tile_size": SIZE,
        "tiles": tiles,
        "notes": notes,
        "signers": signers,
    });
    let out = GoInterop::build().run(&["check"], Some(cases.to_string().as_bytes()));
    let checks: usize = out
        .trim()
        .strip_prefix("ok ")
        .and_then(|s| s.strip_suffix(" checks"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected Go output {out:?}"));
    // Every case above was checked (plus the tile-reader checks).
    let expected = sizes.len()
        + inclusion.len()
        + consistency.len()
        + tiles.len()
        + 7
        + notes.len()
        + signers.len();
    assert_eq!(checks, expected, "Go ran a different number of checks");
}

#[test]
fn rust_reads_go_keys_and_go_signed_notes() {
    let text = "lupus.example/go\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
    let out = GoInterop::build().run(&["sign", "lupus.example/go", text], None);
    let v: Value = serde_json::from_str(&out).unwrap();
    let (skey, vkey, note, witness) = (
        v["skey"].as_str().unwrap(),
        v["vkey"].as_str().unwrap(),
        v["note"].as_str().unwrap(),
        v["witness_key"].as_str().unwrap(),
    );
    let verifier = NoteVerifier::parse(vkey).unwrap();
    let opened = open_note(note, std::slice::from_ref(&verifier)).unwrap();
    assert_eq!(opened.text, text);
    assert_eq!(opened.verified_by.len(), 1);
    assert_eq!(
        opened.other_signatures.len(),
        1,
        "Go's witness cosignature is kept"
    );
    let witness = NoteVerifier::parse(witness).unwrap();
    let both = open_note(note, &[verifier.clone(), witness.clone()]).unwrap();
    assert_eq!(both.verified_by.len(), 2);

    // Go's private key string, read here, signs exactly what Go signed.
    let signer = NoteSigner::from_private_key(skey).unwrap();
    assert_eq!(signer.verifier_key(), vkey);
    let ours = signer.sign(text).unwrap();
    assert!(note.starts_with(&ours), "Go {note:?} vs ours {ours:?}");

    // It is a checkpoint body, and opens as one with the origin's key.
    let cp = open_checkpoint(note, &verifier).unwrap();
    assert_eq!(cp.checkpoint.size, TreeSize(3));
    assert_eq!(cp.other_signatures[0].name, "witness.go.example");

    // Go's note, altered, is rejected here.
    let altered = note.replacen("\n3\n", "\n4\n", 1);
    assert!(open_note(&altered, &[verifier]).is_err());
}
