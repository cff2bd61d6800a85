//! Measures the write path with its journal and the change feed against a
//! running agenda server (run by `scripts/bench-feed`, which starts a
//! throwaway PostgreSQL and the release binary):
//!
//! 1. CreateContact throughput and latency with 8 concurrent callers;
//! 2. commit-to-watcher latency: a watcher follows the feed while 8 callers
//!    create contacts; each change's lag is the time from its commit (its
//!    `time`) to its arrival at the watcher;
//! 3. the server's RSS with 1,000 open watch streams, and the time one
//!    change takes to reach all of them.
//!
//! ```sh
//! BENCH_ADDR=127.0.0.1:50051 BENCH_PID=1234 BENCH_SECRET=… cargo run --release --example feed_bench
//! ```

use std::time::{Duration, Instant};

use agenda::api::{
    Contact, CreateContactRequest, WatchChangesRequest, change_service_client::ChangeServiceClient,
    contact_service_client::ContactServiceClient,
};
use tonic::{Request, transport::Channel};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn create(name: String) -> CreateContactRequest {
    CreateContactRequest {
        contact: Some(Contact { display_name: name, organization: "ACME".into(), ..Default::default() }),
        request_id: String::new(),
    }
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?.connect().await?)
}

/// `callers` tasks, each on its own connection, creating contacts of
/// `tenant` for `duration`; returns every call's latency.
async fn create_load(addr: &str, token: &str, callers: usize, duration: Duration) -> anyhow::Result<Vec<Duration>> {
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let mut client = ContactServiceClient::new(channel(addr).await?);
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let end = Instant::now() + duration;
            let mut i = 0;
            while Instant::now() < end {
                let start = Instant::now();
                client.create_contact(authorized(create(format!("c{caller}-{i}")), &token)).await?;
                latencies.push(start.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort();
    Ok(all)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let addr = env("BENCH_ADDR", "127.0.0.1:50051");
    let pid = env("BENCH_PID", "");
    let secret = env("BENCH_SECRET", "");
    let seconds: u64 = env("BENCH_SECONDS", "10").parse()?;
    let watchers: usize = env("BENCH_WATCHERS", "1000").parse()?;
    // BENCH_PHASES=create measures a server without a change feed too.
    let phases = env("BENCH_PHASES", "create,lag,watchers");
    let token = |tenant: &str| {
        agenda::devmode::mint(&secret, tenant, "bench", "contacts.write changes.read", Duration::from_secs(3600))
            .map_err(anyhow::Error::msg)
    };

    // 1. CreateContact at c=8.
    let latencies = create_load(&addr, &token("bench")?, 8, Duration::from_secs(seconds)).await?;
    println!(
        "CreateContact c=8: {:.0} calls/s over {seconds} s, p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        latencies.len() as f64 / seconds as f64,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );

    if !phases.contains("lag") {
        return Ok(());
    }

    // 2. Commit-to-watcher latency under the same load.
    let lag_token = token("lag")?;
    let mut watcher = ChangeServiceClient::new(channel(&addr).await?)
        .watch_changes(authorized(WatchChangesRequest::default(), &lag_token))
        .await?
        .into_inner();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let watching = tokio::spawn(async move {
        let mut lags = Vec::new();
        loop {
            let change = tokio::select! {
                message = watcher.message() => match message {
                    Ok(Some(change)) => change,
                    _ => break,
                },
                _ = &mut stopped => break,
            };
            let now = chrono::Utc::now();
            if let Some(time) = change.time {
                let committed = chrono::DateTime::from_timestamp(time.seconds, time.nanos as u32).unwrap_or(now);
                lags.push((now - committed).to_std().unwrap_or_default());
            }
        }
        lags
    });
    let written = create_load(&addr, &lag_token, 8, Duration::from_secs(seconds / 2)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(());
    let mut lags = watching.await?;
    lags.sort();
    println!(
        "commit to watcher (c=8 writers, {} changes): p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        written.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or_default()
    );

    if !phases.contains("watchers") {
        return Ok(());
    }

    // 3. RSS with 1,000 open watch streams, and one change fanned out to all.
    let idle_token = token("idle")?;
    let before = rss_kib(&pid);
    let mut streams = Vec::new();
    for group in 0..watchers.div_ceil(100) {
        let client = ChangeServiceClient::new(channel(&addr).await?);
        for _ in 0..100.min(watchers - group * 100) {
            let stream = client
                .clone()
                .watch_changes(authorized(WatchChangesRequest::default(), &idle_token))
                .await?
                .into_inner();
            streams.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open = rss_kib(&pid);
    println!(
        "RSS: {:.1} MiB before, {:.1} MiB with {} open watch streams ({:.1} KiB per stream)",
        before as f64 / 1024.0,
        open as f64 / 1024.0,
        streams.len(),
        (open.saturating_sub(before)) as f64 / streams.len().max(1) as f64
    );
    let start = Instant::now();
    let mut client = ContactServiceClient::new(channel(&addr).await?);
    client.create_contact(authorized(create("fan-out".into()), &idle_token)).await?;
    let mut received = Vec::new();
    for mut stream in streams {
        received.push(tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
            Instant::now()
        }));
    }
    let mut last = start;
    for task in received {
        last = last.max(task.await?);
    }
    println!("one change reached all {watchers} watchers {:.2?} after its call began", last - start);
    Ok(())
}
