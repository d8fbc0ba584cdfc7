//! SageMaker job names: `<experiment>-<short commit>-<yyyymmdd>-<hhmmss>` (UTC),
//! never longer than SageMaker's 63 characters and never without the suffix.

use std::time::SystemTime;

/// SageMaker's limit on training-job names.
pub const MAX_JOB_NAME: usize = 63;
/// `-` + 7-character commit + `-yyyymmdd-hhmmss`.
pub const JOB_SUFFIX_LEN: usize = 1 + 7 + 1 + 8 + 1 + 6;
/// Longest experiment name that keeps the whole job name within the limit.
pub const MAX_EXPERIMENT_NAME: usize = MAX_JOB_NAME - JOB_SUFFIX_LEN;

/// The job name for `experiment` at `commit` launched at `at`. A name longer
/// than [`MAX_EXPERIMENT_NAME`] (possible only for unvalidated input) is cut,
/// keeping the suffix that makes the name unique and traceable.
pub fn job_name(experiment: &str, commit: &str, at: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(at).to_string(); // 2026-11-26T09:42:28Z
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    let short: String = commit.chars().take(7).collect();
    let suffix = format!("-{short}-{}-{}", &digits[..8], &digits[8..14]);
    let keep = MAX_JOB_NAME.saturating_sub(suffix.len());
    let stem = experiment[..experiment.len().min(keep)].trim_end_matches('-');
    format!("{stem}{suffix}")
}

/// What every job name of `experiment` at `commit` starts with (`<stem>-<short
/// commit>-`): the key prefix under which a config bucket keeps their runs.
pub fn job_name_prefix(experiment: &str, commit: &str) -> String {
    let name = job_name(experiment, commit, SystemTime::UNIX_EPOCH);
    // Less the `yyyymmdd-hhmmss` stamp.
    name[..name.len() - (8 + 1 + 6)].to_string()
}

/// Whether `name` is a job name of `experiment` at `commit`: its
/// [`job_name_prefix`] and a `yyyymmdd-hhmmss` stamp, nothing else (so it
/// names a run directory safely, whoever wrote it).
pub fn is_job_name_of(name: &str, experiment: &str, commit: &str) -> bool {
    name.strip_prefix(&job_name_prefix(experiment, commit))
        .is_some_and(|stamp| {
            stamp.len() == 8 + 1 + 6
                && stamp.char_indices().all(|(i, c)| match i {
                    8 => c == '-',
                    _ => c.is_ascii_digit(),
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_579_303_286) // 2020-01-17T23:21:26Z
    }

    #[test]
    fn every_name_starts_with_its_prefix() {
        for name in ["aso", &"a".repeat(80), &"b".repeat(MAX_EXPERIMENT_NAME)] {
            let prefix = job_name_prefix(name, "0123456789abcdef");
            assert!(
                job_name(name, "0123456789abcdef", at()).starts_with(&prefix),
                "{prefix}"
            );
            assert!(prefix.ends_with("-0123456-"), "{prefix}");
        }
    }

    #[test]
    fn a_job_name_is_known_for_its_experiments_and_commits() {
        let n = job_name("aso", "0123456789abcdef", at());
        assert!(is_job_name_of(&n, "aso", "0123456789abcdef"));
        assert!(
            !is_job_name_of(&n, "aso", "1123456789abcdef"),
            "another commit"
        );
        assert!(
            !is_job_name_of(&n, "as", "0123456789abcdef"),
            "another experiment"
        );
        for bad in [
            "aso-0123456-20200117-23212",
            "aso-0123456-20200117-2321266",
            "aso-0123456-20200117x232126",
            "aso-0123456-2020011/-232126",
            "aso-0123456-../../../etc",
        ] {
            assert!(!is_job_name_of(bad, "aso", "0123456789abcdef"), "{bad}");
        }
    }

    #[test]
    fn name_has_commit_and_utc_time() {
        let n = job_name("aso-3m-sd-uscate-20180528", "0123456789abcdef", at());
        assert_eq!(n, "aso-3m-sd-uscate-20180528-0123456-20200117-232126");
    }

    #[test]
    fn long_names_are_cut_keeping_the_suffix() {
        let n = job_name(&"a".repeat(80), "0123456789", at());
        assert_eq!(n.len(), MAX_JOB_NAME);
        assert!(n.ends_with("-0123456-20200117-232126"));
        let exact = job_name(&"b".repeat(MAX_EXPERIMENT_NAME), "0123456789", at());
        assert_eq!(exact.len(), MAX_JOB_NAME);
    }

    #[test]
    fn cut_never_leaves_a_dangling_hyphen() {
        let mut name = "x".repeat(MAX_EXPERIMENT_NAME - 1);
        name.push_str("-yyyy");
        let n = job_name(&name, "0123456", at());
        assert!(!n.contains("--"), "{n}");
    }
}
