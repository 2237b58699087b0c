//! Measures the compression levels Portico offers on a JSON API answer and an HTML
//! page: ratio and CPU time per MB of input, one thread, in process (the encoders and
//! settings of `portico-http/src/compress.rs`). Not a test; figures go to
//! docs/performance.md.
//!
//!   cargo run --release -p portico-http --example compress_levels

use std::io::Write;
use std::time::Instant;

fn json() -> Vec<u8> {
    let mut s = String::from("[");
    for i in 0..20_000 {
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item {i}\",\"price\":{}.{:02},\"tags\":[\"a\",\"b\",\"c\"],\"active\":{}}},",
            i % 97,
            i % 100,
            i % 3 == 0
        ));
    }
    s.push_str("{}]");
    s.into_bytes()
}

fn html() -> Vec<u8> {
    let mut s = String::from("<!doctype html><html><head><title>Blog</title></head><body>");
    for i in 0..3_000 {
        s.push_str(&format!(
            "<article class=\"post\" id=\"p{i}\"><h2><a href=\"/posts/{i}\">Post number {i}</a></h2><p>Lorem ipsum dolor sit amet, consectetur adipiscing elit {i}.</p></article>\n"
        ));
    }
    s.push_str("</body></html>");
    s.into_bytes()
}

/// Compressed size and CPU microseconds per MB of input, best of 3 runs, fed in 16 KiB
/// frames as a streamed response would be.
fn measure(
    data: &[u8],
    mut run: impl FnMut(&[u8]) -> std::io::Result<usize>,
) -> std::io::Result<(usize, f64)> {
    let mut best = f64::MAX;
    let mut size = 0;
    for _ in 0..3 {
        let t = Instant::now();
        size = run(data)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((size, best * 1e6 / (data.len() as f64 / 1e6)))
}

fn gzip(level: u32) -> impl FnMut(&[u8]) -> std::io::Result<usize> {
    move |data| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        for c in data.chunks(16 * 1024) {
            e.write_all(c)?;
        }
        Ok(e.finish()?.len())
    }
}

fn br(level: u32) -> impl FnMut(&[u8]) -> std::io::Result<usize> {
    move |data| {
        let mut e = brotli::CompressorWriter::new(Vec::new(), 4096, level, 22);
        for c in data.chunks(16 * 1024) {
            e.write_all(c)?;
        }
        Ok(e.into_inner().len())
    }
}

fn zstd(level: i32) -> impl FnMut(&[u8]) -> std::io::Result<usize> {
    move |data| {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), level)?;
        for c in data.chunks(16 * 1024) {
            e.write_all(c)?;
        }
        Ok(e.finish()?.len())
    }
}

fn main() -> std::io::Result<()> {
    for (name, data) in [("json", json()), ("html", html())] {
        println!("{name}: {} bytes", data.len());
        println!("| coding | level | ratio | CPU ms per MB |");
        println!("|---|---|---|---|");
        let row = |coding: &str,
                   level: String,
                   r: std::io::Result<(usize, f64)>|
         -> std::io::Result<()> {
            let (size, us) = r?;
            println!(
                "| {coding} | {level} | {:.1}× | {:.2} |",
                data.len() as f64 / size as f64,
                us / 1000.0
            );
            Ok(())
        };
        for l in [1, 3, 5, 6, 9] {
            row("gzip", l.to_string(), measure(&data, gzip(l)))?;
        }
        for l in [1, 3, 4, 5, 6, 9] {
            row("br", l.to_string(), measure(&data, br(l)))?;
        }
        for l in [1, 3, 5, 9, 19] {
            row("zstd", l.to_string(), measure(&data, zstd(l)))?;
        }
    }
    Ok(())
}
