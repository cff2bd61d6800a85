//! Measures keyset pagination: the time of page 1 and of page 1,000 of a
//! filtered ListContacts, over real gRPC against the real server, and prints
//! PostgreSQL's EXPLAIN ANALYZE of the page-1,000 query.
//!
//! Run it with `scripts/bench` (starts a throwaway PostgreSQL), or point
//! `AGENDA_DATABASE_URL` at an empty database yourself:
//!
//! ```sh
//! AGENDA_DATABASE_URL=postgres://… BENCH_CONTACTS=100000 cargo run --release --example list_bench
//! ```

use std::time::{Duration, Instant};

use agenda::{
    api::{
        BatchCreateContactsRequest, Contact, CreateContactRequest, ListContactsRequest,
        contact_service_client::ContactServiceClient,
    },
    config::{Options, Settings},
    query::{ListParams, list},
    startup::Application,
    store::contact::SPEC,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tonic::{Request, transport::Channel};

const SECRET: &str = "bench-secret-bench-secret-bench-secret";
const FILTER: &str = "organization = \"ACME\"";
const ORDER_BY: &str = "display_name";
const PAGE_SIZE: i32 = 25;

fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn list_request(page_token: &str) -> ListContactsRequest {
    ListContactsRequest {
        page_size: PAGE_SIZE,
        page_token: page_token.into(),
        filter: FILTER.into(),
        order_by: ORDER_BY.into(),
        show_deleted: false,
        read_mask: None,
    }
}

async fn median_time(
    client: &mut ContactServiceClient<Channel>,
    token: &str,
    page_token: &str,
) -> anyhow::Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..31 {
        let start = Instant::now();
        let page = client.list_contacts(authorized(list_request(page_token), token)).await?.into_inner();
        times.push(start.elapsed());
        anyhow::ensure!(page.contacts.len() == PAGE_SIZE as usize, "a short page");
    }
    times.sort();
    Ok(times[times.len() / 2])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("AGENDA_DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("set AGENDA_DATABASE_URL to a postgres:// URL"))?;
    let contacts: usize = std::env::var("BENCH_CONTACTS").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let settings = Settings::resolve(Options {
        database_url: Some(url.clone()),
        data_dir: Some(dir.path().to_path_buf()),
        listen: Some("127.0.0.1:0".parse()?),
        auth_hs256_secret: Some(SECRET.into()),
        ..Options::default()
    })
    .map_err(anyhow::Error::msg)?;
    let app = Application::build(settings).await?;
    let port = app.port();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))?.connect().await?;
    let mut client = ContactServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let token = agenda::devmode::mint(SECRET, "bench", "bench", "contacts.write", Duration::from_secs(3600))
        .map_err(anyhow::Error::msg)?;

    let start = Instant::now();
    let organizations = ["ACME", "Initech", "Globex", "Umbrella"];
    for chunk in (0..contacts).collect::<Vec<_>>().chunks(500) {
        let requests = chunk
            .iter()
            .map(|i| CreateContactRequest {
                contact: Some(Contact {
                    display_name: format!("Person {:06}", (i * 7919) % contacts),
                    organization: organizations[i % organizations.len()].into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .collect();
        client.batch_create_contacts(authorized(BatchCreateContactsRequest { requests }, &token)).await?;
    }
    let seeding = start.elapsed();
    println!(
        "seeded {contacts} contacts in {seeding:.1?} ({:.0} contacts/s through BatchCreateContacts)",
        contacts as f64 / seeding.as_secs_f64()
    );

    let mut conn = AsyncPgConnection::establish(&url).await?;
    diesel::sql_query("ANALYZE contacts").execute(&mut conn).await?;

    // Walk to page 1,000 (or the last full page), keeping each page's token.
    let mut tokens = vec![String::new()];
    let walk = Instant::now();
    while tokens.len() < 1000 {
        let page =
            client.list_contacts(authorized(list_request(tokens.last().map_or("", |t| t)), &token)).await?.into_inner();
        if page.next_page_token.is_empty() {
            break;
        }
        tokens.push(page.next_page_token);
    }
    let pages = tokens.len();
    println!("walked {pages} pages of {PAGE_SIZE} in {:.1?}", walk.elapsed());
    let last = tokens.last().cloned().unwrap_or_default();
    let first_time = median_time(&mut client, &token, "").await?;
    let last_time = median_time(&mut client, &token, &last).await?;
    println!("filter {FILTER:?}, order_by {ORDER_BY:?}, page_size {PAGE_SIZE}");
    println!("page 1:     median {first_time:.2?} over 31 calls (end to end over gRPC)");
    println!("page {pages}:  median {last_time:.2?} over 31 calls");

    let params = ListParams {
        page_size: PAGE_SIZE,
        page_token: last,
        filter: FILTER.into(),
        order_by: ORDER_BY.into(),
        show_deleted: false,
    };
    let plan = list::plan(&SPEC, "bench", &params, true)?;
    #[derive(diesel::QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let sql = plan.sql(plan.anchor.as_deref(), plan.page_size + 1)?;
    let mut explain = sql.clone();
    explain.text = format!("EXPLAIN (ANALYZE, BUFFERS) {}", sql.text);
    let mut pg = agenda::store::Conn::Pg(&conn);
    let lines: Vec<Line> = agenda::load_sql!(&mut pg, explain);
    println!("\nSQL: {}\n\nEXPLAIN (ANALYZE, BUFFERS) of page {pages}:", sql.text);
    for line in lines {
        println!("  {}", line.line);
    }
    Ok(())
}
