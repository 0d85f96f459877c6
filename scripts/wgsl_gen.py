"""What the WGSL generators share: an entry point's signature and the file's layout.

`gen_matmul_rows.py` and `gen_attention_rows.py` import it; run them from anywhere
(each adds its own folder to the import path)."""


def signature(w, name, lanes):
    """Writes a compute entry point's attributes and parameters, up to its `{`."""
    w(f"@compute @workgroup_size({lanes})")
    w(f"fn {name}(")
    w("    @builtin(workgroup_id) wid: vec3<u32>,")
    w("    @builtin(num_workgroups) nwg: vec3<u32>,")
    w("    @builtin(local_invocation_index) lane: u32,")
    w(") {")


def emit(header, entries):
    """Prints the header, then every entry point's lines."""
    lines = [header.rstrip("\n")]
    for entry in entries:
        lines.extend(entry)
    print("\n".join(lines))
