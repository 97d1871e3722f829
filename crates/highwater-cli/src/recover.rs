//! `highwater recover`: print a recovery plan, or run a recovery into an
//! in-memory backend with a progress bar and report what it did.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use highwater::core::{KeyGroupRange, StateBackend as _};
use highwater::memory::MemoryBackend;
use highwater::recovery::{
    Phase, Progress, Recovery, RecoveryConfig, RecoveryScope, RecoveryTarget, VerificationLevel,
};
use highwater::wal::{Wal, WalConfig};
use highwater::{CheckpointId, Error, Result};

use crate::target::open_store;

/// Arguments of `highwater recover`.
#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    /// Checkpoint directory, or a redis://, s3://, az:// or gs:// URL.
    pub store: String,
    /// Key namespace of a Redis store.
    #[arg(long, default_value = "highwater")]
    pub namespace: String,
    /// Print the plan only; load nothing.
    #[arg(long)]
    pub plan: bool,
    /// Recover the state as of this time: milliseconds since the Unix
    /// epoch, or `YYYY-MM-DDTHH:MM:SS[.mmm]Z` (UTC).
    #[arg(long, conflicts_with = "checkpoint")]
    pub to: Option<String>,
    /// Recover exactly this checkpoint (the log is not replayed).
    #[arg(long)]
    pub checkpoint: Option<u64>,
    /// Directory of the write-ahead log to replay after the checkpoint
    /// (default: STORE/wal when STORE is a directory holding one). Opening
    /// a log cuts a torn tail left by a crash, as any writer would.
    #[arg(long)]
    pub wal_dir: Option<PathBuf>,
    /// Do not replay any write-ahead log.
    #[arg(long, conflicts_with = "wal_dir")]
    pub no_wal: bool,
    /// Rescaling: recover only the key groups of --subtask at this
    /// parallelism.
    #[arg(long, requires = "subtask")]
    pub parallelism: Option<u16>,
    /// Rescaling: the subtask index (0-based) at --parallelism.
    #[arg(long, requires = "parallelism")]
    pub subtask: Option<u16>,
    /// Partial recovery: only this operator (repeatable).
    #[arg(long = "operator")]
    pub operators: Vec<String>,
    /// Decode threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Verification level.
    #[arg(long, value_enum, default_value_t = Verify::Checksum)]
    pub verify: Verify,
    /// Fail on a damaged checkpoint instead of falling back to an older one.
    #[arg(long)]
    pub no_fallback: bool,
    /// The most MiB of the checkpoint held at once while fetching overlaps
    /// decoding (fetching pauses at the bound; one artifact is always
    /// fetched when nothing else is under way). Default: the library's,
    /// 256.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 40))]
    pub fetch_ahead_mib: Option<u64>,
    /// Print JSON instead of text (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// The `--verify` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verify {
    /// Decoder checks only.
    None,
    /// Every artifact's xxh3-128 against its content address.
    Checksum,
    /// Checksums, every record, manifest cross-checks.
    Full,
}

/// Parses `--to`: milliseconds since the epoch or an ISO-8601 UTC time.
pub fn parse_time(s: &str) -> Result<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || {
        Error::InvalidArgument(format!(
            "--to wants milliseconds since the epoch or YYYY-MM-DDTHH:MM:SS[.mmm]Z: got={s:?}"
        ))
    };
    let rest = s.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = rest.split_once('T').ok_or_else(bad)?;
    let num = |p: &str| p.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let (time, frac) = match time.split_once('.') {
        Some((t, f)) => (t, f),
        None => (time, "0"),
    };
    let t: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || t.len() != 3 || frac.is_empty() || frac.len() > 3 {
        return Err(bad());
    }
    let (y, m, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (hh, mm, ss) = (num(t[0])?, num(t[1])?, num(t[2])?);
    let ms_frac = num(frac)? * 10i64.pow(3 - frac.len() as u32);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    // Days-from-civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms_frac;
    u64::try_from(ms).map_err(|_| bad())
}

fn wal_dir(args: &RecoverArgs) -> Option<PathBuf> {
    if args.no_wal {
        return None;
    }
    if let Some(d) = &args.wal_dir {
        return Some(d.clone());
    }
    let default = Path::new(&args.store).join("wal");
    default.is_dir().then_some(default)
}

/// Runs `highwater recover`.
pub fn run(args: RecoverArgs) -> Result<ExitCode> {
    let target = match (&args.to, args.checkpoint) {
        (Some(t), _) => RecoveryTarget::PointInTime {
            at_ms: parse_time(t)?,
        },
        (None, Some(id)) => RecoveryTarget::Checkpoint(CheckpointId(id)),
        (None, None) => RecoveryTarget::Latest,
    };
    let mut scope = RecoveryScope::all();
    if !args.operators.is_empty() {
        scope.operators = Some(args.operators.iter().cloned().collect::<BTreeSet<_>>());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("start a runtime", e))?;
    let store = open_store(&args.store, &args.namespace, false)?;
    let mut config = RecoveryConfig::default()
        .max_parallel_threads(args.threads)
        .optimistic_recovery(!args.no_fallback)
        .verification_level(match args.verify {
            Verify::None => VerificationLevel::None,
            Verify::Checksum => VerificationLevel::Checksum,
            Verify::Full => VerificationLevel::Full,
        });
    if let Some(mib) = args.fetch_ahead_mib {
        config = config.fetch_ahead_bytes(mib << 20);
    }
    let engine = Recovery::new(store, config, runtime.handle().clone())?;
    let wal = match wal_dir(&args) {
        Some(dir) => {
            let config = WalConfig {
                encryption: crate::target::keys().map(highwater::core::Cipher::new),
                ..WalConfig::default()
            };
            let (wal, report) = Wal::open(&dir, config)?;
            if let Some(torn) = &report.torn_tail {
                eprintln!("note: cut the torn tail of the write-ahead log: {torn:?}");
            }
            Some(wal)
        }
        None => None,
    };
    if let (Some(p), Some(i)) = (args.parallelism, args.subtask) {
        // The key-group count is the checkpoint's: plan once to learn it.
        let probe = engine.plan(target, &scope, wal.as_ref())?;
        let max = probe.max_parallelism.ok_or_else(|| {
            Error::InvalidArgument(
                "--parallelism needs a checkpoint (the log alone does not record key groups)"
                    .into(),
            )
        })?;
        scope = scope.with_key_groups(KeyGroupRange::for_subtask(max, p, i)?);
    }
    let plan = engine.plan(target, &scope, wal.as_ref())?;
    if args.plan {
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&plan)
                    .map_err(|e| Error::serialization("the recovery plan as json", e))?
            );
        } else {
            print!("{plan}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let backend = MemoryBackend::new();
    let bar = crate::progress::bar(0, args.json, false);
    let on_progress = {
        let bar = bar.clone();
        // Fetching and loading overlap (the memory backend's restore
        // starts on the first ranges while later artifacts are fetched):
        // the bar follows the latest phase reported, not an earlier one.
        let shown = std::sync::atomic::AtomicU8::new(0);
        move |p: Progress| {
            let (rank, msg) = match p.phase {
                Phase::Fetching => (0, "fetching"),
                Phase::Loading => (1, "decode + load"),
                Phase::ReplayingWal => (2, "replaying log"),
            };
            if p.phase == Phase::Fetching && p.done == 0 {
                // An attempt begins (a fallback starts over).
                shown.store(0, std::sync::atomic::Ordering::Relaxed);
            } else if shown.fetch_max(rank, std::sync::atomic::Ordering::Relaxed) > rank {
                return;
            }
            if bar.message() != msg {
                bar.set_message(msg);
                bar.set_length(p.total);
            }
            bar.set_position(p.done);
        }
    };
    let outcome = engine.execute(plan, &backend, wal.as_ref(), Some(&on_progress));
    bar.finish_and_clear();
    let outcome = outcome?;
    let s = &outcome.stats;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "stats": s,
                "throughput_mb_s": s.throughput_mb_s(),
                "backend_entries": backend.stats().entries,
            }))
            .map_err(|e| Error::serialization("the recovery stats as json", e))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    for f in &s.fallbacks {
        println!("fell back from checkpoint {}: {}", f.checkpoint, f.reason);
    }
    match s.checkpoint {
        Some(id) => println!(
            "recovered checkpoint {id} (chain of {}, {} ranges)",
            s.chain_length, s.ranges
        ),
        None => println!("recovered from the write-ahead log alone"),
    }
    println!(
        "  fetched {} artifacts, {} bytes in {:.3}s",
        s.artifacts_fetched,
        s.bytes_fetched,
        s.fetch_duration.as_secs_f64()
    );
    if s.fetch_ahead_peak_bytes > 0 {
        println!(
            "  held at most {} bytes of the checkpoint at once",
            s.fetch_ahead_peak_bytes
        );
    }
    println!(
        "  loaded {} entries ({} bytes; {} records decoded, {} filtered) in {:.3}s",
        s.entries_loaded,
        s.logical_bytes,
        s.records_decoded,
        s.records_filtered,
        s.load_duration.as_secs_f64()
    );
    println!(
        "  replayed {} log records in {:.3}s",
        s.wal_records_replayed,
        s.wal_duration.as_secs_f64()
    );
    println!(
        "  total {:.3}s, {:.1} MB/s; backend holds {} entries",
        s.duration.as_secs_f64(),
        s.throughput_mb_s(),
        backend.stats().entries
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_parse_as_milliseconds_or_utc() {
        assert_eq!(parse_time("1700000000123").unwrap(), 1_700_000_000_123);
        assert_eq!(parse_time("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z").unwrap(),
            1_700_000_000_123
        );
        assert_eq!(
            parse_time("2000-03-01T00:00:01.5Z").unwrap(),
            951_868_801_500
        );
        for bad in [
            "",
            "yesterday",
            "2023-13-01T00:00:00Z",
            "2023-11-14 22:13:20Z",
            "2023-11-14T22:13:20",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }
}
