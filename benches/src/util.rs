//! Small helpers shared by the suites: a deterministic random number
//! generator, medians and percentiles, and number formatting.

use std::time::Duration;

/// SplitMix64: a tiny, fast, deterministic generator. Benchmarks need
/// reproducible data, not cryptographic quality.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`), by multiply-shift (no modulo bias worth
    /// caring about for benchmark data).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// The median of `xs` (the mean of the middle two for an even count).
/// `xs` must not be empty.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The median of durations.
pub fn median_duration(xs: &[Duration]) -> Duration {
    let secs: Vec<f64> = xs.iter().map(Duration::as_secs_f64).collect();
    Duration::from_secs_f64(median(&secs))
}

/// The `p`-th percentile (`0.0..=100.0`, nearest rank) of sorted values.
/// `sorted` must not be empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Nanoseconds as milliseconds.
pub fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A number for a summary table: thousands separated by `_` for large
/// values, four significant digits for small ones.
pub fn human(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x.abs() >= 10_000.0 {
        let digits = format!("{:.0}", x.abs());
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push('_');
            }
            out.push(c);
        }
        return if x < 0.0 { format!("-{out}") } else { out };
    }
    if x == 0.0 {
        return "0".into();
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(0, 9) as usize;
    format!("{x:.decimals$}")
}

/// The 1-minute load average (Linux), to judge how quiet the machine was.
pub fn loadavg() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// CPU time counters (Linux `/proc`, in clock ticks): the whole machine's
/// busy and total time, and this process's own time. Two readings tell how
/// much of the machine other processes used in between, which says how far
/// to trust the figures measured meanwhile on a shared machine.
#[derive(Debug, Clone, Copy)]
pub struct CpuReading {
    busy: u64,
    total: u64,
    own: u64,
    steal: u64,
}

impl CpuReading {
    /// Reads the counters; `None` where `/proc` is not available.
    pub fn now() -> Option<CpuReading> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let total: u64 = cpu.iter().take(8).sum();
        let idle = cpu.get(3)? + cpu.get(4)?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command: utime and stime are the
        // 12th and 13th.
        let rest = own.get(own.rfind(')')? + 2..)?;
        let mut fields = rest.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(CpuReading {
            busy: total - idle,
            total,
            own: utime + stime,
            steal: *cpu.get(7)?,
        })
    }

    /// Seconds of CPU this process used since `earlier` (Linux clock ticks
    /// are 1/100 s).
    pub fn own_seconds_since(&self, earlier: &CpuReading) -> Option<f64> {
        Some(self.own.checked_sub(earlier.own)? as f64 / 100.0)
    }

    /// Milliseconds the hypervisor kept this machine's CPUs from running
    /// since `earlier` (steal time, summed over the CPUs; in 10 ms ticks).
    /// On a virtual machine every thread, the measuring one included, is
    /// stopped meanwhile, so a latency maximum can hold such a stall.
    pub fn steal_ms_since(&self, earlier: &CpuReading) -> Option<u64> {
        Some(self.steal.checked_sub(earlier.steal)? * 10)
    }

    /// Percent of the machine's CPU time that other processes used since
    /// `earlier`.
    pub fn others_since(&self, earlier: &CpuReading) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        let own = self.own.checked_sub(earlier.own)?;
        (total > 0).then(|| 100.0 * busy.saturating_sub(own) as f64 / total as f64)
    }
}

/// Resident set size of this process, from `/proc/self/status` (Linux).
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// Resets this process's resident-set high-water mark (`VmHWM`) to its
/// resident set now (`/proc/self/clear_refs`, Linux); false where that
/// cannot be done.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// This process's resident-set high-water mark (`VmHWM`) since it started
/// or since the last [`reset_peak_rss`] (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// A size field of `/proc/self/status` (`VmRSS:`, `RssAnon:`, `RssFile:`
/// ...), in bytes (Linux).
pub fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The C allocator's view of the heap (glibc `mallinfo2`), in bytes: what
/// the program holds, what the allocator keeps free inside its arenas
/// (returned to it but not to the system: part of the resident set), and
/// what it maps directly for large blocks. `None` off glibc.
#[allow(unsafe_code)]
pub fn malloc_heap() -> Option<(u64, u64, u64)> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let m = unsafe { libc::mallinfo2() };
        Some((m.uordblks as u64, m.fordblks as u64, m.hblkhd as u64))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Returns the memory the C allocator holds free to the system (glibc
/// `malloc_trim`), so that a later phase's resident-set peak does not
/// include what an earlier phase freed. Does nothing off glibc.
#[allow(unsafe_code)]
pub fn malloc_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only releases free memory of the allocator.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// A suite's result, with the share of the machine's CPU other processes
/// used since `cpu_start` recorded as `other_processes_cpu_pct`.
pub fn finish(
    suite: &str,
    mut params: serde_json::Map<String, serde_json::Value>,
    metrics: Vec<crate::Metric>,
    cpu_start: Option<CpuReading>,
) -> crate::SuiteResult {
    if let (Some(start), Some(end)) = (cpu_start, CpuReading::now())
        && let Some(pct) = end.others_since(&start)
    {
        params.insert("other_processes_cpu_pct".into(), serde_json::json!(pct));
    }
    crate::SuiteResult {
        suite: suite.into(),
        params,
        metrics,
    }
}

/// Bytes as MiB, for messages.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Appends a postcard (LEB128) varint, as the typed state handles encode
/// lengths and integers.
pub fn push_varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// Appends the postcard encoding of a string (length, then bytes).
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    push_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The state key of entry `i` in the suites that share one operator's
/// state ("sessions"/"profile", 8-byte big-endian user keys) over
/// `max_parallelism` key groups.
pub fn session_key(i: u64, max_parallelism: u16) -> crate::Result<Vec<u8>> {
    let k = i.to_be_bytes();
    Ok(highwater::core::StateKey {
        key_group: highwater::core::key_group_for(&k, max_parallelism),
        operator: "sessions",
        state: "profile",
        key: &k,
        namespace: &[],
        user_key: &[],
    }
    .encode()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&[7], 99.0), 7);
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(1);
        for _ in 0..1000 {
            let x = a.range(5, 9);
            assert_eq!(x, b.range(5, 9));
            assert!((5..=9).contains(&x));
        }
        let mut v: Vec<u32> = (0..100).collect();
        a.shuffle(&mut v);
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(1_234_567.4), "1_234_567");
        assert_eq!(human(12.345), "12.35");
        assert_eq!(human(0.5), "0.5000");
        assert_eq!(human(0.0), "0");
    }
}
