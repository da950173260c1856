//! `bench/objectstore` (issue 17): an object-store target on a real S3 server (SeaweedFS).
//! Not a test: it prints numbers (`bench/objectstore/run.sh` runs it; README "Scale").
//!
//! * `catalogue`: fills a prefix with 100,000 backups (a small stream and its manifest each,
//!   parallel PUTs; done once, a marker object says so), then, each in its own process so the
//!   memory figures are its own: the **old path** (`catalogue::read`: list the whole prefix,
//!   GET every manifest one by one), the **new path** (`cached::CachedCatalogue` per source
//!   host: cold, again unchanged, again after one new and one deleted manifest), and a Restore's
//!   resolution by each (the whole prefix vs the source dataset's scope).
//! * `upload-stdin`: stdin (a pipe) into the bucket through the agent's upload path
//!   (`objstore_job::upload_reader`: the transfer producer, then `zetaback_objstore::upload`,
//!   what a BackupJob runs on `zfs send`'s output), for `run.sh upload` to compare with
//!   `rclone rcat` and `aws s3 cp -`.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use zetaback_core::api::BackupType;
use zetaback_core::api::backup_policy::{Compression, ObjectStoreTarget, SecretName};
use zetaback_core::store::{Catalogue, MANIFEST_VERSION, Manifest, StreamId};
use zetaback_objstore::cached::{CachedCatalogue, HOSTS_AT_ONCE, PARALLEL_GETS, ReadStats, Scope};
use zetaback_objstore::object_store::path::Path;
use zetaback_objstore::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use zetaback_objstore::{Credentials, Keys, catalogue, connect};

#[derive(Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
struct Bucket {
    /// The S3 endpoint (`seaweedfs.sh up` prints it).
    #[arg(long)]
    endpoint: String,
    #[arg(long, default_value = "zetaback-e2e")]
    bucket: String,
    #[arg(long, default_value = "ZBE2EADMIN")]
    access_key: String,
    #[arg(long, default_value = "zetaback-e2e-admin-secret")]
    secret_key: String,
}

#[derive(clap::Args, Debug, Clone)]
struct Layout {
    #[arg(long, default_value = "bench-catalogue")]
    prefix: String,
    /// Backups (each a stream and a manifest).
    #[arg(long, default_value_t = 100_000)]
    manifests: usize,
    /// Source hosts they are spread over.
    #[arg(long, default_value_t = 20)]
    hosts: usize,
    /// Datasets per host.
    #[arg(long, default_value_t = 50)]
    datasets: usize,
    /// PUTs at once while filling.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Host scopes the new path reads at once (the controller's `HOSTS_AT_ONCE`; 1 is the
    /// controller before it read hosts at once).
    #[arg(long, default_value_t = HOSTS_AT_ONCE)]
    hosts_at_once: usize,
    /// Skip the old path (the whole prefix, every manifest GET one by one: minutes at 100,000).
    #[arg(long)]
    skip_old: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Fill the prefix once, then measure the old and the new catalogue reads.
    Catalogue {
        #[command(flatten)]
        bucket: Bucket,
        #[command(flatten)]
        layout: Layout,
    },
    /// One measurement, in its own process (what `catalogue` runs).
    Measure {
        mode: Mode,
        #[command(flatten)]
        bucket: Bucket,
        #[command(flatten)]
        layout: Layout,
    },
    /// Upload stdin as one backup with the agent's upload code; prints bytes and seconds.
    UploadStdin {
        #[command(flatten)]
        bucket: Bucket,
        #[arg(long, default_value = "bench-upload")]
        prefix: String,
        #[arg(long, default_value = "bench-agent")]
        host: String,
        /// The dataset the stream is of (its manifest's).
        #[arg(long, default_value = "tank/bench")]
        dataset: String,
        /// The snapshot the stream ends at (default `zetaback-<ts>`).
        #[arg(long)]
        snapshot: Option<String>,
        /// The backup's time (its id `<ts>.full`; default now).
        #[arg(long)]
        ts: Option<i64>,
        /// Keep the backup in the bucket (default: deleted after the measurement).
        #[arg(long)]
        keep: bool,
    },
    /// Restore backup `<ts>.full` of `host:dataset` from the bucket into the new dataset
    /// `into` with the agent's restore code; prints bytes and seconds.
    RestoreBucket {
        #[command(flatten)]
        bucket: Bucket,
        #[arg(long, default_value = "bench-upload")]
        prefix: String,
        #[arg(long, default_value = "bench-agent")]
        host: String,
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        ts: i64,
        #[arg(long)]
        into: String,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum Mode {
    OldCatalogue,
    NewCatalogue,
    OldRestore,
    NewRestore,
}

fn target(b: &Bucket, prefix: &str) -> ObjectStoreTarget {
    ObjectStoreTarget {
        endpoint: Some(b.endpoint.clone()),
        bucket: b.bucket.clone(),
        prefix: Some(prefix.to_owned()),
        region: "us-east-1".into(),
        path_style: true,
        credentials_secret: SecretName {
            name: "unused".into(),
        },
        archive_storage_class: None,
        immutable_for: None,
    }
}

fn store(b: &Bucket, prefix: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    Ok(connect(
        &target(b, prefix),
        &Credentials {
            access_key_id: b.access_key.clone(),
            secret_access_key: b.secret_key.clone(),
        },
    )?)
}

fn host_name(i: usize) -> String {
    format!("bench-h{i:03}")
}

fn dataset_name(j: usize) -> String {
    format!("tank/ds{j:03}")
}

const STREAM: &[u8] = b"not a zfs stream";
const EPOCH: i64 = 1_700_000_000;

/// Backup `k` of a dataset: every tenth a full, the others incrementals on the one before.
fn stream_id(k: usize) -> StreamId {
    let ts = EPOCH + (k as i64) * 3600;
    if k.is_multiple_of(10) {
        StreamId::Full { ts }
    } else {
        StreamId::Incremental {
            ts,
            base_ts: ts - 3600,
        }
    }
}

fn manifest(host: &str, dataset: &str, id: &StreamId) -> anyhow::Result<Vec<u8>> {
    let (ts, base) = match id {
        StreamId::Full { ts } => (*ts, None),
        StreamId::Incremental { ts, base_ts } => (*ts, Some(*base_ts)),
    };
    let m = Manifest {
        version: MANIFEST_VERSION,
        id: id.to_string(),
        host: host.into(),
        dataset: dataset.into(),
        snapshot: format!("zetaback-{ts}"),
        base_snapshot: base.map(|b| format!("zetaback-{b}")),
        backup_type: if base.is_some() {
            BackupType::Incremental
        } else {
            BackupType::Full
        },
        bytes: STREAM.len() as u64,
        sha256: Some("0".repeat(64)),
        compression: Compression::None,
        created: jiff::Timestamp::from_second(ts)?,
        policy: Some("bench/catalogue".into()),
        xxh3: None,
        raw: false,
    };
    Ok(serde_json::to_vec(&m)?)
}

/// Every (host, dataset, backup index) of the layout.
fn backups(l: &Layout) -> Vec<(usize, usize, usize)> {
    let per_dataset = l.manifests.div_ceil(l.hosts * l.datasets);
    let mut out = Vec::with_capacity(l.manifests);
    'all: for k in 0..per_dataset {
        for i in 0..l.hosts {
            for j in 0..l.datasets {
                if out.len() == l.manifests {
                    break 'all;
                }
                out.push((i, j, k));
            }
        }
    }
    out
}

fn marker(l: &Layout) -> Path {
    Path::from(format!(
        "{}/.bench-filled-{}-{}-{}",
        l.prefix, l.manifests, l.hosts, l.datasets
    ))
}

async fn put_backup(
    store: &dyn ObjectStore,
    keys: &Keys,
    host: &str,
    dataset: &str,
    id: &StreamId,
) -> anyhow::Result<()> {
    store
        .put(
            &keys.stream(host, dataset, id, false)?,
            PutPayload::from_static(STREAM),
        )
        .await?;
    store
        .put(
            &keys.manifest(host, dataset, id, false)?,
            PutPayload::from(manifest(host, dataset, id)?),
        )
        .await?;
    Ok(())
}

/// Fills the prefix unless its marker says it is filled.
async fn fill(b: &Bucket, l: &Layout) -> anyhow::Result<()> {
    let store = store(b, &l.prefix)?;
    if store.head(&marker(l)).await.is_ok() {
        eprintln!(
            "bench: {} backups already in {}/{}",
            l.manifests, b.bucket, l.prefix
        );
        return Ok(());
    }
    let keys = Keys::new(Some(&l.prefix));
    let all = backups(l);
    let started = Instant::now();
    eprintln!(
        "bench: writing {} backups ({} objects) with {} PUTs at once",
        all.len(),
        2 * all.len(),
        l.parallel
    );
    let done = std::sync::atomic::AtomicUsize::new(0);
    futures::stream::iter(all.iter())
        .map(|&(i, j, k)| {
            let (store, keys, done) = (&store, &keys, &done);
            async move {
                put_backup(
                    store.as_ref(),
                    keys,
                    &host_name(i),
                    &dataset_name(j),
                    &stream_id(k),
                )
                .await?;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_multiple_of(10_000) {
                    eprintln!("bench:   {n} written");
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(l.parallel)
        .try_collect::<()>()
        .await?;
    store
        .put(&marker(l), PutPayload::from_static(b"filled"))
        .await?;
    eprintln!(
        "bench: filled in {:.1}s ({:.0} objects/s)",
        started.elapsed().as_secs_f64(),
        2.0 * all.len() as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// (VmRSS, VmHWM) of this process in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The newest backup of the dataset and its chain back to a full (what a Restore resolves).
fn resolve(cat: &Catalogue, host: &str, dataset: &str) -> anyhow::Result<Vec<String>> {
    let mine: Vec<&Manifest> = cat
        .of(host, dataset)
        .filter(|b| !b.archived)
        .map(|b| &b.manifest)
        .collect();
    let Some(mut at) = mine.last().copied() else {
        bail!("no backups of {host}:{dataset}");
    };
    let mut chain = vec![at.id.clone()];
    while let Some(base) = &at.base_snapshot {
        at = mine
            .iter()
            .find(|m| &m.snapshot == base)
            .copied()
            .with_context(|| format!("chain of {host}:{dataset} broken at {}", at.id))?;
        chain.push(at.id.clone());
    }
    chain.reverse();
    Ok(chain)
}

/// Reads every host's scope, `at_once` hosts at a time (as the controller does for a policy).
async fn refresh_hosts(
    caches: &mut [CachedCatalogue],
    store: &dyn ObjectStore,
    keys: &Keys,
    at_once: usize,
) -> anyhow::Result<ReadStats> {
    let each: Vec<ReadStats> = futures::stream::iter(caches.iter_mut())
        .map(|c| c.refresh(store, keys, PARALLEL_GETS))
        .buffer_unordered(at_once.max(1))
        .try_collect()
        .await?;
    let mut sum = ReadStats::default();
    for s in each {
        sum.listed += s.listed;
        sum.fetched += s.fetched;
        sum.reused += s.reused;
        sum.gone += s.gone;
    }
    Ok(sum)
}

fn backups_in(caches: &[CachedCatalogue]) -> usize {
    caches.iter().map(|c| c.catalogue().backups.len()).sum()
}

async fn measure(mode: Mode, b: &Bucket, l: &Layout) -> anyhow::Result<serde_json::Value> {
    let store = store(b, &l.prefix)?;
    let keys = Keys::new(Some(&l.prefix));
    let (rss0, _) = memory();
    // The Restore's source: the last host's last dataset.
    let (rh, rd) = (host_name(l.hosts - 1), dataset_name(l.datasets - 1));
    Ok(match mode {
        Mode::OldCatalogue => {
            let t = Instant::now();
            let cat = catalogue::read(store.as_ref(), &keys).await?;
            let took = ms(t);
            let (rss, hwm) = memory();
            serde_json::json!({"ms": took, "backups": cat.backups.len(),
                "problems": cat.problems.len(), "rss_kib": rss - rss0.min(rss), "hwm_kib": hwm})
        }
        Mode::OldRestore => {
            let t = Instant::now();
            let cat = catalogue::read(store.as_ref(), &keys).await?;
            let chain = resolve(&cat, &rh, &rd)?;
            serde_json::json!({"ms": ms(t), "chain": chain.len(), "hwm_kib": memory().1})
        }
        Mode::NewRestore => {
            let scope = Scope::Dataset {
                host: rh.clone(),
                dataset: rd.clone(),
            };
            let mut c = CachedCatalogue::new(scope);
            let t = Instant::now();
            let cold = c.refresh(store.as_ref(), &keys, PARALLEL_GETS).await?;
            let chain = resolve(&c.catalogue(), &rh, &rd)?;
            let cold_ms = ms(t);
            let t = Instant::now();
            let warm = c.refresh(store.as_ref(), &keys, PARALLEL_GETS).await?;
            let chain2 = resolve(&c.catalogue(), &rh, &rd)?;
            if chain != chain2 {
                bail!("the warm read resolved another chain: {chain:?} vs {chain2:?}");
            }
            serde_json::json!({"cold_ms": cold_ms, "cold_fetched": cold.fetched,
                "warm_ms": ms(t), "warm_fetched": warm.fetched, "listed": warm.listed,
                "chain": chain.len(), "hwm_kib": memory().1})
        }
        Mode::NewCatalogue => {
            let mut caches: Vec<CachedCatalogue> = (0..l.hosts)
                .map(|i| CachedCatalogue::new(Scope::Host(host_name(i))))
                .collect();
            let t = Instant::now();
            let cold = refresh_hosts(&mut caches, store.as_ref(), &keys, l.hosts_at_once).await?;
            let n = backups_in(&caches);
            let cold_ms = ms(t);
            let (rss_cold, _) = memory();
            let t = Instant::now();
            let warm = refresh_hosts(&mut caches, store.as_ref(), &keys, l.hosts_at_once).await?;
            let warm_ms = ms(t);
            // One new backup (host 0), one deleted manifest (host 1), and a stream without
            // its manifest (host 2, never a backup).
            let new_id = stream_id(1_000_000);
            let h0 = host_name(0);
            let ds = dataset_name(0);
            put_backup(store.as_ref(), &keys, &h0, &ds, &new_id).await?;
            let gone_id = stream_id(0);
            let h1 = host_name(1.min(l.hosts - 1));
            let gone_key = keys.manifest(&h1, &ds, &gone_id, false)?;
            let gone_body = store.get(&gone_key).await?.bytes().await?;
            store.delete(&gone_key).await?;
            let h2 = host_name(2.min(l.hosts - 1));
            let orphan = keys.stream(&h2, &ds, &stream_id(1_000_001), false)?;
            store.put(&orphan, PutPayload::from_static(STREAM)).await?;
            let t = Instant::now();
            let incr = refresh_hosts(&mut caches, store.as_ref(), &keys, l.hosts_at_once).await?;
            let incr_ms = ms(t);
            let after = backups_in(&caches);
            // Put the prefix back as it was.
            store
                .delete(&keys.manifest(&h0, &ds, &new_id, false)?)
                .await?;
            store
                .delete(&keys.stream(&h0, &ds, &new_id, false)?)
                .await?;
            store.put(&gone_key, PutPayload::from(gone_body)).await?;
            store.delete(&orphan).await?;
            let (rss, hwm) = memory();
            serde_json::json!({"cold_ms": cold_ms, "cold_fetched": cold.fetched, "backups": n,
                "rss_kib": rss_cold - rss0.min(rss_cold), "hwm_kib": hwm, "rss_end_kib": rss,
                "warm_ms": warm_ms, "warm_fetched": warm.fetched, "warm_listed": warm.listed,
                "incr_ms": incr_ms, "incr_fetched": incr.fetched, "incr_gone": incr.gone,
                "backups_after": after})
        }
    })
}

/// Runs one measurement in a child process (its own memory) and returns its JSON line.
fn child(mode: &str, b: &Bucket, l: &Layout) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .args([
            "measure",
            mode,
            "--endpoint",
            &b.endpoint,
            "--bucket",
            &b.bucket,
        ])
        .args(["--access-key", &b.access_key, "--secret-key", &b.secret_key])
        .args(["--prefix", &l.prefix])
        .args(["--manifests", &l.manifests.to_string()])
        .args(["--hosts", &l.hosts.to_string()])
        .args(["--datasets", &l.datasets.to_string()])
        .args(["--hosts-at-once", &l.hosts_at_once.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("measure {mode} failed: {}", out.status);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn catalogue_bench(b: &Bucket, l: &Layout) -> anyhow::Result<()> {
    fill(b, l).await?;
    println!(
        "catalogue of {} backups ({} hosts × {} datasets; {} objects) in {}/{} at {}",
        l.manifests,
        l.hosts,
        l.datasets,
        2 * l.manifests,
        b.bucket,
        l.prefix,
        b.endpoint
    );
    println!("load average before: {}", loadavg());
    let n = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let new = child("new-catalogue", b, l)?;
    let new_r = child("new-restore", b, l)?;
    let (old, old_r) = if l.skip_old {
        (serde_json::Value::Null, serde_json::Value::Null)
    } else {
        (child("old-catalogue", b, l)?, child("old-restore", b, l)?)
    };
    let expected = l.manifests as f64;
    let mut counts = vec![
        ("new cold read", n(&new, "backups")),
        ("new read after the change", n(&new, "backups_after")),
    ];
    if !l.skip_old {
        counts.push(("old whole read", n(&old, "backups")));
    }
    for (what, got) in counts {
        if got != expected {
            bail!("{what} found {got} backups, {expected} were written");
        }
    }
    println!("| read | time | manifests fetched | memory |");
    println!("|---|---:|---:|---:|");
    if !l.skip_old {
        println!(
            "| old: whole prefix, every manifest GET one by one | {:.1} s | {} | peak RSS {:.0} MiB (+{:.0} MiB held) |",
            n(&old, "ms") / 1000.0,
            l.manifests,
            n(&old, "hwm_kib") / 1024.0,
            n(&old, "rss_kib") / 1024.0
        );
    }
    println!(
        "| new, cold: {} hosts at once, {} GETs at once per host | {:.1} s | {} | peak RSS {:.0} MiB (+{:.0} MiB held) |",
        l.hosts_at_once,
        PARALLEL_GETS,
        n(&new, "cold_ms") / 1000.0,
        n(&new, "cold_fetched"),
        n(&new, "hwm_kib") / 1024.0,
        n(&new, "rss_kib") / 1024.0
    );
    println!(
        "| new, again, nothing changed ({} objects listed) | {:.1} s | {} | |",
        n(&new, "warm_listed"),
        n(&new, "warm_ms") / 1000.0,
        n(&new, "warm_fetched")
    );
    println!(
        "| new, again after +1 backup, −1 manifest, +1 stream without manifest | {:.1} s | {} ({} gone) | |",
        n(&new, "incr_ms") / 1000.0,
        n(&new, "incr_fetched"),
        n(&new, "incr_gone")
    );
    if !l.skip_old {
        println!(
            "| Restore resolution, old: whole prefix read, chain of {} picked | {:.1} s | {} | peak RSS {:.0} MiB |",
            n(&old_r, "chain"),
            n(&old_r, "ms") / 1000.0,
            l.manifests,
            n(&old_r, "hwm_kib") / 1024.0
        );
    }
    println!(
        "| Restore resolution, new, cold: the dataset's scope | {:.3} s | {} | peak RSS {:.0} MiB |",
        n(&new_r, "cold_ms") / 1000.0,
        n(&new_r, "cold_fetched"),
        n(&new_r, "hwm_kib") / 1024.0
    );
    println!(
        "| Restore resolution, new, again ({} objects listed) | {:.3} s | {} | |",
        n(&new_r, "listed"),
        n(&new_r, "warm_ms") / 1000.0,
        n(&new_r, "warm_fetched")
    );
    println!("load average after: {}", loadavg());
    Ok(())
}

/// What `upload-stdin` stores.
struct StdinBackup {
    prefix: String,
    host: String,
    dataset: String,
    snapshot: Option<String>,
    ts: Option<i64>,
    keep: bool,
}

async fn upload_stdin(b: &Bucket, what: &StdinBackup) -> anyhow::Result<()> {
    let store = store(b, &what.prefix)?;
    let keys = Keys::new(Some(&what.prefix));
    let ts = what
        .ts
        .unwrap_or_else(|| jiff::Timestamp::now().as_second());
    let (host, dataset) = (what.host.as_str(), what.dataset.as_str());
    let spec = zetaback_objstore::upload::UploadSpec {
        host: host.into(),
        dataset: dataset.into(),
        id: StreamId::Full { ts },
        snapshot: what
            .snapshot
            .clone()
            .unwrap_or_else(|| format!("zetaback-{ts}")),
        base_snapshot: None,
        compression: Compression::None,
        policy: None,
    };
    let stdin = stdin_pipe()?;
    let done: zetaback_agent::transfer::SourceDone = Box::pin(async { Ok(()) });
    let t = Instant::now();
    let m =
        zetaback_agent::objstore_job::upload_reader(store.as_ref(), &keys, &spec, stdin, 0, done)
            .await?;
    let secs = t.elapsed().as_secs_f64();
    let (_, hwm) = memory();
    println!(
        "{{\"bytes\": {}, \"seconds\": {secs:.3}, \"hwm_kib\": {hwm}}}",
        m.bytes
    );
    if !what.keep {
        // Leave nothing behind.
        store
            .delete(&keys.manifest(host, dataset, &spec.id, false)?)
            .await?;
        store
            .delete(&keys.stream(host, dataset, &spec.id, false)?)
            .await?;
    }
    Ok(())
}

/// What `restore-bucket` restores.
struct BucketRestore {
    prefix: String,
    host: String,
    dataset: String,
    ts: i64,
    into: String,
}

async fn restore_bucket(b: &Bucket, what: &BucketRestore) -> anyhow::Result<()> {
    let store = store(b, &what.prefix)?;
    let keys = Keys::new(Some(&what.prefix));
    let zfs = zetaback_agent::zfs::Zfs::detect().await?;
    let id = StreamId::Full { ts: what.ts }.to_string();
    let t = Instant::now();
    let done = zetaback_agent::objstore_restore::restore(
        &zfs,
        store.as_ref(),
        &keys,
        (&what.host, &what.dataset, &id),
        &what.into,
    )
    .await?;
    let secs = t.elapsed().as_secs_f64();
    let (_, hwm) = memory();
    println!(
        "{{\"bytes\": {}, \"seconds\": {secs:.3}, \"hwm_kib\": {hwm}}}",
        done.bytes
    );
    Ok(())
}

/// Stdin, a pipe, read as the agent reads `zfs send`'s stdout: non-blocking through the
/// runtime, the pipe enlarged to 1 MiB as the agent enlarges its pipes (`zfs/process.rs`).
fn stdin_pipe() -> anyhow::Result<tokio::net::unix::pipe::Receiver> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("stdin")?;
    if let Err(e) = rustix::pipe::fcntl_setpipe_size(&fd, 1 << 20) {
        eprintln!("bench: could not enlarge the stdin pipe: {e}");
    }
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd).context("stdin is not a pipe")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Catalogue { bucket, layout } => catalogue_bench(&bucket, &layout).await,
        Command::Measure {
            mode,
            bucket,
            layout,
        } => {
            let v = measure(mode, &bucket, &layout).await?;
            println!("{v}");
            Ok(())
        }
        Command::UploadStdin {
            bucket,
            prefix,
            host,
            dataset,
            snapshot,
            ts,
            keep,
        } => {
            let what = StdinBackup {
                prefix,
                host,
                dataset,
                snapshot,
                ts,
                keep,
            };
            upload_stdin(&bucket, &what).await
        }
        Command::RestoreBucket {
            bucket,
            prefix,
            host,
            dataset,
            ts,
            into,
        } => {
            let what = BucketRestore {
                prefix,
                host,
                dataset,
                ts,
                into,
            };
            restore_bucket(&bucket, &what).await
        }
    }
}
