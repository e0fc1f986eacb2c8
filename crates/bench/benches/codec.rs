//! Micro-benchmarks of the hot encoders and decoders: frame decode/encode, OpRaw
//! batch building (the room batcher's work) and the comet's frame counting.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use herald_proto::raw::RawBatch;
use herald_proto::{decode_frame, Frame, MAX_BODY};

fn codec(c: &mut Criterion) {
    let body = br#"{"t":1795300000000000000,"s":12345}"#;
    let frame = Frame::new(1, 1000, 7, body.to_vec()).to_bytes();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode", |b| {
        b.iter(|| decode_frame(black_box(&frame), MAX_BODY))
    });
    g.bench_function("encode", |b| {
        let f = Frame::new(1, 1000, 7, body.to_vec());
        b.iter(|| black_box(&f).to_bytes())
    });
    g.finish();

    let mut g = c.benchmark_group("room_batch");
    g.throughput(Throughput::Elements(20));
    g.bench_function("build_20", |b| {
        b.iter(|| {
            let mut batch = RawBatch::with_capacity(20 * (16 + body.len()));
            for _ in 0..20 {
                batch.push(1000, black_box(body));
            }
            batch.finish()
        })
    });
    let mut batch = RawBatch::default();
    for _ in 0..20 {
        batch.push(1000, body);
    }
    let batch = batch.finish();
    g.bench_function("count_frames_20", |b| {
        b.iter(|| herald_comet::hub::count_frames(black_box(&batch)))
    });
    g.bench_function("unpack_20", |b| {
        b.iter(|| herald_proto::raw::unpack(black_box(&batch)))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
