//! Trials of what crosses a link: values that cannot be encoded, bad frames, protocol
//! versions, failing init hooks, and large and small tasks.

use super::*;
use crate::conformance::{fnv1a, FailingInit, Refuse};
use looppool_core::{Error, Fault, SubmitError};

pub(super) async fn values_that_cannot_be_encoded_are_refused_at_the_call<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 1).max_frame(64 * 1024)).await?;
    match pool.try_submit(Task::Unencodable(Refuse)) {
        Err(SubmitError::Encode(Task::Unencodable(Refuse), message)) => {
            ensure!(
                message.contains("cannot encode the task"),
                "message {message:?}"
            )
        }
        other => return Err(format!("expected an encode error, got {other:?}")),
    }
    match pool.submit(Task::Blob(vec![7; 100_000])).await {
        Err(SubmitError::Encode(Task::Blob(blob), message)) => {
            ensure!(blob.len() == 100_000, "the task came back changed");
            ensure!(message.contains("frame limit"), "message {message:?}");
        }
        other => return Err(format!("expected a size error, got {other:?}")),
    }
    let answer = pool
        .call(Task::PutUnencodable)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        answer == Out::Doubled(1),
        "PutUnencodable answered {answer:?}"
    );
    stop_gracefully(&pool).await
}

pub(super) async fn a_bad_frame_from_a_worker_ends_only_its_link_with_a_clear_error<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let cases = [
        (Fault::Oversized, "exceeds the limit"),
        (Fault::Garbage, "malformed"),
        (Fault::Truncated, "truncated frame"),
    ];
    for (fault, expected) in cases {
        // With a result credit of 1 and no consumer, `Hold` stays in flight until the link ends.
        let pool = start(pool::<A>(m, 2).concurrency(2).result_credit(1)).await?;
        let before = pool
            .submit_to(0, Task::Hold)
            .await
            .map_err(|e| e.to_string())?;
        let faulty = pool
            .submit_to(0, Task::Fault(fault))
            .await
            .map_err(|e| e.to_string())?;
        for (what, handle) in [("the faulty task", faulty), ("a task beside it", before)] {
            match handle.await {
                Err(TaskError::Lost {
                    worker: 0,
                    cause: Some(cause),
                    ..
                }) => {
                    ensure!(
                        cause.contains(expected),
                        "{fault:?}: {what} lost with {cause:?}"
                    )
                }
                other => return Err(format!("{fault:?}: {what} ended with {other:?}")),
            }
        }
        let answer = pool
            .call_to(1, Task::Double(2))
            .await
            .map_err(|e| format!("{fault:?}: {e}"))?;
        ensure!(
            answer == Out::Doubled(4),
            "{fault:?}: worker 1 answered {answer:?}"
        );
        // `Hold`'s first output still waits unread and holds the worker number's only credit:
        // reading it hands that credit to the replacement.
        let unread = pool.outputs().try_recv().map(|d| d.into_value());
        ensure!(
            unread == Some(Out::Seq(0)),
            "{fault:?}: the unread output was {unread:?}"
        );
        // The worker that broke the protocol is treated as dead, and replaced.
        let rt = A::runtime();
        let again = within(
            &*rt,
            Duration::from_secs(30),
            "the replacement",
            pool.call_to(0, Task::WhoAmI),
        )
        .await
        .map_err(|e| format!("{fault:?}: {e}: {pool:?}"))?
        .map_err(|e| format!("{fault:?}: {e}"))?;
        ensure!(
            again == Out::Worker(0),
            "{fault:?}: the replacement answered {again:?}"
        );
        let stopped = pool.stop().await;
        ensure!(stopped.killed().is_empty(), "{fault:?}: {stopped:?}");
    }
    Ok(())
}

pub(super) async fn a_protocol_version_mismatch_fails_the_start_clearly<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    match pool::<A>(m, 2).protocol_version(99).start().await {
        Err(Error::Handshake { reason, .. }) => {
            ensure!(
                reason.contains("protocol version mismatch"),
                "reason {reason:?}"
            );
            ensure!(
                reason.contains("99"),
                "the reason does not name the version: {reason:?}"
            );
            Ok(())
        }
        other => Err(format!("expected a handshake error, got {other:?}")),
    }
}

pub(super) async fn a_failing_init_hook_fails_the_start_clearly<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let started = Pool::<FailingInit>::builder(A::runtime())
        .start_method(m)
        .workers(2)
        .start()
        .await;
    match started {
        Err(Error::Init { message, .. }) => {
            ensure!(
                message.contains("no database at db.invalid"),
                "message {message:?}"
            );
            Ok(())
        }
        other => Err(format!("expected an init error, got {other:?}")),
    }
}

pub(super) async fn large_and_small_tasks_arrive_intact_in_order<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 1).capacity(8)).await?;
    // Sizes on both sides of the writer's direct-write threshold, interleaved.
    let sizes = [16, 70_000, 1 << 20, 3, 65_535, 65_536, 300_001, 0];
    let blobs: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (j * 31 + i * 7) as u8).collect())
        .collect();
    let outputs = pool.outputs();
    let submitted = async {
        let mut handles = Vec::new();
        for blob in &blobs {
            handles.push(pool.submit(Task::Digest(blob.clone())).await);
        }
        handles
    };
    let (handles, mut seen) = draining(&outputs, submitted).await;
    for (i, handle) in handles.into_iter().enumerate() {
        let handle = handle.map_err(|e| format!("task {i}: {e}"))?;
        let (ended, more) = draining(&outputs, handle).await;
        seen.extend(more);
        ended.map_err(|e| format!("task {i}: {e}"))?;
    }
    let got: Vec<_> = seen.into_iter().map(|(_, _, out)| out).collect();
    let expected: Vec<_> = blobs
        .iter()
        .map(|b| Out::Digest(b.len(), fnv1a(b)))
        .collect();
    ensure!(got == expected, "digests {got:?}, expected {expected:?}");
    stop_gracefully(&pool).await
}
