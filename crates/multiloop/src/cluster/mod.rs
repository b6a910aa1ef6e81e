//! The same [`Pool`](crate::Pool) across machines, through NATS JetStream
//! (feature `cluster`).
//!
//! The caller's code does not change: one builder option sends the pool's
//! tasks to a cluster instead of local worker processes.
//!
//! ```no_run
//! #[multiloop::task]
//! async fn inc(x: u64) -> u64 {
//!     x + 1
//! }
//!
//! # async fn run() -> Result<(), multiloop::Error> {
//! use multiloop::cluster::ClusterConfig;
//! let pool = multiloop::Pool::builder()
//!     .cluster(ClusterConfig::new("nats://10.0.0.1:4222", "inc-pool"))
//!     .processes(4)
//!     .concurrency(4096)
//!     .build()
//!     .await?;
//! let out: Vec<u64> = pool.map(inc, 0..1_000_000).await?;
//! # Ok(()) }
//! ```
//!
//! A host joins by running the same executable with
//! `MULTILOOP_CLUSTER_HOST=nats://10.0.0.1:4222/inc-pool` in its
//! environment (like a worker, it never reaches `main`), or by calling
//! [`serve`]. It runs the chunks it pulls on its own local pool of worker
//! processes, so inside each host crash isolation, blame, retries and
//! timeouts hold as on one machine.
//!
//! # How it works
//!
//! The pool's scheduler is unchanged: where it would have local workers it
//! has *lanes* ([`processes`](crate::PoolBuilder::processes) of them, each
//! taking [`concurrency`](crate::PoolBuilder::concurrency) tasks, so
//! `processes × concurrency` is what the caller keeps in flight across the
//! cluster). A lane publishes each chunk to a work-queue stream (message id
//! `caller.chunk`, so a retried publish is stored once). Hosts pull from one
//! durable consumer with explicit acks, only as many chunks as their local
//! pool has room for, send progress acks while a chunk runs, publish its
//! outcomes to the caller's subject of a results stream, and only then
//! acknowledge the chunk. A host that dies leaves its chunks unacknowledged:
//! the server delivers them to another host `ack_wait` after the last
//! progress ack.
//!
//! # Guarantees
//!
//! - **Delivery to the caller is exactly once**: every task ends with one
//!   outcome, as locally. The caller's scheduler keeps the first outcome of
//!   each task and drops any later one (a chunk that ran twice).
//! - **Execution is at least once across hosts**: a host that dies, or
//!   loses its link for longer than [`ClusterConfig::ack_wait`], has its
//!   chunks delivered to another host. A host that gets a chunk again asks
//!   the caller which of its tasks it still waits for, and runs only those
//!   (a task whose outcome arrived before its host died or was cut off is
//!   not run again); with no answer within a third of `ack_wait` it runs
//!   them all, and it drops the chunk when the caller is gone for good
//!   (its results consumer expired, an hour after it last read). A task
//!   still runs twice when its first host is cut off or stalled while
//!   running it: tasks with side effects must tolerate that.
//! - **A host whose link is cut** has its chunks run elsewhere `ack_wait`
//!   after its last progress ack; the outcomes it sends once its link is
//!   back are dropped by the caller, and it serves again.
//! - **Nobody waits forever**: a chunk delivered
//!   [`max_deliveries`](ClusterConfig::max_deliveries) times without a host
//!   finishing it ends its tasks with a crash error
//!   ([`Error::is_crash`](crate::Error::is_crash)), from the server's
//!   max-deliveries advisory, which the caller reads from a stream. A
//!   chunk of several tasks runs again first, one task per chunk, so that
//!   only the task that kills its hosts fails (the others that shared its
//!   hosts cost a delivery each, and a one-task chunk that shared every
//!   one of its hosts' deaths with it fails too). A
//!   publish the server does not confirm within
//!   [`publish_timeout`](ClusterConfig::publish_timeout) (retried over a
//!   server restart) fails its tasks.
//! - Errors are typed as locally: a task's own error, a panic, a timeout,
//!   a crash of a worker on its host after its last local attempt.
//! - Dropping a call's future or stream cancels its tasks on every host,
//!   and removes its chunks no host has taken yet.
//!
//! - `route_by` keeps each key on one host: a routed lane publishes to its
//!   own partition, which hosts pull through a pinned-client consumer
//!   (a priority group of nats-server 2.11), so the server delivers it to
//!   one host at a time and moves it to another when that host stops
//!   pulling for `ack_wait`. On its host, a partition's chunks all run on
//!   one local worker (partition modulo the host's processes), so state a
//!   task keeps per key ([`worker_state`](crate::worker_state)) stays in
//!   one worker across calls. The new host starts with empty per-key state.
//!   A chunk delivered again whose tasks the caller already settled is not
//!   run (above), so a round that ended is not replayed on the new owner;
//!   one still unsettled can run on both the new owner and an old one
//!   that was cut off, so routed tasks that carry state should still check
//!   a round number.
//!
//! # Hosts
//!
//! Each host keeps an entry in the pool's host registry (a key-value
//! bucket, `MLH_<pool>`), put every third of `ack_wait` and living
//! `ack_wait` past its last put; the server marks an expired entry, and
//! the caller watches the bucket. So
//! [`PoolStats::hosts_alive`](crate::PoolStats::hosts_alive) counts the
//! hosts serving the pool, [`Pool::hosts`](crate::Pool::hosts) describes
//! each ([`HostStats`]),
//! [`Pool::wait_for_hosts`](crate::Pool::wait_for_hosts) waits for them,
//! and a host that stops (killed, hung, cut off) drops out about
//! `ack_wait` after its last heartbeat. The entries' lifetime is the
//! caller's `ack_wait`: a host started before its caller reads it at its
//! next heartbeat and paces its progress acks by it.
//!
//! Not carried over from the local pool: initializers and
//! `max_tasks_per_child` belong to the hosts' own pools.
//!
//! # Server
//!
//! nats-server 2.11 or newer with JetStream (`nats-server -js`); an older
//! one is refused at connect. Streams are file-backed, so a server
//! restarted mid-map loses nothing. A message is limited by the server's
//! `max_payload` (1 MiB by default): chunks are cut to fit, and a single
//! task's arguments (or result) larger than that fail that task alone with
//! a serialization error naming the limit. The address may carry a user
//! and password: `nats://user:pass@10.0.0.1:4222`.

mod caller;
mod envelope;
mod host;
mod redelivery;
mod registry;

use std::time::Duration;

use async_nats::jetstream;

pub(crate) use self::caller::Caller;
pub use self::host::serve;
pub use self::registry::HostStats;
use crate::error::Error;

/// The environment variable that makes a program a cluster host:
/// `nats://host:4222/pool-name`.
pub const ENV_HOST: &str = "MULTILOOP_CLUSTER_HOST";
/// Worker processes of a host started through [`ENV_HOST`] (default: the
/// number of cores).
pub const ENV_HOST_PROCESSES: &str = "MULTILOOP_CLUSTER_PROCESSES";
/// Tasks at once per worker process of such a host (default 16).
pub const ENV_HOST_CONCURRENCY: &str = "MULTILOOP_CLUSTER_CONCURRENCY";

/// The oldest nats-server the cluster runs on.
const MIN_SERVER: (u64, u64) = (2, 11);

/// Where a cluster is and how it behaves; the caller and its hosts name
/// the same server and pool.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub(crate) url: String,
    pub(crate) pool: String,
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliveries: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) publish_timeout: Duration,
}

impl ClusterConfig {
    /// The cluster of pool `pool` on the nats-server at `url`
    /// (`nats://host:4222`, or several separated by commas). The pool name
    /// keeps pools on one server apart: letters, digits, `-` and `_`.
    pub fn new(url: impl Into<String>, pool: impl Into<String>) -> Self {
        ClusterConfig {
            url: url.into(),
            pool: pool.into(),
            ack_wait: Duration::from_secs(5),
            max_deliveries: 3,
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(60),
        }
    }

    /// How long a host may go silent before its chunks go to another host
    /// (default 5 s). Hosts acknowledge progress three times per period
    /// while a chunk runs, so this bounds the time to detect a lost host,
    /// not the length of a task. Set by the caller for the whole pool; at
    /// least 1 s.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait.min(crate::pool::LONGEST_WAIT);
        self
    }

    /// How many times a chunk is delivered to hosts before its tasks fail
    /// (default 3). A task that kills its whole host is tried this often.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n;
        self
    }

    /// How long connecting may take (default 10 s).
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = limit.min(crate::pool::LONGEST_WAIT);
        self
    }

    /// How long a publish is retried before its tasks fail (default 60 s):
    /// the longest server outage a call rides out.
    pub fn publish_timeout(mut self, limit: Duration) -> Self {
        self.publish_timeout = limit.min(crate::pool::LONGEST_WAIT);
        self
    }

    fn check(&self) -> Result<(), Error> {
        let pool_ok = !self.pool.is_empty()
            && self.pool.len() <= 64
            && self
                .pool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !pool_ok {
            return Err(Error::usage(format!(
                "cluster pool name {:?} must be 1 to 64 letters, digits, `-` or `_`",
                self.pool
            )));
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err(Error::usage("cluster ack_wait must be at least 1 s"));
        }
        if self.max_deliveries == 0 {
            return Err(Error::usage("cluster max_deliveries must be at least 1"));
        }
        Ok(())
    }
}

/// Subjects, streams and consumers of one pool.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) work_stream: String,
    pub(crate) work_subject: String,
    pub(crate) results_stream: String,
    pub(crate) advisory_stream: String,
    pub(crate) cancel_subject: String,
    pool: String,
}

/// The work consumer every host pulls from.
const WORK_CONSUMER: &str = "work";

impl Names {
    fn new(pool: &str) -> Self {
        Names {
            work_stream: format!("MLW_{pool}"),
            work_subject: format!("ml.{pool}.work"),
            results_stream: format!("MLR_{pool}"),
            advisory_stream: format!("MLA_{pool}"),
            cancel_subject: format!("ml.{pool}.cancel"),
            pool: pool.to_owned(),
        }
    }

    /// Routed chunks of lane `slot` (`*`: all of them).
    pub(crate) fn partition_subject(&self, slot: &str) -> String {
        format!("ml.{}.part.{slot}", self.pool)
    }

    pub(crate) fn results_subject(&self, caller: &str) -> String {
        format!("ml.{}.res.{caller}", self.pool)
    }

    /// Where hosts ask `caller` about chunks delivered again.
    pub(crate) fn ask_subject(&self, caller: &str) -> String {
        format!("ml.{}.ask.{caller}", self.pool)
    }
}

/// A connection to the pool's server, its streams made and checked.
pub(crate) struct Connection {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) names: Names,
    pub(crate) work: jetstream::stream::Stream,
    pub(crate) max_payload: usize,
}

/// An id unlikely to repeat, for a caller or a host: the pid, the time
/// and the std's random hasher keys.
pub(crate) fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    format!("{:016x}", h.finish())
}

fn nats_error(what: &str, config: &ClusterConfig, e: impl std::fmt::Display) -> Error {
    Error::io(
        format!(
            "{what} (nats-server at {}, pool {})",
            config.url, config.pool
        ),
        std::io::Error::other(e.to_string()),
    )
}

/// Connects, refuses a server older than [`MIN_SERVER`], and makes (or
/// checks) the pool's streams.
pub(crate) async fn connect(config: &ClusterConfig) -> Result<Connection, Error> {
    config.check()?;
    let mut options = async_nats::ConnectOptions::new()
        .name("multiloop")
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.connect_timeout));
    if let Some((user, pass)) = credentials(&config.url) {
        options = options.user_and_password(user, pass);
    }
    let client = tokio::time::timeout(config.connect_timeout, options.connect(config.url.as_str()))
        .await
        .map_err(|_| nats_error("connecting timed out", config, "no answer"))?
        .map_err(|e| nats_error("could not connect", config, e))?;
    let info = client.server_info();
    check_version(&info.version).map_err(|reason| {
        Error::protocol(format!(
            "nats-server at {} is version {}: {reason}",
            config.url, info.version
        ))
    })?;
    let js = jetstream::new(client.clone());
    let names = Names::new(&config.pool);
    let work = ensure_stream(
        &js,
        config,
        jetstream::stream::Config {
            name: names.work_stream.clone(),
            subjects: vec![names.work_subject.clone(), names.partition_subject("*")],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .await?;
    ensure_stream(
        &js,
        config,
        jetstream::stream::Config {
            name: names.results_stream.clone(),
            subjects: vec![names.results_subject("*")],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            // Outcomes of a caller that went away are not kept for ever.
            max_age: Duration::from_secs(24 * 3600),
            ..Default::default()
        },
    )
    .await?;
    ensure_stream(
        &js,
        config,
        jetstream::stream::Config {
            name: names.advisory_stream.clone(),
            subjects: vec![format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
                names.work_stream
            )],
            storage: jetstream::stream::StorageType::File,
            max_age: Duration::from_secs(24 * 3600),
            ..Default::default()
        },
    )
    .await?;
    Ok(Connection {
        max_payload: info.max_payload,
        client,
        js,
        names,
        work,
    })
}

/// The user and password in the first of `urls` that has them
/// (`nats://user:pass@host:4222`): async-nats does not read them from the
/// address itself.
fn credentials(urls: &str) -> Option<(String, String)> {
    urls.split(',').find_map(|url| {
        let addr = url.trim().parse::<async_nats::ServerAddr>().ok()?;
        let user = addr.username()?;
        Some((
            user.to_owned(),
            addr.password().unwrap_or_default().to_owned(),
        ))
    })
}

/// `Err` with the reason when `version` (`2.15.1`) is older than
/// [`MIN_SERVER`].
fn check_version(version: &str) -> Result<(), String> {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) if (major, minor) >= MIN_SERVER => Ok(()),
        (Some(Ok(_)), Some(Ok(_))) => Err(format!(
            "multiloop's cluster needs nats-server {}.{} or newer (pinned consumers, \
             consumer configs it would otherwise silently drop); upgrade the server",
            MIN_SERVER.0, MIN_SERVER.1
        )),
        _ => Err("not a version multiloop can read".into()),
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: &ClusterConfig,
    want: jetstream::stream::Config,
) -> Result<jetstream::stream::Stream, Error> {
    let name = want.name.clone();
    let mut stream = js
        .get_or_create_stream(want.clone())
        .await
        .map_err(|e| nats_error(&format!("could not create stream {name}"), config, e))?;
    let got = stream
        .info()
        .await
        .map_err(|e| nats_error(&format!("could not read stream {name}"), config, e))?
        .config
        .clone();
    if got.retention != want.retention || got.subjects != want.subjects {
        return Err(Error::protocol(format!(
            "stream {name} on {} exists with another configuration (retention {:?}, subjects \
             {:?}; multiloop wants {:?}, {:?}): another program or version uses this pool \
             name; delete the stream or pick another pool name",
            config.url, got.retention, got.subjects, want.retention, want.subjects
        )));
    }
    Ok(stream)
}

/// The work consumer's configuration for `config`.
fn work_consumer_config(
    config: &ClusterConfig,
    names: &Names,
) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(WORK_CONSUMER.into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: i64::from(config.max_deliveries),
        // Hosts pull only what they have room for; this only caps the
        // whole cluster's chunks in flight.
        max_ack_pending: 1 << 20,
        filter_subject: names.work_subject.clone(),
        ..Default::default()
    }
}

/// The durable consumer `name` of the work stream, made as `want` if
/// missing, with the configuration the server echoes back.
async fn get_or_create(
    conn: &Connection,
    name: &str,
    want: &jetstream::consumer::pull::Config,
    what: &str,
    config: &ClusterConfig,
) -> Result<
    (
        jetstream::consumer::PullConsumer,
        jetstream::consumer::Config,
    ),
    Error,
> {
    let consumer = match conn
        .work
        .get_consumer::<jetstream::consumer::pull::Config>(name)
        .await
    {
        Ok(c) => c,
        Err(_) => conn
            .work
            .create_consumer(want.clone())
            .await
            .map_err(|e| nats_error(&format!("could not create {what}"), config, e))?,
    };
    echoed(consumer, what, config).await
}

/// Changes a consumer to `want`; what the server echoes back.
async fn update_consumer(
    conn: &Connection,
    want: &jetstream::consumer::pull::Config,
    what: &str,
    config: &ClusterConfig,
) -> Result<
    (
        jetstream::consumer::PullConsumer,
        jetstream::consumer::Config,
    ),
    Error,
> {
    let consumer = conn
        .work
        .update_consumer(want.clone())
        .await
        .map_err(|e| nats_error(&format!("could not update {what}"), config, e))?;
    echoed(consumer, what, config).await
}

/// A consumer with the configuration the server holds for it.
async fn echoed(
    mut consumer: jetstream::consumer::PullConsumer,
    what: &str,
    config: &ClusterConfig,
) -> Result<
    (
        jetstream::consumer::PullConsumer,
        jetstream::consumer::Config,
    ),
    Error,
> {
    let got = consumer
        .info()
        .await
        .map_err(|e| nats_error(&format!("could not read {what}"), config, e))?
        .config
        .clone();
    Ok((consumer, got))
}

/// The work consumer, made with `config` if missing; `update`: changed to
/// `config` if it differs (the caller owns the settings; a host adopts
/// them). The configuration the server echoes back is checked, since a
/// client silently drops fields a server does not know.
pub(crate) async fn work_consumer(
    conn: &Connection,
    config: &ClusterConfig,
    update: bool,
) -> Result<(jetstream::consumer::PullConsumer, Duration), Error> {
    let want = work_consumer_config(config, &conn.names);
    let what = "the work consumer";
    let (mut consumer, mut got) = get_or_create(conn, WORK_CONSUMER, &want, what, config).await?;
    if update && (got.ack_wait != want.ack_wait || got.max_deliver != want.max_deliver) {
        (consumer, got) = update_consumer(conn, &want, what, config).await?;
        if got.ack_wait != want.ack_wait || got.max_deliver != want.max_deliver {
            return Err(Error::protocol(format!(
                "nats-server at {} kept ack_wait {:?} and max_deliver {} for the work consumer \
                 when asked for {:?} and {}",
                config.url, got.ack_wait, got.max_deliver, want.ack_wait, want.max_deliver
            )));
        }
    }
    if got.ack_policy != jetstream::consumer::AckPolicy::Explicit
        || got.filter_subject != want.filter_subject
        || got.max_deliver < 1
    {
        return Err(Error::protocol(format!(
            "the work consumer of pool {} on {} has ack policy {:?}, filter {:?}, max_deliver \
             {}: not what multiloop made (explicit, {:?}, at least 1)",
            config.pool,
            config.url,
            got.ack_policy,
            got.filter_subject,
            got.max_deliver,
            want.filter_subject
        )));
    }
    Ok((consumer, got.ack_wait))
}

/// The consumer of routed lane `slot`'s partition.
pub(crate) fn partition_consumer_name(slot: usize) -> String {
    format!("{PARTITION_PREFIX}{slot}")
}

/// Partition consumers' names start with this.
pub(crate) const PARTITION_PREFIX: &str = "part-";

/// The priority group hosts pull partitions in.
pub(crate) const PARTITION_GROUP: &str = "hosts";

/// Makes (or updates) the partition consumer of routed lane `slot`: a
/// pinned-client consumer, so one host at a time receives a partition's
/// chunks, and the server moves the pin to another host when that one
/// stops pulling for `ack_wait`. The echoed configuration is checked: a
/// server that does not know pinned consumers would drop the policy.
pub(crate) async fn partition_consumer(
    conn: &Connection,
    config: &ClusterConfig,
    slot: usize,
) -> Result<(), Error> {
    use jetstream::consumer::PriorityPolicy;
    let want = jetstream::consumer::pull::Config {
        durable_name: Some(partition_consumer_name(slot)),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: i64::from(config.max_deliveries),
        max_ack_pending: 256,
        filter_subject: conn.names.partition_subject(&slot.to_string()),
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec![PARTITION_GROUP.into()],
        priority_timeout: config.ack_wait,
        ..Default::default()
    };
    let what = "a partition consumer";
    let name = partition_consumer_name(slot);
    let (_, mut got) = get_or_create(conn, &name, &want, what, config).await?;
    if got.ack_wait != want.ack_wait
        || got.max_deliver != want.max_deliver
        || got.priority_timeout != want.priority_timeout
    {
        (_, got) = update_consumer(conn, &want, what, config).await?;
    }
    if got.priority_policy != PriorityPolicy::PinnedClient
        || got.priority_groups != want.priority_groups
        || got.ack_wait != want.ack_wait
    {
        return Err(Error::protocol(format!(
            "nats-server at {} kept partition consumer {} as {:?} in groups {:?} with ack_wait \
             {:?}, not a pinned-client consumer in {:?} with {:?} (a server before 2.11 drops \
             the policy)",
            config.url,
            partition_consumer_name(slot),
            got.priority_policy,
            got.priority_groups,
            got.ack_wait,
            want.priority_groups,
            want.ack_wait
        )));
    }
    Ok(())
}

/// Runs before `main` in every program that links multiloop with the
/// `cluster` feature: when [`ENV_HOST`] is set, this process is a cluster
/// host and never returns to `main`.
pub(crate) fn enter_if_host() {
    let Some(value) = std::env::var_os(ENV_HOST) else {
        return;
    };
    // SAFETY: this runs in a constructor before `main`, before any thread
    // of this process was started, so nothing reads the environment at the
    // same time. Removed so that the host's own workers do not become hosts.
    unsafe { std::env::remove_var(ENV_HOST) };
    let code = match host_from_env(&value) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("multiloop cluster host: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn host_from_env(value: &std::ffi::OsStr) -> Result<(), Error> {
    let value = value
        .to_str()
        .ok_or_else(|| Error::usage(format!("{ENV_HOST} is not UTF-8")))?;
    let (url, pool) = value
        .split_once("://")
        .and_then(|(scheme, rest)| {
            let (hosts, pool) = rest.rsplit_once('/')?;
            Some((format!("{scheme}://{hosts}"), pool))
        })
        .ok_or_else(|| {
            Error::usage(format!(
                "{ENV_HOST}={value:?} is not `nats://host:port/pool-name`"
            ))
        })?;
    let number = |name: &str| -> Result<Option<usize>, Error> {
        match std::env::var(name) {
            Ok(v) => v
                .parse()
                .map(Some)
                .map_err(|_| Error::usage(format!("{name}={v:?} is not a number"))),
            Err(_) => Ok(None),
        }
    };
    let mut local = crate::Pool::builder();
    if let Some(n) = number(ENV_HOST_PROCESSES)? {
        local = local.processes(n);
    }
    if let Some(n) = number(ENV_HOST_CONCURRENCY)? {
        local = local.concurrency(n);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("could not build the host's runtime", e))?;
    let cluster = ClusterConfig::new(url, pool);
    runtime.block_on(host::serve_with(cluster, local, || {
        eprintln!("multiloop cluster host ready (pid {})", std::process::id());
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_2_11_are_refused_by_version() {
        assert!(check_version("2.15.1").is_ok());
        assert!(check_version("2.11.0").is_ok());
        assert!(check_version("v3.0.0-beta").is_ok());
        assert!(check_version("2.9.10").is_err());
        assert!(check_version("2.10.22").is_err());
        assert!(check_version("nonsense").is_err());
    }

    #[test]
    fn credentials_come_from_the_address() {
        assert_eq!(
            credentials("nats://10.0.0.1:4222, nats://ann:s3cret@10.0.0.2:4222"),
            Some(("ann".into(), "s3cret".into()))
        );
        assert_eq!(credentials("nats://10.0.0.1:4222"), None);
    }

    #[test]
    fn a_pool_name_that_is_not_one_subject_token_is_refused() {
        assert!(ClusterConfig::new("nats://x", "ok-name_1").check().is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>"] {
            let err = ClusterConfig::new("nats://x", bad).check();
            assert!(err.is_err_and(|e| e.is_usage()), "{bad:?}");
        }
    }
}
