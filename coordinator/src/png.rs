//! A loss-curve PNG without a plotting library: an RGB canvas, straight lines, and a
//! PNG encoder that stores the image uncompressed (deflate "stored" blocks), which
//! every PNG reader accepts. A 640x360 chart is about 700 KB; simplicity wins here.

/// An RGB canvas.
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<[u8; 3]>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![[255; 3]; w * h],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0
            && y >= 0
            && (x as usize) < self.w
            && (y as usize) < self.h
            && let Some(p) = self.px.get_mut(y as usize * self.w + x as usize)
        {
            *p = c;
        }
    }

    /// A line of width `t` pixels (Bresenham, thickened by a square brush).
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), t: i64, c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for ox in -(t / 2)..=(t / 2) {
                for oy in -(t / 2)..=(t / 2) {
                    self.set(x + ox, y + oy, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// The PNG file bytes.
    pub fn to_png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.h * (1 + 3 * self.w));
        for row in self.px.chunks(self.w.max(1)) {
            raw.push(0); // filter: none
            for p in row {
                raw.extend_from_slice(p);
            }
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &zlib_stored(&raw));
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let mut blocks = data.chunks(65_535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(b) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = b.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(b);
    }
    let (mut a, mut s) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        s = (s + a) % 65_521;
    }
    out.extend_from_slice(&((s << 16) | a).to_be_bytes());
    out
}

/// A line chart of `values` (one point per round) with axes; no text.
pub fn loss_chart(values: &[f32]) -> Vec<u8> {
    let (w, h, m) = (640i64, 360i64, 40i64);
    let mut c = Canvas::new(w as usize, h as usize);
    let axis = [60, 60, 60];
    c.line((m, m), (m, h - m), 2, axis);
    c.line((m, h - m), (w - m, h - m), 2, axis);
    let finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.len() >= 2 {
        let lo = finite.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = finite.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let span = (hi - lo).max(1e-6);
        let pt = |i: usize, v: f32| {
            let x = m + (i as i64) * (w - 2 * m) / (finite.len() as i64 - 1);
            let y = m + ((hi - v) / span * (h - 2 * m) as f32) as i64;
            (x, y)
        };
        for (i, pair) in finite.windows(2).enumerate() {
            c.line(pt(i, pair[0]), pt(i + 1, pair[1]), 3, [200, 40, 40]);
        }
        for (i, v) in finite.iter().enumerate() {
            let (x, y) = pt(i, *v);
            c.line((x - 4, y), (x + 4, y), 5, [30, 30, 160]);
        }
    }
    c.to_png()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_png_is_well_formed() {
        let png = loss_chart(&[4.0, 3.0, 2.5]);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(&png[png.len() - 8..png.len() - 4], b"IEND");
        // The IDAT payload holds every row: h * (1 + 3w) bytes plus framing.
        let idat_len = u32::from_be_bytes([png[33], png[34], png[35], png[36]]) as usize;
        assert!(idat_len > 360 * (1 + 3 * 640));
    }
}
