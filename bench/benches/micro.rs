//! Micro-benchmarks of the codec and the sans-IO state: the per-task cost the pool adds before
//! any byte reaches a socket.
//!
//! `cargo bench -p looppool-bench --bench micro`
// The group function criterion's macro defines has no doc comment.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use looppool_core::protocol::bench::{decode_tasks, encode_output, encode_task};
use looppool_core::state::{PoolState, Route, Transmit};
use serde_bytes::ByteBuf;
use std::hint::black_box;

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [16usize, 1 << 20] {
        let task = ByteBuf::from(vec![7u8; size]);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("encode task {size} B"), |b| {
            let mut buf = Vec::with_capacity(size + 64);
            b.iter(|| {
                buf.clear();
                encode_task(&mut buf, black_box(42), &task);
            })
        });
        group.bench_function(format!("encode output {size} B"), |b| {
            let mut buf = Vec::with_capacity(size + 64);
            b.iter(|| {
                buf.clear();
                encode_output(&mut buf, black_box(42), &task);
            })
        });
    }
    // 256 small frames, as one read of a busy link brings them.
    let mut frames = Vec::new();
    for id in 0..256 {
        encode_task(&mut frames, id, &ByteBuf::from(vec![7u8; 16]));
    }
    group.throughput(Throughput::Elements(256));
    group.bench_function("decode 256 tasks of 16 B", |b| {
        b.iter(|| assert_eq!(decode_tasks::<ByteBuf>(black_box(&frames)), 256))
    });
    group.finish();
}

fn state(c: &mut Criterion) {
    let mut group = c.benchmark_group("state");
    // Each iteration runs 1000 tasks through the state.
    group.throughput(Throughput::Elements(1000));
    for workers in [2usize, 64] {
        group.bench_function(format!("submit, transmit, end ({workers} workers)"), |b| {
            b.iter_batched_ref(
                || {
                    let mut s = PoolState::<u32>::new(workers, 128, 256);
                    for k in 0..workers {
                        s.handle_ready(k, std::time::Instant::now()).expect("ready");
                    }
                    s
                },
                |s| {
                    for _ in 0..1000 {
                        let (worker, id) = s.submit(Route::Any, 7).expect("room");
                        match s.poll_transmit(worker) {
                            Some(Transmit::Task { .. }) => {}
                            other => panic!("expected the task, got {other:?}"),
                        }
                        s.handle_output(worker, Some(id)).expect("an output");
                        s.handle_ack(worker);
                        s.handle_done(worker, id).expect("its end");
                        while s.poll_transmit(worker).is_some() {}
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, codec, state);
criterion_main!(benches);
