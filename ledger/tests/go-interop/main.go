// Command go-interop checks the Lupus ledger's formats with Go's reference
// implementation, golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog.
//
// It is built and driven by ledger/tests/go_interop.rs:
//
//	go-interop check < cases.json   verifies what the Rust code produced
//	go-interop sign <name> <text>    prints a Go-generated key and signed note
//
// Any disagreement is printed and the exit status is 1.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type inclusion struct {
	Index int64    `json:"index"`
	Size  int64    `json:"size"`
	Path  []string `json:"path"`
}

type consistency struct {
	Old  int64    `json:"old"`
	New  int64    `json:"new"`
	Path []string `json:"path"`
}

type tile struct {
	Path string `json:"path"`
	Data string `json:"data"`
}

type signedNote struct {
	VKey     string `json:"vkey"`
	Note     string `json:"note"`
	Text     string `json:"text"`
	Unknown  int    `json:"unknown_signatures"`
	MustFail bool   `json:"must_fail"`
}

type signer struct {
	SKey string `json:"skey"`
	Text string `json:"text"`
	Note string `json:"note"`
}

type cases struct {
	Entries     []string      `json:"entries"`
	Roots       []sizedRoot   `json:"roots"`
	Inclusion   []inclusion   `json:"inclusion"`
	Consistency []consistency `json:"consistency"`
	TileSize    int64         `json:"tile_size"`
	Tiles       []tile        `json:"tiles"`
	Notes       []signedNote  `json:"notes"`
	Signers     []signer      `json:"signers"`
}

type sizedRoot struct {
	Size int64  `json:"size"`
	Root string `json:"root"`
}

var failures int
var checks int

func fail(format string, args ...interface{}) {
	failures++
	fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
}

func b64(s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		fail("bad base64 %q: %v", s, err)
	}
	return b
}

func hash(s string) tlog.Hash {
	h, err := tlog.ParseHash(s)
	if err != nil {
		fail("bad hash %q: %v", s, err)
	}
	return h
}

func hashes(list []string) []tlog.Hash {
	out := make([]tlog.Hash, len(list))
	for i, s := range list {
		out[i] = hash(s)
	}
	return out
}

// memory is an in-memory tlog.HashReader built by Go itself from the entries.
type memory []tlog.Hash

func (m memory) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(m)) {
			return nil, fmt.Errorf("no stored hash %d", x)
		}
		out[i] = m[x]
	}
	return out, nil
}

// served serves the Rust tiles to Go's TileHashReader, which checks them
// against the tree root before using them.
type served map[string][]byte

func (s served) Height() int { return 8 }

func (s served) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		d, ok := s[t.Path()]
		if !ok {
			return nil, fmt.Errorf("tile %s not served", t.Path())
		}
		out[i] = d
	}
	return out, nil
}

func (s served) SaveTiles([]tlog.Tile, [][]byte) {}

// goPath turns a C2SP path (tile/L/N) into Go's (tile/8/L/N).
func goPath(p string) string {
	return "tile/8/" + strings.TrimPrefix(p, "tile/")
}

func check(c cases) {
	entries := make([][]byte, len(c.Entries))
	for i, e := range c.Entries {
		entries[i] = b64(e)
	}
	var m memory
	for i, e := range entries {
		hs, err := tlog.StoredHashes(int64(i), e, m)
		if err != nil {
			fail("StoredHashes(%d): %v", i, err)
			return
		}
		m = append(m, hs...)
	}

	for _, r := range c.Roots {
		checks++
		got, err := tlog.TreeHash(r.Size, m)
		if err != nil || got != hash(r.Root) {
			fail("root of size %d: Go %v, Rust %s (%v)", r.Size, got, r.Root, err)
		}
	}

	for _, p := range c.Inclusion {
		checks++
		root, _ := tlog.TreeHash(p.Size, m)
		leaf := tlog.RecordHash(entries[p.Index])
		if err := tlog.CheckRecord(hashes(p.Path), p.Size, root, p.Index, leaf); err != nil {
			fail("CheckRecord(index %d, size %d): %v", p.Index, p.Size, err)
		}
		goProof, err := tlog.ProveRecord(p.Size, p.Index, m)
		if err != nil || !equal(goProof, hashes(p.Path)) {
			fail("ProveRecord(index %d, size %d) differs from Rust's proof (%v)", p.Index, p.Size, err)
		}
	}

	for _, p := range c.Consistency {
		checks++
		oldRoot, _ := tlog.TreeHash(p.Old, m)
		newRoot, _ := tlog.TreeHash(p.New, m)
		if err := tlog.CheckTree(hashes(p.Path), p.New, newRoot, p.Old, oldRoot); err != nil {
			fail("CheckTree(old %d, new %d): %v", p.Old, p.New, err)
		}
		goProof, err := tlog.ProveTree(p.New, p.Old, m)
		if err != nil || !equal(goProof, hashes(p.Path)) {
			fail("ProveTree(old %d, new %d) differs from Rust's proof (%v)", p.Old, p.New, err)
		}
	}

	if len(c.Tiles) > 0 {
		srv := served{}
		for _, t := range c.Tiles {
			checks++
			data := b64(t.Data)
			if strings.HasPrefix(t.Path, "tile/entries/") {
				checkBundle(t.Path, data, entries)
				continue
			}
			gt, err := tlog.ParseTilePath(goPath(t.Path))
			if err != nil {
				fail("Go cannot parse tile path %s: %v", t.Path, err)
				continue
			}
			want, err := tlog.ReadTileData(gt, m)
			if err != nil || !bytes.Equal(want, data) {
				fail("tile %s differs from Go's ReadTileData (%v)", t.Path, err)
			}
			srv[gt.Path()] = data
		}
		// Go's TileHashReader checks every tile it uses against the root.
		root, _ := tlog.TreeHash(c.TileSize, m)
		thr := tlog.TileHashReader(tlog.Tree{N: c.TileSize, Hash: root}, srv)
		checks++
		if got, err := tlog.TreeHash(c.TileSize, thr); err != nil || got != root {
			fail("TreeHash over Rust tiles: %v (%v)", got, err)
		}
		for _, i := range []int64{0, 1, 255, 256, c.TileSize / 2, c.TileSize - 1} {
			checks++
			p, err := tlog.ProveRecord(c.TileSize, i, thr)
			if err == nil {
				err = tlog.CheckRecord(p, c.TileSize, root, i, tlog.RecordHash(entries[i]))
			}
			if err != nil {
				fail("proof of %d from Rust tiles: %v", i, err)
			}
		}
	}

	for i, n := range c.Notes {
		checks++
		v, err := note.NewVerifier(n.VKey)
		if err != nil {
			fail("note %d: Go rejects verifier key %q: %v", i, n.VKey, err)
			continue
		}
		opened, err := note.Open([]byte(n.Note), note.VerifierList(v))
		if n.MustFail {
			if err == nil {
				fail("note %d: Go accepted a note that must fail", i)
			}
			continue
		}
		if err != nil {
			fail("note %d: Go cannot open it: %v", i, err)
			continue
		}
		if opened.Text != n.Text || len(opened.Sigs) != 1 || len(opened.UnverifiedSigs) != n.Unknown {
			fail("note %d: text %q, %d verified, %d unverified", i, opened.Text, len(opened.Sigs), len(opened.UnverifiedSigs))
		}
		if ok := checkCheckpoint(opened.Text); !ok {
			fail("note %d: not a checkpoint body Go can parse: %q", i, opened.Text)
		}
	}

	for i, s := range c.Signers {
		checks++
		sg, err := note.NewSigner(s.SKey)
		if err != nil {
			fail("signer %d: Go rejects private key: %v", i, err)
			continue
		}
		msg, err := note.Sign(&note.Note{Text: s.Text}, sg)
		if err != nil || string(msg) != s.Note {
			fail("signer %d: Go's note %q differs from Rust's %q (%v)", i, msg, s.Note, err)
		}
	}
}

// checkCheckpoint parses a tlog-checkpoint body the way a Go client would.
func checkCheckpoint(text string) bool {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 || lines[0] == "" {
		return false
	}
	var n int64
	if _, err := fmt.Sscanf(lines[1], "%d", &n); err != nil || fmt.Sprint(n) != lines[1] {
		return false
	}
	_, err := tlog.ParseHash(lines[2])
	return err == nil
}

func checkBundle(path string, data []byte, entries [][]byte) {
	rest := strings.TrimPrefix(path, "tile/entries/")
	width := 256
	if i := strings.Index(rest, ".p/"); i >= 0 {
		fmt.Sscanf(rest[i+3:], "%d", &width)
		rest = rest[:i]
	}
	t, err := tlog.ParseTilePath("tile/8/0/" + rest)
	if err != nil {
		fail("bundle path %s: %v", path, err)
		return
	}
	start := int(t.N) * 256
	for i := 0; i < width; i++ {
		if len(data) < 2 {
			fail("bundle %s truncated at entry %d", path, i)
			return
		}
		n := int(binary.BigEndian.Uint16(data))
		if len(data) < 2+n || !bytes.Equal(data[2:2+n], entries[start+i]) {
			fail("bundle %s entry %d differs", path, i)
			return
		}
		data = data[2+n:]
	}
	if len(data) != 0 {
		fail("bundle %s has %d trailing bytes", path, len(data))
	}
}

func equal(a, b []tlog.Hash) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func sign(name, text string) {
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	witnessSKey, witnessKey, err := note.GenerateKey(rand.Reader, "witness.go.example")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	w, err := note.NewSigner(witnessSKey)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	msg, err := note.Sign(&note.Note{Text: text}, s, w)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(map[string]string{
		"skey":        skey,
		"vkey":        vkey,
		"note":        string(msg),
		"witness_key": witnessKey,
	})
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == "sign" {
		sign(os.Args[2], os.Args[3])
		return
	}
	if len(os.Args) != 2 || os.Args[1] != "check" {
		fmt.Fprintln(os.Stderr, "usage: go-interop check < cases.json | go-interop sign <name> <text>")
		os.Exit(2)
	}
	var c cases
	if err := json.NewDecoder(os.Stdin).Decode(&c); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	check(c)
	if failures > 0 {
		fmt.Fprintf(os.Stderr, "%d of %d checks failed\n", failures, checks)
		os.Exit(1)
	}
	fmt.Printf("ok %d checks\n", checks)
}
