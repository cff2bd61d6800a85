//! Builds the server from settings and runs it: migrations, pools, the tower
//! stack (observe → limits → auth), health, reflection, the services and the
//! metrics endpoint. Tests drive it the same way with port 0
//! ([`Application::build`], then [`Application::port`] and
//! [`Application::metrics_addr`]).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::{server::NamedService, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    api::{
        self, activity_service_server::ActivityServiceServer, change_service_server::ChangeServiceServer,
        contact_service_server::ContactServiceServer, task_service_server::TaskServiceServer,
    },
    auth::{AuthLayer, Authorizer, ScopeMap, Verifier, VerifierConfig},
    config::Settings,
    feed::Feed,
    limits::{LimitLayer, TenantLimitLayer},
    listener::{self, TlsReloader},
    service::{
        activity::{ActivityApi, ActivityResource},
        activity_type::ActivityTypeResource,
        change::ChangeApi,
        contact::{ContactApi, ContactResource},
        resource::{Pipeline, Purge},
        task::{TaskApi, TaskCategoryResource, TaskResource},
    },
    store::Db,
    telemetry::{
        self,
        call::{CallLayer, MethodTable},
    },
};

/// The most bytes of metadata (HTTP/2 headers) a call may carry.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// The gRPC services whose health is reported besides the overall `""`.
const SERVICES: &[&str] = &[
    <ContactServiceServer<ContactApi> as NamedService>::NAME,
    <ActivityServiceServer<ActivityApi> as NamedService>::NAME,
    <TaskServiceServer<TaskApi> as NamedService>::NAME,
    <ChangeServiceServer<ChangeApi> as NamedService>::NAME,
];

/// A built server, bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    metrics_listener: TcpListener,
    metrics_addr: SocketAddr,
    methods: MethodTable,
    tls: Option<Arc<TlsReloader>>,
    db: Db,
    settings: Settings,
    authorizer: Authorizer,
}

impl Application {
    /// Migrates the database, opens the pools and binds the listen address.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let verifier = Verifier::new(&VerifierConfig {
            hs256_secret: settings.auth_hs256_secret.clone(),
            jwks_file: settings.auth_jwks_file.clone(),
            issuer: settings.auth_issuer.clone(),
            audience: settings.auth_audience.clone(),
        })
        .map_err(anyhow::Error::msg)?;
        let scopes = ScopeMap::from_descriptor_set(api::FILE_DESCRIPTOR_SET).map_err(anyhow::Error::msg)?;
        crate::service::mask::load_contract().map_err(anyhow::Error::msg)?;
        Db::migrate(&settings.database).await?;
        let db = Db::connect(&settings.database, settings.database_pool_size)?;
        let methods = MethodTable::from_descriptor_sets(&[
            api::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ])?;
        let tls = match &settings.tls {
            Some(files) => Some(Arc::new(TlsReloader::new(files.clone()).map_err(anyhow::Error::msg)?)),
            None => None,
        };
        let listener = TcpListener::bind(settings.listen).await?;
        let addr = listener.local_addr()?;
        let metrics_listener = TcpListener::bind(settings.metrics_listen).await?;
        let metrics_addr = metrics_listener.local_addr()?;
        Ok(Application {
            listener,
            addr,
            metrics_listener,
            metrics_addr,
            methods,
            tls,
            db,
            settings,
            authorizer: Authorizer::new(verifier, scopes),
        })
    }

    /// The port the server listens on (the real one when 0 was asked for).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the Prometheus endpoint (`/metrics`).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Serves until `shutdown` completes, then drains: health turns
    /// NOT_SERVING, new connections are refused, and in-flight calls get the
    /// grace period to finish.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        set_all(&reporter, ServingStatus::Serving).await;
        let monitor = tokio::spawn(monitor_health(self.db.clone(), reporter.clone(), self.settings.health_interval));
        let feed =
            Feed::new(self.db.clone(), self.settings.max_watchers, (self.settings.database_pool_size / 2).max(1));
        let listener = self.settings.database_listen_url.clone().map(|url| tokio::spawn(feed.clone().listen(url)));
        let _listener_guard = listener.map(AbortOnDrop);
        let (retention, budget) = (self.settings.retention, self.settings.max_response_bytes);
        let contacts = Pipeline::<ContactResource>::new(self.db.clone(), feed.clone(), retention, budget);
        let activities = Pipeline::<ActivityResource>::new(self.db.clone(), feed.clone(), retention, budget);
        let types = Pipeline::<ActivityTypeResource>::new(self.db.clone(), feed.clone(), retention, budget);
        let tasks = Pipeline::<TaskResource>::new(self.db.clone(), feed.clone(), retention, budget);
        let categories = Pipeline::<TaskCategoryResource>::new(self.db.clone(), feed.clone(), retention, budget);
        let purged: Vec<Box<dyn Purge>> = vec![
            Box::new(contacts.clone()),
            Box::new(tasks.clone()),
            Box::new(activities.clone()),
            Box::new(types.clone()),
            Box::new(categories.clone()),
        ];
        let reminders = crate::reminders::Reminders::new(self.db.clone(), feed.clone());
        let _reminders_guard = AbortOnDrop(tokio::spawn(reminders.clone().run()));
        let purger = tokio::spawn(purge_periodically(
            self.db.clone(),
            purged,
            self.settings.purge_interval,
            self.settings.change_retention,
        ));
        let metrics = tokio::spawn(telemetry::metrics::serve(self.metrics_listener, self.db.clone()));
        let _metrics_guard = AbortOnDrop(metrics);

        let settings = &self.settings;
        let max = settings.max_message_bytes;
        let health_service = health_service.max_decoding_message_size(max).max_encoding_message_size(max);
        let reflection_v1 =
            reflection_builder().build_v1()?.max_decoding_message_size(max).max_encoding_message_size(max);
        let reflection_v1alpha =
            reflection_builder().build_v1alpha()?.max_decoding_message_size(max).max_encoding_message_size(max);
        // Reads are held to the response budget; writes answer with what they
        // wrote, which the request size bounds (rendered HTML can be a few
        // times its raw text), so encoding allows a multiple of both.
        let encode = settings.max_response_bytes.max(max).saturating_mul(8);
        let contacts = ContactServiceServer::new(ContactApi::new(contacts))
            .max_decoding_message_size(max)
            .max_encoding_message_size(encode);
        let activities = ActivityServiceServer::new(ActivityApi::new(activities, types, self.db.clone(), budget))
            .max_decoding_message_size(max)
            .max_encoding_message_size(encode);
        let tasks = TaskServiceServer::new(TaskApi::new(tasks, categories, reminders))
            .max_decoding_message_size(max)
            .max_encoding_message_size(encode);
        let changes =
            ChangeServiceServer::new(ChangeApi::new(self.db.clone(), feed.clone(), settings.max_response_bytes))
                .max_decoding_message_size(max)
                .max_encoding_message_size(encode);

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
        let mut builder = Server::builder()
            // A call's metadata (headers) may be 16 KiB; a peer sending more is
            // refused at the HTTP/2 level (GOAWAY ENHANCE_YOUR_CALM).
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .http2_keepalive_interval(Some(settings.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(settings.http2_keepalive_timeout));
        if let Some(age) = settings.max_connection_age {
            builder = builder.max_connection_age(age);
        }
        // Past its age plus the grace, a connection is closed whatever runs on it.
        let lifetime = settings.max_connection_age.map(|age| age + settings.max_connection_age_grace);
        let incoming = listener::incoming(self.listener, self.tls, lifetime);
        let server = builder
            .layer(CallLayer::new(self.methods, draining_rx))
            .layer(LimitLayer::new(settings.max_concurrent_calls, max))
            .layer(AuthLayer::new(self.authorizer))
            .layer(TenantLimitLayer::new(settings.tenant_max_concurrent_calls))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(contacts)
            .add_service(activities)
            .add_service(tasks)
            .add_service(changes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            });
        tokio::pin!(server);

        tokio::select! {
            result = &mut server => {
                monitor.abort();
                purger.abort();
                return Ok(result?);
            }
            () = shutdown => {}
        }
        tracing::info!(grace = ?self.settings.shutdown_grace, "shutting down: draining in-flight calls");
        monitor.abort();
        purger.abort();
        set_all(&reporter, ServingStatus::NotServing).await;
        // Streams end with UNAVAILABLE (after passing on NOT_SERVING), then the
        // listener closes and connections get a GOAWAY.
        let _ = draining_tx.send(true);
        let _ = stop_tx.send(());
        match tokio::time::timeout(self.settings.shutdown_grace, server).await {
            Ok(result) => result?,
            Err(_) => {
                tracing::warn!("the grace period ended before every call finished; ending the rest")
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Aborts a background task when the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for service in SERVICES {
        reporter.set_service_status(*service, status).await;
    }
}

/// Reports NOT_SERVING while the database does not answer, SERVING again once it does.
async fn monitor_health(db: Db, reporter: HealthReporter, every: Duration) {
    let mut serving = true;
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        // A busy pool keeps the status as it is: the database may well be up.
        let Some(up) = db.ping().await else { continue };
        if up != serving {
            serving = up;
            if up {
                tracing::info!("the database answers again: SERVING");
                set_all(&reporter, ServingStatus::Serving).await;
            } else {
                tracing::warn!("the database does not answer: NOT_SERVING");
                set_all(&reporter, ServingStatus::NotServing).await;
            }
        }
    }
}

/// Purges expired soft-deleted resources (each with its PURGED change),
/// request ids and changes past their retention, every `interval`. Safe with
/// many replicas: on PostgreSQL each row is taken by one of them (SKIP LOCKED).
async fn purge_periodically(db: Db, resources: Vec<Box<dyn Purge>>, interval: Duration, changes: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut purged = Ok(0);
        for resource in &resources {
            purged = match purged {
                Ok(count) => resource.purge().await.map(|more| count + more),
                error => error,
            };
        }
        let purged = match purged {
            Ok(resources) => db.purge_housekeeping(changes).await.map(|rows| resources + rows),
            Err(error) => Err(error),
        };
        match purged {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged expired rows"),
            Err(error) => tracing::warn!(%error, "purge failed; will retry"),
        }
    }
}
