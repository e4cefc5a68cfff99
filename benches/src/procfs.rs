//! CPU time and memory of a process, read from Linux's `/proc`.
//!
//! CPU time is `utime + stime` of `/proc/PID/stat` (which includes threads
//! that have exited), in clock ticks of 1/100 s: the kernel reports these
//! fields in `USER_HZ`, which is 100 on every Linux architecture this runs
//! on. Peak RSS is `VmHWM` of `/proc/PID/status`: the high-water mark over
//! the process's whole life, not only the measured phase.

use std::io;
use std::path::Path;

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// Which process to read: this one, or another by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// `/proc/self`.
    Current,
    /// `/proc/PID`.
    Pid(u32),
}

impl Process {
    fn dir(self) -> String {
        match self {
            Process::Current => "/proc/self".into(),
            Process::Pid(pid) => format!("/proc/{pid}"),
        }
    }
}

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// User plus system CPU time since the process started.
    pub cpu_seconds: f64,
    /// Largest resident set so far (`VmHWM`).
    pub peak_rss_bytes: u64,
    /// Resident set now (`VmRSS`).
    pub rss_bytes: u64,
}

/// Reads the CPU time and memory of `process`.
pub fn sample(process: Process) -> io::Result<Sample> {
    let dir = process.dir();
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    Ok(Sample {
        cpu_seconds: cpu_seconds_of_stat(&stat)?,
        peak_rss_bytes: status_kib(&status, "VmHWM")? * 1024,
        rss_bytes: status_kib(&status, "VmRSS")? * 1024,
    })
}

/// CPU seconds of this process's live threads that `include` selects by
/// thread id and name (`comm`). Threads that have exited are not counted.
pub fn threads_cpu_seconds(include: impl Fn(u32, &str) -> bool) -> io::Result<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let path = entry?.path();
        let Some(tid) = task_id(&path) else { continue };
        // A thread may exit between listing and reading: skip it.
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("stat")),
        ) else {
            continue;
        };
        if include(tid, comm.trim_end()) {
            total += cpu_seconds_of_stat(&stat)?;
        }
    }
    Ok(total)
}

/// This process's id.
pub fn current_pid() -> u32 {
    std::process::id()
}

fn task_id(path: &Path) -> Option<u32> {
    path.file_name()?.to_str()?.parse().ok()
}

/// `utime + stime` of a `stat` line, in seconds. The command name (field
/// 2) is in parentheses and may hold spaces, so fields are counted from the
/// last `)`: the state (field 3) comes first, utime and stime are 14 and 15.
fn cpu_seconds_of_stat(stat: &str) -> io::Result<f64> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected stat line: {stat:?}"),
        )
    };
    let rest = &stat[stat.rfind(')').ok_or_else(bad)? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(bad)
    };
    Ok((field(14)? + field(15)?) as f64 / TICKS_PER_SECOND)
}

/// The value in KiB of a `Key:   123 kB` line of a `status` file.
fn status_kib(status: &str, key: &str) -> io::Result<u64> {
    status
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(key)?.strip_prefix(':')?;
            value.trim().strip_suffix("kB")?.trim().parse().ok()
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no {key} line in /proc/*/status"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_counted_after_the_command_name() {
        // A command name with spaces and parentheses must not shift fields.
        let stat = "42 (tokio (rt) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(cpu_seconds_of_stat(stat).unwrap(), 3.25);
        assert!(cpu_seconds_of_stat("garbage").is_err());
    }

    #[test]
    fn status_lines_are_read_in_kib() {
        let status = "Name:\tbroker\nVmHWM:\t  204800 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(status_kib(status, "VmHWM").unwrap(), 204_800);
        assert_eq!(status_kib(status, "VmRSS").unwrap(), 1024);
        assert!(status_kib(status, "VmSwap").is_err());
    }

    #[test]
    fn this_process_can_be_read() {
        let s = sample(Process::Current).unwrap();
        assert!(s.peak_rss_bytes >= s.rss_bytes && s.rss_bytes > 0);
        let all = threads_cpu_seconds(|_, _| true).unwrap();
        assert!(all >= 0.0 && all <= s.cpu_seconds + 0.02);
        let pid = sample(Process::Pid(current_pid())).unwrap();
        assert!(pid.cpu_seconds >= s.cpu_seconds);
    }
}
