//! Measures the two reads an activity log lives on, over real gRPC against
//! the real server on PostgreSQL: "every activity of one contact" (a
//! participants.contact_id filter) and a filtered page deep in the list
//! (`type = "call"`, page 90 of 25 in the default order, or
//! `BENCH_DEEP_PAGE`), with PostgreSQL's EXPLAIN ANALYZE of each.
//!
//! The activities are written by SQL (`generate_series`), not through the
//! API, so a million of them take seconds; the API then reads them as it
//! reads its own. Run it with `scripts/bench activity_bench` (a throwaway
//! PostgreSQL), or point `AGENDA_DATABASE_URL` at an empty database:
//!
//! ```sh
//! AGENDA_DATABASE_URL=postgres://… BENCH_ACTIVITIES=1000000 BENCH_TENANTS=100 \
//!   cargo run --release --example activity_bench
//! # page 1,000 of one tenant's million activities:
//! BENCH_TENANTS=1 BENCH_DEEP_PAGE=1000 scripts/bench activity_bench
//! ```

use std::time::{Duration, Instant};

use agenda::{
    api::{ListActivitiesRequest, activity_service_client::ActivityServiceClient},
    config::{Options, Settings},
    query::{ListParams, list},
    startup::Application,
    store::activity::SPEC,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tonic::{Request, transport::Channel};

const SECRET: &str = "bench-secret-bench-secret-bench-secret";
const PAGE_SIZE: i32 = 25;
/// Contacts per tenant; every activity has two of them as participants.
const CONTACTS: i64 = 1000;
/// How deep the filtered page is, unless `BENCH_DEEP_PAGE` says.
const DEEP_PAGE: i64 = 90;

fn env_number(name: &str, default: i64) -> i64 {
    std::env::var(name).ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn request(filter: &str, page_token: &str) -> ListActivitiesRequest {
    ListActivitiesRequest {
        page_size: PAGE_SIZE,
        page_token: page_token.into(),
        filter: filter.into(),
        ..Default::default()
    }
}

/// The median of 31 calls of one page, and how many activities it held.
async fn median_time(
    client: &mut ActivityServiceClient<Channel>,
    token: &str,
    filter: &str,
    page_token: &str,
) -> anyhow::Result<(Duration, usize)> {
    let mut times = Vec::new();
    let mut count = 0;
    for _ in 0..31 {
        let start = Instant::now();
        let page = client.list_activities(authorized(request(filter, page_token), token)).await?.into_inner();
        times.push(start.elapsed());
        count = page.activities.len();
    }
    times.sort();
    Ok((times[times.len() / 2], count))
}

/// Seeds `tenants` tenants of [`CONTACTS`] contacts each and `activities`
/// activities spread evenly over them, with the system types.
async fn seed(conn: &mut AsyncPgConnection, tenants: i64, activities: i64) -> anyhow::Result<()> {
    let per_tenant = activities / tenants;
    let statements = [
        format!(
            "INSERT INTO contacts (tenant_id, id, display_name, revision, create_time, update_time, created_by, updated_by) \
             SELECT 't' || t, 'c-' || t || '-' || c, 'Contact ' || c, 1, 0, 0, 'bench', 'bench' \
             FROM generate_series(1, {tenants}) t, generate_series(1, {CONTACTS}) c"
        ),
        format!(
            "INSERT INTO activity_types (tenant_id, id, display_name, sort_order, system, revision, create_time, update_time, created_by, updated_by) \
             SELECT 't' || t, k, initcap(k), 0, true, 1, 0, 0, '', '' \
             FROM generate_series(1, {tenants}) t, unnest(ARRAY['note','call','meeting','email','sms','letter','comment','task']) k"
        ),
        // Activity i of a tenant has contacts i mod 1000 and (i * 7) mod 1000,
        // type call for every fourth, and occurs i minutes after the epoch.
        format!(
            "INSERT INTO activities (tenant_id, id, activity_type, subject, status, priority, occur_time, \
               participants, revision, create_time, update_time, created_by, updated_by) \
             SELECT 't' || t, md5(t || '/' || i)::uuid::text, \
               (ARRAY['call','note','meeting','email'])[i % 4 + 1], 'Activity ' || i, 1, 2, i::bigint * 60000000, \
               jsonb_build_array( \
                 jsonb_build_object('contact_id', 'c-' || t || '-' || (i % {CONTACTS} + 1), 'role', 'target'), \
                 jsonb_build_object('contact_id', 'c-' || t || '-' || ((i * 7) % {CONTACTS} + 1), 'role', 'source')), \
               1, 0, 0, 'bench', 'bench' \
             FROM generate_series(1, {tenants}) t, generate_series(1, {per_tenant}) i"
        ),
        "ANALYZE contacts".to_string(),
        "ANALYZE activities".to_string(),
        "ANALYZE activity_types".to_string(),
    ];
    for statement in statements {
        diesel::sql_query(statement).execute(conn).await?;
    }
    Ok(())
}

async fn explain(conn: &mut AsyncPgConnection, filter: &str, page_token: &str) -> anyhow::Result<()> {
    let params = ListParams {
        page_size: PAGE_SIZE,
        page_token: page_token.into(),
        filter: filter.into(),
        order_by: String::new(),
        show_deleted: false,
    };
    let plan = list::plan(&SPEC, "t1", &params, true)?;
    #[derive(diesel::QueryableByName)]
    struct Line {
        #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let sql = plan.sql(plan.anchor.as_deref(), plan.page_size + 1)?;
    let mut explain = sql.clone();
    explain.text = format!("EXPLAIN (ANALYZE, BUFFERS) {}", sql.text);
    let mut pg = agenda::store::Conn::Pg(conn);
    let lines: Vec<Line> = agenda::load_sql!(&mut pg, explain);
    println!("  SQL: {}", sql.text);
    for line in lines {
        println!("    {}", line.line);
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("AGENDA_DATABASE_URL")
        .map_err(|_| anyhow::anyhow!("set AGENDA_DATABASE_URL to a postgres:// URL of an empty database"))?;
    let activities = env_number("BENCH_ACTIVITIES", 1_000_000);
    let tenants = env_number("BENCH_TENANTS", 100).max(1);
    let deep_page = env_number("BENCH_DEEP_PAGE", DEEP_PAGE).max(2);
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
    let mut client = ActivityServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let token = agenda::devmode::mint(SECRET, "t1", "bench", "activities.read", Duration::from_secs(3600))
        .map_err(anyhow::Error::msg)?;

    let mut conn = AsyncPgConnection::establish(&url).await?;
    let start = Instant::now();
    seed(&mut conn, tenants, activities).await?;
    println!(
        "seeded {activities} activities over {tenants} tenants ({} contacts each) by SQL in {:.1?}",
        CONTACTS,
        start.elapsed()
    );

    let contact = "participants.contact_id = \"c-1-42\"";
    let (time, count) = median_time(&mut client, &token, contact, "").await?;
    println!("\nactivities of one contact ({contact}, newest first, page_size {PAGE_SIZE}):");
    println!("  median {time:.2?} over 31 calls, {count} activities on the page");
    explain(&mut conn, contact, "").await?;

    let calls = "type = \"call\"";
    let mut token_at = String::new();
    for _ in 1..deep_page {
        let page = client.list_activities(authorized(request(calls, &token_at), &token)).await?.into_inner();
        anyhow::ensure!(!page.next_page_token.is_empty(), "fewer than {deep_page} pages of calls");
        token_at = page.next_page_token;
    }
    let (first, _) = median_time(&mut client, &token, calls, "").await?;
    let (deep, count) = median_time(&mut client, &token, calls, &token_at).await?;
    println!("\na filtered page deep in the list ({calls}, newest first, page_size {PAGE_SIZE}):");
    println!("  page 1:   median {first:.2?} over 31 calls");
    println!(
        "  page {deep_page}: median {deep:.2?} over 31 calls, {count} activities on the page ({:.2} x page 1)",
        deep.as_secs_f64() / first.as_secs_f64()
    );
    explain(&mut conn, calls, &token_at).await?;
    Ok(())
}
