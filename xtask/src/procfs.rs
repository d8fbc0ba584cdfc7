//! What `/proc` says of a process: its state and start time, its name and
//! process group, and whether a group still runs. The start time names a process across pid reuse, for the
//! local backend's trainer (`experiment/local.rs`) and the test services'
//! daemons (`services.rs`).

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
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time of process `pid`, if it can be read.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, started)| started)
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
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
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
