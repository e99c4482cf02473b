//! Python Looppool's question: a web server whose `/fast` requests must stay fast while `/slow`
//! requests do seconds of CPU work (factorials, as in the seed).
//!
//! The server runs on the parent's single-threaded event loop. With the pool, `/slow` hands
//! the factorial to a worker process and the loop goes on answering `/fast`; without it, the
//! factorial runs on the loop and every request waits behind it. A client fires 3 slow then 20
//! fast requests, as Python Looppool's example client did, against each setup, and the example prints both
//! timelines.
//!
//! ```text
//! cargo run --release --example web              # 50000!: seconds of CPU per request
//! cargo run --example web -- --n 6000           # smaller, for a debug build
//! ```

use looppool::{async_trait, BoxError, Context, Failure, Pool, Worker};
use looppool_examples::http::{self, Client};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The number of decimal digits of `n!`, computed the slow way (base 10⁹ limbs).
fn factorial_digits(n: u64) -> usize {
    const BASE: u64 = 1_000_000_000;
    let mut limbs: Vec<u64> = vec![1];
    for k in 2..=n {
        let mut carry = 0;
        for limb in limbs.iter_mut() {
            let v = *limb * k + carry;
            *limb = v % BASE;
            carry = v / BASE;
        }
        while carry > 0 {
            limbs.push(carry % BASE);
            carry /= BASE;
        }
    }
    let top = limbs.last().copied().unwrap_or(1);
    (limbs.len() - 1) * 9 + top.to_string().len()
}

/// The worker: computes factorials.
struct Factorials;

#[async_trait(?Send)]
impl Worker for Factorials {
    type Task = u64;
    type Output = usize;
    type Error = Failure;

    async fn init(_ctx: &Context<usize>) -> Result<Self, BoxError> {
        Ok(Factorials)
    }

    async fn process(&self, n: u64, ctx: &Context<usize>) -> Result<(), Failure> {
        ctx.put(factorial_digits(n)).await?;
        Ok(())
    }
}

/// Starts the server on a loopback port; `/slow` uses `pool` if there is one, else the loop.
async fn start_server(pool: Option<Rc<Pool<Factorials>>>, n: u64) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::task::spawn_local(http::serve(listener, move |request| {
        let pool = pool.clone();
        async move {
            match request.uri().path() {
                "/slow" => {
                    let digits = match &pool {
                        Some(pool) => pool.call(n).await.unwrap_or(0),
                        None => factorial_digits(n),
                    };
                    http::response(format!("{n}! has {digits} digits"), &[])
                }
                _ => http::response("fast", &[]),
            }
        }
    }));
    Ok(address)
}

/// Fires 3 slow then 20 fast requests at once; returns when each finished, in finishing order.
async fn fire(address: SocketAddr) -> Vec<(Duration, String)> {
    let start = Instant::now();
    let requests = (0..3)
        .map(|i| ("slow", i))
        .chain((0..20).map(|i| ("fast", i)))
        .map(|(kind, i)| {
            tokio::task::spawn_local(async move {
                let client = Client::new();
                let answered = client.get(&format!("http://{address}/{kind}")).await;
                let status = answered.map_or(0, |(status, _, _)| status);
                (start.elapsed(), format!("{kind} {i} (status {status})"))
            })
        })
        .collect::<Vec<_>>();
    let mut done = Vec::new();
    for request in requests {
        done.push(request.await.expect("a request task"));
    }
    done.sort();
    done
}

fn print_timeline(title: &str, done: &[(Duration, String)]) {
    println!("\n{title}");
    for (at, what) in done {
        println!("  done at {:>6} ms: {what}", at.as_millis());
    }
    let last_fast = done
        .iter()
        .filter(|(_, w)| w.starts_with("fast"))
        .map(|(t, _)| *t)
        .max();
    let first_slow = done
        .iter()
        .filter(|(_, w)| w.starts_with("slow"))
        .map(|(t, _)| *t)
        .min();
    if let (Some(fast), Some(slow)) = (last_fast, first_slow) {
        println!(
            "  the last fast request took {} ms; the first slow one {} ms",
            fast.as_millis(),
            slow.as_millis()
        );
    }
}

async fn run(n: u64) -> Result<(), BoxError> {
    let pool = looppool::builder::<Factorials>()
        .name("web")
        // One worker per slow request, so the three run in parallel.
        .workers(3)
        .start()
        .await?;
    let pool = Rc::new(pool);
    let with_pool = fire(start_server(Some(pool.clone()), n).await?).await;
    print_timeline(
        &format!("with the pool ({n}! in worker processes):"),
        &with_pool,
    );
    pool.stop().await;

    let inline = fire(start_server(None, n).await?).await;
    print_timeline(
        &format!("without the pool ({n}! on the server's own loop):"),
        &inline,
    );
    Ok(())
}

fn main() -> Result<(), BoxError> {
    looppool::init(&[looppool::worker::<Factorials>()]);
    let args: Vec<String> = std::env::args().collect();
    let n = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(50_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&runtime, run(n))
}
