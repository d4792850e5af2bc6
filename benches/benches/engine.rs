//! Engine throughput: scan + hash of a generated tree, and fast_rsync signature / diff / apply
//! over the chunked delta layer. `cargo bench -p rdist-benches`.

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sync_core::delta::{DELTA_CHUNK, Differ, apply_chunk, file_signature, read_chunk};
use sync_core::filter::Filter;
use sync_core::hash::HashCache;
use sync_core::scan::scan;
use sync_core::walk::WalkRoot;

/// Deterministic pseudo-random bytes.
fn bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A project-like tree: `files` files of 1-16 KiB in nested packages, plus ignored noise.
fn make_tree(dir: &Path, files: usize) -> u64 {
    let mut total = 0;
    for i in 0..files {
        let d = dir.join(format!("pkg{}/sub{}", i % 17, i % 5));
        std::fs::create_dir_all(&d).unwrap();
        let data = bytes(1024 + (i * 977) % (15 * 1024), i as u32);
        total += data.len() as u64;
        std::fs::write(d.join(format!("m{i}.py")), &data).unwrap();
        if i % 10 == 0 {
            std::fs::create_dir_all(d.join("__pycache__")).unwrap();
            std::fs::write(d.join(format!("__pycache__/m{i}.pyc")), &data[..64]).unwrap();
        }
    }
    total
}

fn scan_and_hash(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let total = make_tree(tmp.path(), 3000);
    let filter = Filter::new::<&str>(&[]).unwrap();
    let roots = [WalkRoot {
        abs: tmp.path().to_owned(),
        filter_rel: None,
        dest_rel: None,
    }];
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Bytes(total));
    g.sample_size(20);
    g.bench_function("cold_hash_3000_files", |b| {
        b.iter(|| {
            let mut cache = HashCache::in_memory();
            black_box(scan(tmp.path(), &roots, &filter, &mut cache).unwrap())
        })
    });
    let cache_dir = tempfile::tempdir().unwrap();
    let cache_file = cache_dir.path().join("cache.bin");
    let mut warm = HashCache::load(cache_file.clone());
    scan(tmp.path(), &roots, &filter, &mut warm).unwrap();
    warm.save().unwrap();
    g.bench_function("cached_3000_files", |b| {
        b.iter(|| {
            let mut cache = HashCache::load(cache_file.clone());
            black_box(scan(tmp.path(), &roots, &filter, &mut cache).unwrap())
        })
    });
    g.finish();
}

fn delta(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("delta");
    g.sample_size(10);
    for size in [1usize << 20, 16 << 20] {
        let old = bytes(size, 7);
        let mut new = old.clone();
        let mid = size / 2;
        for b in &mut new[mid..mid + 4096] {
            *b = b.wrapping_add(1);
        }
        let path = tmp.path().join(format!("old{size}"));
        std::fs::write(&path, &old).unwrap();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("signature", size), &size, |b, &s| {
            b.iter(|| black_box(file_signature(&path, s as u64).unwrap()))
        });
        let sig = file_signature(&path, size as u64).unwrap();
        g.bench_with_input(BenchmarkId::new("diff", size), &size, |b, _| {
            b.iter(|| {
                let d = Differ::new(sig.clone()).unwrap();
                let n: usize = new
                    .chunks(DELTA_CHUNK)
                    .enumerate()
                    .map(|(i, c)| d.diff(i, c).unwrap().len())
                    .sum();
                black_box(n)
            })
        });
        let d = Differ::new(sig.clone()).unwrap();
        let deltas: Vec<Vec<u8>> = new
            .chunks(DELTA_CHUNK)
            .enumerate()
            .map(|(i, c)| d.diff(i, c).unwrap())
            .collect();
        g.bench_with_input(BenchmarkId::new("apply", size), &size, |b, _| {
            let mut f = std::fs::File::open(&path).unwrap();
            let (mut base, mut out) = (Vec::new(), Vec::new());
            b.iter(|| {
                for (i, delta) in deltas.iter().enumerate() {
                    read_chunk(&mut f, i, &mut base).unwrap();
                    apply_chunk(&base, delta, DELTA_CHUNK, &mut out).unwrap();
                }
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, scan_and_hash, delta);
criterion_main!(benches);
