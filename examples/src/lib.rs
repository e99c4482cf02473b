//! Helpers the examples share. The examples themselves live beside this crate (`quickstart.rs`,
//! `fetch.rs`, `web.rs`, `stateful.rs`, `subscribe.rs`, `metrics.rs`, `top.rs`,
//! `tokio_main.rs`, `async_std_main.rs`, `smol_main.rs`), and `tests/` runs each of them.
#![forbid(unsafe_code)]

pub mod http;
pub mod square;
