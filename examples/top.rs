//! A live view of a pool in the terminal: per worker, CPU, memory, loop lag, queued and
//! in-flight tasks, redrawn every second from [`Pool::stats`](looppool::Pool::stats)
//! while a feeder keeps the workers busy with jobs of random size.
//!
//! ```text
//! cargo run --release --example top                          # q, Esc or Ctrl-C to quit
//! cargo run --release --example top -- --workers 4
//! cargo run --release --example top -- --headless --frames 3 # print frames, no terminal
//! ```
//!
//! Piped or redirected, it prints frames as with `--headless`.

use looppool::{async_trait, BoxError, Context, Failure, Pool, PoolStats, Worker, WorkerStats};
use ratatui::backend::{Backend, TestBackend};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Style, Stylize};
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{Frame, Terminal};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Counts primes below its task by trial division: CPU work of a size the feeder picks.
struct Primes;

#[async_trait(?Send)]
impl Worker for Primes {
    type Task = u64;
    type Output = u64;
    type Error = Failure;

    async fn init(_ctx: &Context<u64>) -> Result<Self, BoxError> {
        Ok(Primes)
    }

    async fn process(&self, limit: u64, ctx: &Context<u64>) -> Result<(), Failure> {
        let is_prime = |n: u64| {
            n >= 2
                && (2..)
                    .take_while(|d| d * d <= n)
                    .all(|d| !n.is_multiple_of(d))
        };
        ctx.put((2..limit).filter(|&n| is_prime(n)).count() as u64)
            .await?;
        Ok(())
    }
}

/// Tasks one worker may hold: the scale of the queue bars.
const CAPACITY: usize = 4;

fn main() -> Result<(), BoxError> {
    looppool::init(&[looppool::worker::<Primes>()]);
    let args: Vec<String> = std::env::args().collect();
    let number = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1)?.parse::<usize>().ok()
    };
    let workers = number("--workers").unwrap_or(2);
    // Without a terminal to draw in (output piped or redirected), print frames instead.
    let headless = args.iter().any(|a| a == "--headless")
        || !std::io::IsTerminal::is_terminal(&std::io::stdout());
    let frames = number("--frames");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let pool = looppool::builder::<Primes>()
            .name("top")
            .workers(workers)
            .capacity(CAPACITY)
            .stats_interval(Some(Duration::from_millis(250)))
            .blocked_threshold(Duration::from_millis(500))
            .start()
            .await?;
        let fed = Cell::new(0u64);
        let feeder = feed(&pool, &fed);
        let shown = async {
            if headless {
                let mut terminal = Terminal::new(TestBackend::new(110, 6 + workers as u16))?;
                show(&mut terminal, &pool, &fed, frames.unwrap_or(3), None).await?;
                print!("{}", text_of(terminal.backend()));
                Ok::<_, BoxError>(())
            } else {
                let mut terminal = ratatui::init();
                let quit = keys();
                let shown = show(
                    &mut terminal,
                    &pool,
                    &fed,
                    frames.unwrap_or(usize::MAX),
                    Some(quit),
                )
                .await;
                ratatui::restore();
                shown
            }
        };
        let shown = tokio::select! {
            shown = shown => shown,
            () = feeder => Ok(()),
        };
        let stopped = pool.stop().await;
        println!("pool stopped (graceful: {})", stopped.is_graceful());
        shown
    })
}

/// Keeps every worker's queue full of jobs of random size; never ends.
async fn feed(pool: &Pool<Primes>, fed: &Cell<u64>) {
    let outputs = pool.outputs();
    tokio::task::spawn_local(async move { while outputs.recv().await.is_some() {} });
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    loop {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let limit = 20_000 + seed % 300_000;
        match pool.submit(limit).await {
            Ok(handle) => drop(handle),
            Err(_) => return std::future::pending().await,
        }
        fed.set(fed.get() + 1);
    }
}

/// A channel that yields once the user presses q, Esc or Ctrl-C.
fn keys() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || loop {
        let Ok(Event::Key(key)) = event::read() else {
            continue;
        };
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
            let _ = tx.send(());
            return;
        }
    });
    rx
}

/// Draws `frames` frames, one a second, or until `quit` fires.
async fn show<B: Backend>(
    terminal: &mut Terminal<B>,
    pool: &Pool<Primes>,
    fed: &Cell<u64>,
    frames: usize,
    mut quit: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<(), BoxError>
where
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for _ in 0..frames {
        match &mut quit {
            Some(quit) => tokio::select! {
                _ = tick.tick() => {}
                _ = quit => return Ok(()),
            },
            None => {
                tick.tick().await;
            }
        }
        let stats = pool.stats();
        terminal.draw(|frame| draw(frame, &stats, fed.get(), started.elapsed()))?;
    }
    Ok(())
}

/// A bar of `width` cells, `fraction` of them full.
fn bar(fraction: f64, width: usize) -> String {
    let full = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("{}{}", "█".repeat(full), "·".repeat(width - full))
}

fn draw(frame: &mut Frame<'_>, stats: &PoolStats, fed: u64, up: Duration) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(format!(
            "looppool top: pool {:?}, {} workers, up {:.0?}, {fed} jobs fed, {} done",
            stats.name,
            stats.workers.len(),
            up,
            stats.completed()
        ))
        .bold(),
        head,
    );
    let most_rss = stats
        .workers
        .iter()
        .map(|w| w.rss)
        .max()
        .unwrap_or(1)
        .max(1);
    let rows = stats.workers.iter().map(|w: &WorkerStats| {
        let lag_ms = w.loop_lag.as_secs_f64() * 1e3;
        Row::new(vec![
            format!("{}", w.worker),
            w.pid.map_or("-".into(), |p| p.to_string()),
            format!("{} {:>3.0}%", bar(w.cpu, 10), w.cpu * 100.0),
            format!(
                "{} {:>5.1} MiB",
                bar(w.rss as f64 / most_rss as f64, 6),
                w.rss as f64 / (1 << 20) as f64
            ),
            format!("{} {lag_ms:>5.0} ms", bar(lag_ms / 1000.0, 6)),
            format!("{} {}", bar(w.queued as f64 / CAPACITY as f64, 4), w.queued),
            format!("{} {}", bar(w.running as f64, 1), w.running),
            format!("{}", w.completed),
            format!("{}/{}", w.failed, w.lost),
            if w.blocked_for.is_some() {
                "BLOCKED".into()
            } else {
                format!("{:?}", w.status)
            },
        ])
    });
    let widths = [
        Constraint::Length(3),
        Constraint::Length(7),
        Constraint::Length(15),
        Constraint::Length(17),
        Constraint::Length(15),
        Constraint::Length(7),
        Constraint::Length(4),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(8),
    ];
    let header = Row::new(vec![
        "#",
        "pid",
        "cpu",
        "rss",
        "loop lag",
        "queued",
        "run",
        "done",
        "fail/lost",
        "status",
    ])
    .style(Style::new().bold());
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" workers ")),
        body,
    );
    frame.render_widget(Paragraph::new("q, Esc or Ctrl-C: quit").dim(), foot);
}

/// The text a test backend holds, one line per row.
fn text_of(backend: &TestBackend) -> String {
    let buffer = backend.buffer();
    let width = buffer.area.width as usize;
    let mut text = String::new();
    for row in buffer.content.chunks(width) {
        let line: String = row.iter().map(|cell| cell.symbol()).collect();
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}
