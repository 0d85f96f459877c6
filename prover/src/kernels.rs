//! Reference CPU kernels on plain slices: the arithmetic behind every operator.
//!
//! DESIGN.md (Determinism): each output element is computed in one fixed order, with
//! `+ - *` and comparisons only, so any machine that does IEEE binary32 arithmetic gets
//! the same bits. The matrix product is blocked and vectorised *across* output elements
//! (an MR x NR register tile of independent accumulators), never across the reduction:
//! every element is `acc = 0; for p in 0..k { acc = acc + a[i,p] * b[p,j] }` in
//! increasing `p`, exactly as [`matmul_naive`] writes it. Rust never contracts `a*b+c`
//! into a fused multiply-add, so the vector code gives the scalar code's bits, which the
//! tests check on awkward shapes. Outputs are flushed ([`det::ftz`]) when stored.
//!
//! Indexing in the hot loops uses iterators and fixed-size chunks so that the compiler
//! sees the bounds; the operator layer (`ops.rs`) has already checked every shape.

use crate::det;

/// Rows of the register tile.
const MR: usize = 4;

/// Logical dimensions of a product `C[m, n] = op(A)[m, k] * op(B)[k, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatMulDims {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// `A` is stored as `[k, m]` and used transposed.
    pub transpose_a: bool,
    /// `B` is stored as `[n, k]` and used transposed.
    pub transpose_b: bool,
}

impl MatMulDims {
    #[inline(always)]
    fn a_at(&self, a: &[f32], i: usize, p: usize) -> f32 {
        if self.transpose_a {
            a[p * self.m + i]
        } else {
            a[i * self.k + p]
        }
    }

    #[inline(always)]
    fn b_at(&self, b: &[f32], p: usize, j: usize) -> f32 {
        if self.transpose_b {
            b[j * self.k + p]
        } else {
            b[p * self.n + j]
        }
    }
}

/// The definition of the product: one scalar loop per element. Used by tests and the
/// known-answer suite as the specification the fast kernel must equal bit for bit.
pub fn matmul_naive(a: &[f32], b: &[f32], d: MatMulDims) -> Vec<f32> {
    let mut c = vec![0.0f32; d.m * d.n];
    for i in 0..d.m {
        for j in 0..d.n {
            let mut acc = 0.0f32;
            for p in 0..d.k {
                acc += d.a_at(a, i, p) * d.b_at(b, p, j);
            }
            c[i * d.n + j] = det::ftz(acc);
        }
    }
    c
}

/// The fast product: packs `B` into NR-column panels (zero padded), then runs the
/// register-tile kernel over the full depth `k` for each tile of MR rows of `A`, read
/// in place.
/// Same bits as [`matmul_naive`]. The caller guarantees `a.len() == m*k` and
/// `b.len() == k*n`.
///
/// The body is compiled in three versions: AVX-512 (a 4 x 64 tile), AVX2 (4 x 32) and
/// the build target's baseline (4 x 32 with SSE2 on x86_64; wasm32 in the browser). The
/// best one the CPU supports is picked at run time (`multiversion` keeps the
/// `target_feature` plumbing out of this crate). The versions differ only in how many
/// output elements they compute side by side; none enables fused multiply-add
/// contraction (Rust never contracts `a * b + c`), so all give the same bits, which the
/// tests check for every version.
pub fn matmul(a: &[f32], b: &[f32], d: MatMulDims) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
        return matmul_avx512(a, b, d);
    }
    matmul_avx2(a, b, d)
}

/// The AVX-512 version (or, on a CPU without it, the same 4 x 32 tile at baseline).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+avx"))]
fn matmul_avx512(a: &[f32], b: &[f32], d: MatMulDims) -> Vec<f32> {
    matmul_body::<64, 16>(a, b, d)
}

/// The AVX2 version (or, on a CPU without it, the baseline).
#[multiversion::multiversion(targets("x86_64+avx2+avx"))]
fn matmul_avx2(a: &[f32], b: &[f32], d: MatMulDims) -> Vec<f32> {
    matmul_body::<32, 8>(a, b, d)
}

/// The baseline version only (SSE2 on x86_64), for the tests.
#[cfg(test)]
fn matmul_baseline(a: &[f32], b: &[f32], d: MatMulDims) -> Vec<f32> {
    matmul_body::<32, 8>(a, b, d)
}

#[inline(always)]
fn matmul_body<const NR: usize, const HN: usize>(a: &[f32], b: &[f32], d: MatMulDims) -> Vec<f32> {
    let MatMulDims { m, k, n, .. } = d;
    let mut c = vec![0.0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    let n_panels = n.div_ceil(NR);
    // Pack B: panel q holds rows p = 0..k of columns q*NR .. q*NR+NR.
    let mut bp = vec![0.0f32; n_panels * k * NR];
    for (q, panel) in bp.chunks_exact_mut(k * NR).enumerate() {
        let j0 = q * NR;
        let w = NR.min(n - j0);
        for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
            if d.transpose_b {
                for (jj, slot) in row.iter_mut().take(w).enumerate() {
                    *slot = b[(j0 + jj) * k + p];
                }
            } else {
                row[..w].copy_from_slice(&b[p * n + j0..p * n + j0 + w]);
            }
        }
    }
    // A is read in place, MR rows at a time: the kernel broadcasts one element of each
    // row per step of the depth, a scalar load whether A is packed or not, and packing
    // it (a strided gather when A is not transposed) cost as much as a quarter of the
    // product at n = 256. The rows past m of the last tile read row m - 1 instead, and
    // their results are not stored.
    let m_tiles = m.div_ceil(MR);
    let rows_of = |r: usize| -> [usize; MR] { std::array::from_fn(|ii| (r * MR + ii).min(m - 1)) };
    // Each B panel stays in cache while every row tile of A passes over it.
    let mut tile = [[0.0f32; NR]; MR];
    for (q, bpanel) in bp.chunks_exact(k * NR).enumerate() {
        let j0 = q * NR;
        let w = NR.min(n - j0);
        for r in 0..m_tiles {
            let rows = rows_of(r);
            if d.transpose_a {
                // A is [k, m]: step p of the depth reads row p at the tile's columns.
                let a_steps = a.chunks_exact(m).map(|at_p| rows.map(|i| at_p[i]));
                micro_kernel::<NR, HN>(a_steps, bpanel, &mut tile);
            } else {
                // A is [m, k]: the tile's rows, read side by side.
                let [r0, r1, r2, r3] = rows.map(|i| &a[i * k..(i + 1) * k]);
                let a_steps = r0
                    .iter()
                    .zip(r1)
                    .zip(r2)
                    .zip(r3)
                    .map(|(((&x0, &x1), &x2), &x3)| [x0, x1, x2, x3]);
                micro_kernel::<NR, HN>(a_steps, bpanel, &mut tile);
            }
            let i0 = r * MR;
            let h = MR.min(m - i0);
            for (ii, row) in tile.iter().take(h).enumerate() {
                let out = &mut c[(i0 + ii) * n + j0..(i0 + ii) * n + j0 + w];
                for (o, &x) in out.iter_mut().zip(row.iter()) {
                    *o = det::ftz(x);
                }
            }
        }
    }
    c
}

/// One MR x NR tile over the whole depth: `acc[i][j] = acc[i][j] + a[p][i] * b[p][j]`
/// for p in increasing order, each accumulator starting at +0. `a` yields the tile's
/// MR elements of A for p = 0, 1, ...; `bp` is the packed B panel.
///
/// The tile is held as four MR x NR/4 quarters, each updated by a loop over its 4 rows
/// of whole-row `axpy`s. This shape is what the compiler turns into one vector
/// multiply and add per row and quarter with every accumulator in a register (16 on
/// AVX-512: 4 rows x 64 columns); four quarters ran about 5% faster than two halves.
/// Measured alternatives (one loop over 8 rows, MR = 6 or 8, or 4 rows of 32 columns
/// in one array) were vectorised across rows with gathers instead and ran 10-50x
/// slower.
#[inline(always)]
fn micro_kernel<const NR: usize, const HN: usize>(
    a: impl Iterator<Item = [f32; MR]>,
    bp: &[f32],
    tile: &mut [[f32; NR]; MR],
) {
    let mut q0 = [[0.0f32; HN]; MR];
    let mut q1 = [[0.0f32; HN]; MR];
    let mut q2 = [[0.0f32; HN]; MR];
    let mut q3 = [[0.0f32; HN]; MR];
    for (a, b) in a.zip(bp.chunks_exact(NR)) {
        let quarter =
            |i: usize| -> &[f32; HN] { b[i * HN..(i + 1) * HN].try_into().unwrap_or(&[0.0; HN]) };
        let (b0, b1, b2, b3) = (quarter(0), quarter(1), quarter(2), quarter(3));
        for (row, &ai) in q0.iter_mut().zip(&a) {
            axpy(row, ai, b0);
        }
        for (row, &ai) in q1.iter_mut().zip(&a) {
            axpy(row, ai, b1);
        }
        for (row, &ai) in q2.iter_mut().zip(&a) {
            axpy(row, ai, b2);
        }
        for (row, &ai) in q3.iter_mut().zip(&a) {
            axpy(row, ai, b3);
        }
    }
    for (i, t) in tile.iter_mut().enumerate() {
        t[..HN].copy_from_slice(&q0[i]);
        t[HN..2 * HN].copy_from_slice(&q1[i]);
        t[2 * HN..3 * HN].copy_from_slice(&q2[i]);
        t[3 * HN..].copy_from_slice(&q3[i]);
    }
}

/// `row[j] = row[j] + a * b[j]` for every column of the tile (vectorised across j).
#[inline(always)]
fn axpy<const HN: usize>(row: &mut [f32; HN], a: f32, b: &[f32; HN]) {
    for j in 0..HN {
        row[j] += a * b[j];
    }
}

/// Flushes every element of a freshly computed buffer (the storage rule).
fn flush(mut v: Vec<f32>) -> Vec<f32> {
    for x in &mut v {
        *x = det::ftz(*x);
    }
    v
}

/// Gathers rows of `table` (`[vocab, dim]`) for each id: `out[n] = table[ids[n]]`.
/// Ids are already checked to be integers below `vocab`.
pub fn embedding(table: &[f32], ids: &[usize], dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        out.extend_from_slice(&table[id * dim..(id + 1) * dim]);
    }
    out
}

/// Gradient of [`embedding`]: scatter-adds `dy[n]` into row `ids[n]` for n in increasing
/// order, so a row hit several times accumulates in one fixed order.
pub fn embedding_backward(ids: &[usize], dy: &[f32], vocab: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; vocab * dim];
    for (&id, g) in ids.iter().zip(dy.chunks_exact(dim)) {
        for (o, &x) in out[id * dim..(id + 1) * dim].iter_mut().zip(g) {
            *o += x;
        }
    }
    flush(out)
}

/// `x[r, c] + bias[c]`.
pub fn add_bias(x: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(bias.len()) {
        out.extend(row.iter().zip(bias).map(|(&a, &b)| a + b));
    }
    flush(out)
}

/// Column sums `out[c] = sum_r dy[r, c]`, rows in increasing order.
pub fn sum_rows(dy: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; cols];
    for row in dy.chunks_exact(cols) {
        for (o, &x) in out.iter_mut().zip(row) {
            *o += x;
        }
    }
    flush(out)
}

/// Elementwise `x + y`.
pub fn add(x: &[f32], y: &[f32]) -> Vec<f32> {
    flush(x.iter().zip(y).map(|(&a, &b)| a + b).collect())
}

/// `max(x, 0)`, with `-0` and `0` both giving `+0`.
pub fn relu(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&a| if a > 0.0 { a } else { 0.0 }).collect()
}

/// `dy` where `x > 0`, else `+0`.
pub fn relu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(dy)
        .map(|(&a, &g)| if a > 0.0 { g } else { 0.0 })
        .collect()
}

/// `x[b*seq + t, :] + pos[t, :]` for rows of width `dim`.
pub fn add_position(x: &[f32], pos: &[f32], seq: usize, dim: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for (r, row) in x.chunks_exact(dim).enumerate() {
        let t = r % seq;
        let p = &pos[t * dim..(t + 1) * dim];
        out.extend(row.iter().zip(p).map(|(&a, &b)| a + b));
    }
    flush(out)
}

/// Gradient of [`add_position`] for the table: `out[t] = sum_b dy[b*seq + t]`, batches
/// in increasing order; rows `t >= seq` of the `[context, dim]` table stay zero.
pub fn add_position_backward(dy: &[f32], seq: usize, context: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; context * dim];
    for (r, row) in dy.chunks_exact(dim).enumerate() {
        let t = r % seq;
        for (o, &x) in out[t * dim..(t + 1) * dim].iter_mut().zip(row) {
            *o += x;
        }
    }
    flush(out)
}

/// Outputs of [`layer_norm`]: the normalised rows and the per-row statistics the
/// backward pass needs.
pub struct LayerNormOut {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
}

/// Row-wise layer normalisation: `mean = (sum x) * (1/c)`, `var = (sum (x-mean)^2) *
/// (1/c)`, `rstd = rsqrt(var + eps)`, `y = ((x - mean) * rstd) * gamma + beta`; sums in
/// increasing column order, `1/c` from [`det::recip_count`].
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> LayerNormOut {
    let c = gamma.len();
    let inv_c = det::recip_count(c);
    let rows = x.len() / c;
    let mut y = Vec::with_capacity(x.len());
    let mut mean = Vec::with_capacity(rows);
    let mut rstd = Vec::with_capacity(rows);
    for row in x.chunks_exact(c) {
        let mut s = 0.0f32;
        for &v in row {
            s += v;
        }
        let mu = det::ftz(s * inv_c);
        let mut q = 0.0f32;
        for &v in row {
            let d = v - mu;
            q += d * d;
        }
        let var = q * inv_c;
        let rs = det::rsqrt(var + eps);
        for ((&v, &g), &b) in row.iter().zip(gamma).zip(beta) {
            y.push(det::ftz((v - mu) * rs * g + b));
        }
        mean.push(mu);
        rstd.push(rs);
    }
    LayerNormOut { y, mean, rstd }
}

/// Gradients of [`layer_norm`]. With `xhat = (x - mean) * rstd` and `g = dy * gamma`:
/// `dx = (g - s1 * (1/c) - xhat * (s2 * (1/c))) * rstd` where `s1 = sum g`,
/// `s2 = sum g * xhat` (columns in order); `dgamma[c] = sum_r dy * xhat` and
/// `dbeta[c] = sum_r dy` (rows in order).
pub fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    let inv_c = det::recip_count(c);
    let mut dx = Vec::with_capacity(x.len());
    let mut dgamma = vec![0.0f32; c];
    let mut dbeta = vec![0.0f32; c];
    let mut xhat = vec![0.0f32; c];
    let mut g = vec![0.0f32; c];
    for (((row, dyr), &mu), &rs) in x
        .chunks_exact(c)
        .zip(dy.chunks_exact(c))
        .zip(mean)
        .zip(rstd)
    {
        let mut s1 = 0.0f32;
        let mut s2 = 0.0f32;
        for j in 0..c {
            xhat[j] = (row[j] - mu) * rs;
            g[j] = dyr[j] * gamma[j];
            s1 += g[j];
            s2 += g[j] * xhat[j];
            dgamma[j] += dyr[j] * xhat[j];
            dbeta[j] += dyr[j];
        }
        let m1 = s1 * inv_c;
        let m2 = s2 * inv_c;
        for j in 0..c {
            dx.push(det::ftz((g[j] - m1 - xhat[j] * m2) * rs));
        }
    }
    (dx, flush(dgamma), flush(dbeta))
}

/// Shape of one causal attention problem: `batch` sequences of `seq` positions, `heads`
/// heads of `head_dim` columns each; q, k, v, o are `[batch*seq, heads*head_dim]` and
/// the score/probability matrices are `[batch*heads*seq, seq]` (row `(b*heads+h)*seq+i`,
/// column `j`), with entries `j > i` held at zero.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl AttnDims {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Start of row `t` of sequence `b`, head `h` in a `[batch*seq, width]` matrix.
    fn at(&self, b: usize, t: usize, h: usize) -> usize {
        (b * self.seq + t) * self.width() + h * self.head_dim
    }
    fn score_row(&self, b: usize, h: usize, i: usize) -> usize {
        ((b * self.heads + h) * self.seq + i) * self.seq
    }
}

/// `s[i, j] = (sum_c q[i, c] * k[j, c]) * scale` for `j <= i`, zero above the diagonal;
/// `scale = rsqrt(head_dim)`.
pub fn attention_scores(q: &[f32], k: &[f32], d: AttnDims) -> Vec<f32> {
    let scale = det::rsqrt(d.head_dim as f32);
    let mut s = vec![0.0f32; d.batch * d.heads * d.seq * d.seq];
    let mut kt = vec![0.0f32; d.head_dim * d.seq];
    let mut acc = vec![0.0f32; d.seq];
    for b in 0..d.batch {
        for h in 0..d.heads {
            transpose_head(k, d, b, h, &mut kt);
            for i in 0..d.seq {
                let qi = &q[d.at(b, i, h)..d.at(b, i, h) + d.head_dim];
                causal_dots(qi, &kt, d.seq, i, &mut acc);
                let row = d.score_row(b, h, i);
                for (o, &a) in s[row..=row + i].iter_mut().zip(&acc) {
                    *o = det::ftz(a * scale);
                }
            }
        }
    }
    s
}

/// Copies head `h` of sequence `b` of a `[batch*seq, width]` matrix transposed into
/// `out` (`[head_dim, seq]`), so that dot products against every position can run
/// side by side.
fn transpose_head(x: &[f32], d: AttnDims, b: usize, h: usize, out: &mut [f32]) {
    for j in 0..d.seq {
        let row = &x[d.at(b, j, h)..d.at(b, j, h) + d.head_dim];
        for (c, &v) in row.iter().enumerate() {
            out[c * d.seq + j] = v;
        }
    }
}

/// `acc[j] = sum_c x[c] * yt[c][j]` for `j <= i`, each sum from +0 in increasing `c`
/// (the order of a plain dot product), computed for all `j` side by side.
fn causal_dots(x: &[f32], yt: &[f32], seq: usize, i: usize, acc: &mut [f32]) {
    let acc = &mut acc[..=i];
    acc.fill(0.0);
    for (&xc, col) in x.iter().zip(yt.chunks_exact(seq)) {
        for (a, &y) in acc.iter_mut().zip(&col[..=i]) {
            *a += xc * y;
        }
    }
}

/// Causal softmax of each score row `i` (row index modulo `seq`) over columns `j <= i`:
/// subtract the row max, [`det::exp`], sum in column order, multiply by
/// [`det::reciprocal`] of the sum; columns `j > i` are zero.
pub fn causal_softmax(s: &[f32], seq: usize) -> Vec<f32> {
    let mut p = vec![0.0f32; s.len()];
    for (r, (row, out)) in s.chunks_exact(seq).zip(p.chunks_exact_mut(seq)).enumerate() {
        let i = r % seq;
        softmax_into(&row[..=i], &mut out[..=i]);
    }
    p
}

/// Softmax of one row into `out`; returns the sum of exponentials (at least 1).
fn softmax_into(row: &[f32], out: &mut [f32]) -> f32 {
    let mut mx = row[0];
    for &v in row {
        if v > mx {
            mx = v;
        }
    }
    let mut sum = 0.0f32;
    for (o, &v) in out.iter_mut().zip(row) {
        let e = det::exp(v - mx);
        *o = e;
        sum += e;
    }
    let inv = det::reciprocal(sum);
    for o in out.iter_mut() {
        *o = det::ftz(*o * inv);
    }
    sum
}

/// `ds[i, j] = p[i, j] * (dp[i, j] - sum_{j' <= i} p[i, j'] * dp[i, j'])` for `j <= i`.
pub fn causal_softmax_backward(p: &[f32], dp: &[f32], seq: usize) -> Vec<f32> {
    let mut ds = vec![0.0f32; p.len()];
    for (r, ((pr, dpr), out)) in p
        .chunks_exact(seq)
        .zip(dp.chunks_exact(seq))
        .zip(ds.chunks_exact_mut(seq))
        .enumerate()
    {
        let i = r % seq;
        let mut dot = 0.0f32;
        for j in 0..=i {
            dot += pr[j] * dpr[j];
        }
        for j in 0..=i {
            out[j] = det::ftz(pr[j] * (dpr[j] - dot));
        }
    }
    ds
}

/// `o[i, c] = sum_{j <= i} p[i, j] * v[j, c]`, `j` increasing.
pub fn attention_values(p: &[f32], v: &[f32], d: AttnDims) -> Vec<f32> {
    let mut o = vec![0.0f32; d.batch * d.seq * d.width()];
    let mut acc = vec![0.0f32; d.head_dim];
    for b in 0..d.batch {
        for h in 0..d.heads {
            for i in 0..d.seq {
                let row = d.score_row(b, h, i);
                acc.fill(0.0);
                for j in 0..=i {
                    let pij = p[row + j];
                    let vj = &v[d.at(b, j, h)..d.at(b, j, h) + d.head_dim];
                    for (a, &x) in acc.iter_mut().zip(vj) {
                        *a += pij * x;
                    }
                }
                let at = d.at(b, i, h);
                for (o, &a) in o[at..at + d.head_dim].iter_mut().zip(&acc) {
                    *o = det::ftz(a);
                }
            }
        }
    }
    o
}

/// Gradients of [`attention_values`]: `dp[i, j] = sum_c do[i, c] * v[j, c]` for
/// `j <= i` (c increasing) and `dv[j, c] = sum_{i >= j} p[i, j] * do[i, c]` (i
/// increasing).
pub fn attention_values_backward(
    p: &[f32],
    v: &[f32],
    dout: &[f32],
    d: AttnDims,
) -> (Vec<f32>, Vec<f32>) {
    let mut dp = vec![0.0f32; p.len()];
    let mut dv = vec![0.0f32; v.len()];
    let mut vt = vec![0.0f32; d.head_dim * d.seq];
    let mut acc = vec![0.0f32; d.seq];
    for b in 0..d.batch {
        for h in 0..d.heads {
            transpose_head(v, d, b, h, &mut vt);
            for i in 0..d.seq {
                let row = d.score_row(b, h, i);
                let doi = &dout[d.at(b, i, h)..d.at(b, i, h) + d.head_dim];
                causal_dots(doi, &vt, d.seq, i, &mut acc);
                for (o, &a) in dp[row..=row + i].iter_mut().zip(&acc) {
                    *o = det::ftz(a);
                }
            }
            for j in 0..d.seq {
                let at = d.at(b, j, h);
                for i in j..d.seq {
                    let pij = p[d.score_row(b, h, i) + j];
                    let doi = &dout[d.at(b, i, h)..d.at(b, i, h) + d.head_dim];
                    for (a, &x) in dv[at..at + d.head_dim].iter_mut().zip(doi) {
                        *a += pij * x;
                    }
                }
            }
        }
    }
    (dp, flush(dv))
}

/// Gradients of [`attention_scores`]: `dq[i, c] = (sum_{j <= i} ds[i, j] * k[j, c]) *
/// scale` and `dk[j, c] = (sum_{i >= j} ds[i, j] * q[i, c]) * scale`, sums in
/// increasing index order, then one multiplication by the scale.
pub fn attention_scores_backward(
    q: &[f32],
    k: &[f32],
    ds: &[f32],
    d: AttnDims,
) -> (Vec<f32>, Vec<f32>) {
    let scale = det::rsqrt(d.head_dim as f32);
    let mut dq = vec![0.0f32; q.len()];
    let mut dk = vec![0.0f32; k.len()];
    for b in 0..d.batch {
        for h in 0..d.heads {
            for i in 0..d.seq {
                let row = d.score_row(b, h, i);
                let at = d.at(b, i, h);
                for j in 0..=i {
                    let g = ds[row + j];
                    let kj = &k[d.at(b, j, h)..d.at(b, j, h) + d.head_dim];
                    for (a, &x) in dq[at..at + d.head_dim].iter_mut().zip(kj) {
                        *a += g * x;
                    }
                }
            }
            for j in 0..d.seq {
                let at = d.at(b, j, h);
                for i in j..d.seq {
                    let g = ds[d.score_row(b, h, i) + j];
                    let qi = &q[d.at(b, i, h)..d.at(b, i, h) + d.head_dim];
                    for (a, &x) in dk[at..at + d.head_dim].iter_mut().zip(qi) {
                        *a += g * x;
                    }
                }
            }
        }
    }
    for x in dq.iter_mut().chain(dk.iter_mut()) {
        *x = det::ftz(*x * scale);
    }
    (dq, dk)
}

/// Mean softmax cross-entropy over rows of `logits` (`[rows, vocab]`) with one target
/// class per row. Per row: `lse = max + ln(sum exp(x - max))`, `loss_r = lse - x[t]`;
/// the loss is `(sum_r loss_r) * (1/rows)` with rows in order. Also returns the
/// probabilities for the backward pass.
pub fn softmax_cross_entropy(logits: &[f32], targets: &[usize], vocab: usize) -> (f32, Vec<f32>) {
    let mut probs = vec![0.0f32; logits.len()];
    let mut total = 0.0f32;
    for ((row, out), &t) in logits
        .chunks_exact(vocab)
        .zip(probs.chunks_exact_mut(vocab))
        .zip(targets)
    {
        let sum = softmax_into(row, out);
        let mut mx = row[0];
        for &v in row {
            if v > mx {
                mx = v;
            }
        }
        let lse = mx + det::ln(sum);
        total += lse - row[t];
    }
    (det::ftz(total * det::recip_count(targets.len())), probs)
}

/// `dlogits[r, c] = (p[r, c] - [c == t_r]) * (1/rows)`.
pub fn softmax_cross_entropy_backward(probs: &[f32], targets: &[usize], vocab: usize) -> Vec<f32> {
    let inv = det::recip_count(targets.len());
    let mut out = Vec::with_capacity(probs.len());
    for (row, &t) in probs.chunks_exact(vocab).zip(targets) {
        for (c, &p) in row.iter().enumerate() {
            let y = if c == t { 1.0 } else { 0.0 };
            out.push(det::ftz((p - y) * inv));
        }
    }
    out
}

/// Hyperparameters of one AdamW update, already validated.
#[derive(Clone, Copy, Debug)]
pub struct AdamWParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// The step number after this update (1 for the first update).
    pub step: u64,
}

/// One AdamW update (decoupled weight decay), elementwise and in this exact order:
/// `m' = b1*m + (1-b1)*g`, `v' = b2*v + (1-b2)*(g*g)`,
/// `mhat = m' * recip(1 - b1^t)`, `vhat = v' * recip(1 - b2^t)` (powers by
/// [`det::powi`]), `p' = p*(1 - lr*wd) - lr*(mhat * recip(sqrt(vhat) + eps))`.
pub fn adamw(
    p: &[f32],
    g: &[f32],
    m: &[f32],
    v: &[f32],
    h: AdamWParams,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let c1 = 1.0 - h.beta1;
    let c2 = 1.0 - h.beta2;
    let ib1 = det::reciprocal(1.0 - det::powi(h.beta1, h.step));
    let ib2 = det::reciprocal(1.0 - det::powi(h.beta2, h.step));
    let decay = 1.0 - h.lr * h.weight_decay;
    let n = p.len();
    let (mut po, mut mo, mut vo) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (((&pi, &gi), &mi), &vi) in p.iter().zip(g).zip(m).zip(v) {
        let m1 = det::ftz(h.beta1 * mi + c1 * gi);
        let v1 = det::ftz(h.beta2 * vi + c2 * (gi * gi));
        let mhat = m1 * ib1;
        let vhat = v1 * ib2;
        let denom = det::sqrt(vhat) + h.eps;
        let upd = mhat * det::reciprocal(denom);
        po.push(det::ftz(pi * decay - h.lr * upd));
        mo.push(m1);
        vo.push(v1);
    }
    (po, mo, vo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        // A small deterministic generator with a wide spread of magnitudes and signs.
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                ((s >> 8) as f32 * (1.0 / 16_777_216.0) - 0.5) * 4.0
            })
            .collect()
    }

    proptest::proptest! {
        /// For any shape and transposition, the fast product has the naive bits.
        #[test]
        fn fast_equals_naive_for_any_shape(
            m in 0usize..40, k in 0usize..40, n in 0usize..70,
            ta: bool, tb: bool, seed in 0u32..1000,
        ) {
            let a = pseudo(m * k, seed);
            let b = pseudo(k * n, seed + 7);
            let d = MatMulDims { m, k, n, transpose_a: ta, transpose_b: tb };
            let bits = |v: Vec<f32>| -> Vec<u32> { v.iter().map(|x| x.to_bits()).collect() };
            proptest::prop_assert_eq!(bits(matmul(&a, &b, d)), bits(matmul_naive(&a, &b, d)));
        }
    }

    /// Every compiled version of the fast product (AVX-512, AVX2 and the baseline; on
    /// a CPU without a feature its version runs at baseline) gives the naive bits.
    #[test]
    fn fast_equals_naive_on_awkward_shapes() {
        let shapes = [
            (1, 1, 1),
            (1, 7, 1),
            (3, 5, 17),
            (4, 16, 16),
            (5, 33, 31),
            (17, 1, 9),
            (13, 70, 47),
            (64, 64, 64),
            (9, 40, 70),
            (6, 3, 33),
            (2, 0, 3),
        ];
        for (s, &(m, k, n)) in shapes.iter().enumerate() {
            for ta in [false, true] {
                for tb in [false, true] {
                    let a = pseudo(m * k, s as u32 * 4 + 1);
                    let b = pseudo(k * n, s as u32 * 4 + 2);
                    let d = MatMulDims {
                        m,
                        k,
                        n,
                        transpose_a: ta,
                        transpose_b: tb,
                    };
                    let bits =
                        |v: Vec<f32>| -> Vec<u32> { v.iter().map(|x| x.to_bits()).collect() };
                    let slow = bits(matmul_naive(&a, &b, d));
                    let what = format!("m={m} k={k} n={n} ta={ta} tb={tb}");
                    assert_eq!(bits(matmul(&a, &b, d)), slow, "dispatched: {what}");
                    assert_eq!(bits(matmul_avx512(&a, &b, d)), slow, "avx512: {what}");
                    assert_eq!(bits(matmul_avx2(&a, &b, d)), slow, "avx2: {what}");
                    assert_eq!(bits(matmul_baseline(&a, &b, d)), slow, "baseline: {what}");
                }
            }
        }
    }

    #[test]
    fn transposes_mean_what_they_say() {
        // A = [[1,2],[3,4]], B = [[5,6],[7,8]].
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0];
        let d = |ta, tb| MatMulDims {
            m: 2,
            k: 2,
            n: 2,
            transpose_a: ta,
            transpose_b: tb,
        };
        assert_eq!(
            matmul(&a, &b, d(false, false)),
            vec![19.0, 22.0, 43.0, 50.0]
        );
        assert_eq!(matmul(&a, &b, d(true, false)), vec![26.0, 30.0, 38.0, 44.0]);
        assert_eq!(matmul(&a, &b, d(false, true)), vec![17.0, 23.0, 39.0, 53.0]);
        assert_eq!(matmul(&a, &b, d(true, true)), vec![23.0, 31.0, 34.0, 46.0]);
    }

    #[test]
    fn subnormal_products_are_flushed_on_store() {
        let a = [1e-20f32, 1e-20];
        let b = [1e-20f32, 1e-20];
        let d = MatMulDims {
            m: 1,
            k: 2,
            n: 1,
            transpose_a: false,
            transpose_b: false,
        };
        assert_eq!(matmul(&a, &b, d), vec![0.0]);
        assert_eq!(matmul_naive(&a, &b, d), vec![0.0]);
    }
}
