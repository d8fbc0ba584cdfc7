//! What `/proc` says of a process: its state, start time and age, its name
//! and process group, and whether a group still runs. The start time names a process across pid reuse, for the
//! local backend's trainer (`experiment/local.rs`) and the test services'
//! daemons (`services.rs`).

use std::path::Path;

/// (state, start time) from the text of `/proc/<pid>/stat`. The command name
/// (field 2) is in parentheses and may hold spaces and parentheses itself, so
/// the fields are counted from the last `)`: state is field 3, starttime 22
/// (clock ticks since boot).
pub fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let started = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, started))
}

/// Process `pid`'s (state, start time), if its `/proc/<pid>/stat` can be read.
pub fn stat(pid: u32) -> Option<(char, u64)> {
    parse_stat(&read_stat(Path::new(&format!("/proc/{pid}/stat")))?)
}

/// A `stat` file's text. The command name in it is the program's, cut at
/// 15 bytes, maybe inside a UTF-8 character or of no UTF-8 at all: read
/// lossily, as the fields after it are ASCII (a strict read made a live
/// process look gone).
fn read_stat(path: &Path) -> Option<String> {
    Some(String::from_utf8_lossy(&std::fs::read(path).ok()?).into_owned())
}

/// The start time of process `pid`, if it can be read.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, started)| started)
}

/// How long ago a process that started at clock tick `start` (since boot,
/// as [`start_time`] reads it) started, from `/proc/uptime`.
pub fn age(start: u64) -> Option<std::time::Duration> {
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    let started = start as f64 / ticks as f64;
    std::time::Duration::try_from_secs_f64((uptime - started).max(0.0)).ok()
}

/// (command name, process group) from the text of `/proc/<pid>/stat`: the
/// name is between the first `(` and the last `)` (see [`parse_stat`]),
/// the group field 5.
pub fn parse_name_and_group(stat: &str) -> Option<(&str, u32)> {
    let (name, rest) = stat.split_once('(')?.1.rsplit_once(')')?;
    let group = rest.split_whitespace().nth(5 - 3)?.parse().ok()?;
    Some((name, group))
}

/// Every process's pid and the text of its `/proc/<pid>/stat` (those that
/// can still be read).
pub fn processes() -> impl Iterator<Item = (u32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse().ok()?;
            let stat = read_stat(&e.path().join("stat"))?;
            Some((pid, stat))
        })
}

/// Whether process group `group` has a member that is still running (a
/// zombie is not: a container's PID 1 that never reaps keeps those).
pub fn group_alive(group: u32) -> bool {
    processes().any(|(_, stat)| {
        parse_name_and_group(&stat).is_some_and(|(_, g)| g == group)
            && parse_stat(&stat).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process whose name is no UTF-8 (cut inside a character) is still
    /// seen, and running.
    #[test]
    fn a_name_of_no_utf8_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stat");
        let mut text = b"42 (caf\xc3) S 1 42 42 0 -1 0".to_vec();
        text.extend(b" 0".repeat(12)); // fields 10 to 21
        text.extend(b" 777 0\n");
        std::fs::write(&path, &text).unwrap();
        let stat = read_stat(&path).unwrap();
        assert_eq!(parse_stat(&stat), Some(('S', 777)));
        assert_eq!(parse_name_and_group(&stat).map(|(_, g)| g), Some(42));
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let mut fields = vec!["0".to_string(); 20];
        fields[5 - 4] = "77".into(); // the process group
        fields[22 - 4] = "99".into();
        let stat = format!("4242 (sca (x) train) S {}", fields.join(" "));
        assert_eq!(parse_stat(&stat), Some(('S', 99)));
        assert_eq!(parse_name_and_group(&stat), Some(("sca (x) train", 77)));
        assert_eq!(parse_name_and_group("garbage"), None);
    }
}
