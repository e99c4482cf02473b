//! Python Looppool's FetchWorker: each worker builds its own HTTP client, on its own event loop, in its
//! init hook; the parent submits URLs and prints `(url, server header)` as the outputs arrive.
//!
//! To need no internet, the example first starts an HTTP server on a loopback port, whose
//! `Server` header names the path asked for.
//!
//! ```text
//! cargo run --example fetch
//! ```

use looppool::{async_trait, BoxError, Context, Failure, Worker};
use looppool_examples::http::{self, Client};

/// A worker with an HTTP client of its own. The client lives on the worker's loop and is not
/// `Send`: it could not be shared with the parent or other workers, and need not be.
struct FetchWorker {
    client: Client,
}

#[async_trait(?Send)]
impl Worker for FetchWorker {
    /// A URL to fetch.
    type Task = String;
    /// The URL and the `Server` header of its response.
    type Output = (String, Option<String>);
    type Error = Failure;

    async fn init(_ctx: &Context<Self::Output>) -> Result<Self, BoxError> {
        // Runs once in each worker process, on that worker's runtime.
        Ok(FetchWorker {
            client: Client::new(),
        })
    }

    async fn process(&self, url: String, ctx: &Context<Self::Output>) -> Result<(), Failure> {
        let (_, headers, _) = self.client.get(&url).await.map_err(Failure::from_boxed)?;
        let server = headers
            .get(hyper::header::SERVER)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        ctx.put((url, server)).await?;
        Ok(())
    }
}

async fn run() -> Result<(), BoxError> {
    // A web to fetch from, on the parent's loop.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::task::spawn_local(http::serve(listener, |request| async move {
        let server = format!("looppool-demo{}", request.uri().path().replace('/', "-"));
        http::response("hello", &[("server", &server)])
    }));

    let pool = looppool::builder::<FetchWorker>()
        .name("fetch")
        .workers(4)
        // Fetching is I/O: each worker may have several requests in flight on its loop.
        .concurrency(4)
        .start()
        .await?;
    let outputs = pool.outputs();

    let pages = [
        "python",
        "tornado",
        "google",
        "stackoverflow",
        "rust",
        "tokio",
        "smol",
        "looppool",
    ];
    for page in pages {
        // Round-robin over the workers; the outputs carry the answers.
        drop(pool.submit(format!("http://{address}/{page}")).await?);
    }
    for _ in pages {
        let Some(out) = outputs.recv().await else {
            break;
        };
        let (url, server) = &*out;
        println!("worker {}: ({url}, {server:?})", out.worker());
    }
    pool.stop().await;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    looppool::init(&[looppool::worker::<FetchWorker>()]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&runtime, run())
}
