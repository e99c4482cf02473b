//! The pool's messages as a client of the server lays them out: forged (with a tag of its own
//! making), or sealed with the pool's secret, as a member can; and read off the wire.

use super::{Failed, SECRET};
use futures_util::StreamExt;
use looppool_nats::async_nats;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The version of the messages below.
pub(super) const VERSION: u32 = 7;

/// The pool's messages as anyone reading the protocol can lay them out; the forger appends a
/// tag of its own making, as it has not the secret.
pub(super) mod wire {
    use super::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub(crate) struct Alive {
        pub(crate) nonce: u64,
        pub(crate) seq: u64,
        pub(crate) run: u64,
    }
    #[derive(Serialize, Deserialize)]
    pub(crate) struct Beacon {
        pub(crate) run: u64,
        pub(crate) seq: u64,
    }
    #[derive(Serialize)]
    pub(crate) struct Join {
        pub(crate) version: u32,
        pub(crate) worker: String,
        pub(crate) member: String,
        pub(crate) host: String,
        pub(crate) pid: u32,
        pub(crate) capacity: u32,
        pub(crate) workers: u32,
        pub(crate) nonce: u64,
        pub(crate) replaces: Option<u64>,
    }
    #[derive(Serialize)]
    pub(crate) struct Task {
        pub(crate) run: u64,
        pub(crate) id: u64,
        pub(crate) prior: u32,
        pub(crate) payload: Vec<u8>,
    }
    #[derive(Serialize)]
    pub(crate) enum Control {
        Stop,
    }
    #[derive(Serialize)]
    pub(crate) struct Ctl {
        pub(crate) run: u64,
        pub(crate) nonce: u64,
        pub(crate) control: Control,
    }
    #[derive(Serialize)]
    pub(crate) struct Leave {
        pub(crate) nonce: u64,
        pub(crate) reason: String,
        pub(crate) returned: Vec<u64>,
    }
    #[derive(Serialize)]
    pub(crate) struct Up {
        pub(crate) nonce: u64,
        pub(crate) seq: u64,
        pub(crate) body: Vec<Body>,
    }
    #[derive(Serialize)]
    pub(crate) enum Body {
        Output {
            task: Option<u64>,
            worker: u32,
            payload: Result<Vec<u8>, String>,
        },
        End {
            id: u64,
            deliveries: u32,
            outputs: u32,
            worker: u32,
            outcome: Outcome,
        },
    }
    #[derive(Serialize)]
    pub(crate) enum Outcome {
        Done,
    }
}

/// `value` encoded, with a made-up tag.
pub(super) fn forge<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = postcard::to_stdvec(value).expect("encodable");
    bytes.extend_from_slice(&[0x5a; 32]);
    bytes
}

/// `value` encoded and sealed for `subject` with the pool's secret, as a holder of the secret
/// can.
pub(super) fn seal<T: Serialize>(subject: &str, value: &T) -> Vec<u8> {
    use ring::hmac;
    let mut body = postcard::to_stdvec(value).expect("encodable");
    let mut input = (subject.len() as u64).to_le_bytes().to_vec();
    input.extend_from_slice(subject.as_bytes());
    input.extend_from_slice(&body);
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    body.extend_from_slice(hmac::sign(&key, &input).as_ref());
    body
}

/// The body of a sealed message seen on the wire.
fn body(payload: &[u8]) -> &[u8] {
    &payload[..payload.len() - 32]
}

pub(super) async fn sniff<T: for<'de> Deserialize<'de>>(
    client: &async_nats::Client,
    subject: &str,
) -> Result<(T, bytes::Bytes), Failed> {
    let mut sub = client.subscribe(subject.to_string()).await?;
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .map_err(|_| format!("nothing seen on {subject} within 10 s"))?
        .ok_or("subscription ended")?;
    Ok((postcard::from_bytes(body(&m.payload))?, m.payload))
}
