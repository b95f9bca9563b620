//! What the kernel says about a process: CPU time from `/proc/PID/stat`
//! and resident memory from `/proc/PID/status`.

use std::time::Duration;

/// CPU time and resident set of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User CPU time.
    pub user: Duration,
    /// System CPU time.
    pub system: Duration,
    /// `VmRSS`, bytes.
    pub rss: u64,
}

/// Reads process `pid` now.
pub fn sample(pid: u32) -> Result<Sample, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: the
    // fields are counted after its closing one. utime and stime are fields
    // 14 and 15, so the 12th and 13th after the parenthesis.
    let after = stat.rsplit_once(')').ok_or("no ')' in stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, String> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(|| format!("bad stat field {}", i + 3))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let time = |ticks: u64| Duration::from_nanos(ticks * 1_000_000_000 / hz);
    let (user, system) = (time(ticks(11)?), time(ticks(12)?));
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no VmRSS in status")?;
    Ok(Sample { user, system, rss: rss_kb * 1024 })
}

impl Sample {
    /// User + system CPU time.
    pub fn cpu(&self) -> Duration {
        self.user + self.system
    }

    /// The CPU time spent from `earlier` to `self`.
    pub fn since(&self, earlier: &Sample) -> Sample {
        Sample {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            rss: self.rss,
        }
    }
}

/// The sum of several processes' samples (the workers of one run).
pub fn sample_all(pids: &[u32]) -> Result<Sample, String> {
    let mut total = Sample::default();
    for &pid in pids {
        let s = sample(pid)?;
        total.user += s.user;
        total.system += s.system;
        total.rss += s.rss;
    }
    Ok(total)
}
