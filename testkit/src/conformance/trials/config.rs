//! Trials of the worker configuration: the builder's value reaches every worker's init, the
//! replacements' included; one too large for a frame, or of the wrong type, fails the start
//! clearly.

use super::*;
use looppool_core::Error;

pub(super) async fn the_worker_configuration_reaches_every_init_and_every_replacement<
    A: Adapter,
>(
    m: StartMethod,
) -> Outcome {
    let config = "model v7 at the models directory".to_string();
    let configured = start(pool::<A>(m, 2).config(&config)).await?;
    let expected = Out::Config(Some(config.clone()));
    for k in 0..2 {
        let got = configured.call_to(k, Task::Config).await;
        ensure!(
            got.as_ref() == Ok(&expected),
            "worker {k}'s init got {got:?}"
        );
    }
    let before = configured.pid(1);
    kill(&configured, 1).await?;
    // A targeted call waits for the replacement, which was handed the same configuration.
    let got = configured.call_to(1, Task::Config).await;
    ensure!(
        got.as_ref() == Ok(&expected),
        "the replacement's init got {got:?}"
    );
    ensure!(
        configured.pid(1) != before || m == StartMethod::Thread,
        "worker 1 was not replaced"
    );
    stop_gracefully(&configured).await?;
    // Without a configuration, init finds none.
    let plain = start(pool::<A>(m, 1)).await?;
    let got = plain.call(Task::Config).await;
    ensure!(
        got == Ok(Out::Config(None)),
        "with no configuration: {got:?}"
    );
    stop_gracefully(&plain).await
}

pub(super) async fn a_worker_configuration_that_cannot_be_used_fails_the_start_clearly<
    A: Adapter,
>(
    m: StartMethod,
) -> Outcome {
    let huge = "x".repeat(2 << 20);
    match pool::<A>(m, 1)
        .max_frame(1 << 20)
        .config(&huge)
        .start()
        .await
    {
        Err(Error::Config(message)) => ensure!(
            message.contains("frame limit of 1048576 bytes") && message.contains("2097"),
            "the refusal: {message}"
        ),
        Err(other) => return Err(format!("an oversized configuration: {other}")),
        Ok(_) => return Err("a configuration over the frame limit was accepted".into()),
    }
    // The probe decodes its configuration as a string: a number is a failed init.
    match pool::<A>(m, 1).config(&(7u8, 7u8)).start().await {
        Err(Error::Init { message, .. }) => {
            ensure!(
                message.contains("cannot decode the worker configuration"),
                "the init's error: {message}"
            );
            Ok(())
        }
        Err(other) => Err(format!("a configuration of the wrong type: {other}")),
        Ok(_) => Err("a configuration of the wrong type was accepted".into()),
    }
}
