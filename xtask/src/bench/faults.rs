//! `cargo xtask bench faults`: BENCHMARKS.md's Reliability table (issue 17).
//! Runs every test that injects a fault, against the services (started and
//! stopped like `cargo xtask test`), and counts, per fault class, the cases
//! that held as asserted: survived (the run goes on and its result is that
//! of a run without the fault, bit for bit where training is involved) or
//! failed cleanly (a non-zero exit, a record and failure file naming the
//! cause, nothing half-written). A case whose test fails did not hold: it
//! lost data or left a lying record, and the command exits non-zero.
//!
//! The cases are listed here by test name; a name missing from the test
//! binary's output is an error, so a renamed test cannot drop out silently.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::{flags, services, workspace};

/// What a case asserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holds {
    /// The run survives the fault with the result of a run without it.
    Survived,
    /// The run or command stops, saying why, leaving a true record.
    FailedCleanly,
}

/// One fault-injection test: its class, where it lives, what it asserts.
struct Case {
    class: &'static str,
    package: &'static str,
    /// `None`: the package's unit tests; `Some(name)`: `--test name`.
    target: Option<&'static str>,
    test: &'static str,
    holds: Holds,
}

const fn case(
    class: &'static str,
    package: &'static str,
    target: Option<&'static str>,
    test: &'static str,
    holds: Holds,
) -> Case {
    Case {
        class,
        package,
        target,
        test,
        holds,
    }
}

use Holds::{FailedCleanly as Clean, Survived};

const S3: &str = "S3 network (cut bodies, stalls, lost answers)";
const DENIED: &str = "S3 access denied (or the bucket in another region)";
const KILL: &str = "process killed (SIGKILL, SIGTERM, launcher gone)";
const PIPE: &str = "closed stdout / unwritable log";
const CKPT: &str = "checkpoints (unreadable, another job's, another device's)";
const READS: &str = "tile read errors and resume";
const HOSTILE: &str = "hostile inputs (bombs, 65535 bands, huge sizes)";
const ARCHIVE: &str = "hostile model.tar.gz (deep paths, modes, caps)";
const RECORD: &str = "run records (concurrent updates, pid reuse, dead runs)";
const SECRETS: &str = "credentials (secret files, ECR token)";
const LAUNCH: &str =
    "SageMaker launch faults (refusals, lost or throttled CreateTrainingJob, lost Describe answers)";
const MOVED: &str = "code moved during the build (a commit while the trainer builds)";
const START: &str = "a container or trainer that cannot start";
const PANIC: &str = "trainer panic";
const DISK: &str = "full disk (ENOSPC mid-checkpoint, tmpfs)";
const TWICE: &str =
    "one experiment launched twice at once (two terminals, two sweeps, two machines)";

const CASES: &[Case] = &[
    case(
        S3,
        "sca-e2e",
        Some("faults"),
        "survivable_s3_faults_give_the_model_of_a_run_without_faults",
        Survived,
    ),
    case(
        DENIED,
        "sca-e2e",
        Some("faults"),
        "denied_tile_reads_fail_the_run_cleanly_and_say_why",
        Clean,
    ),
    case(
        S3,
        "sca-e2e",
        Some("faults"),
        "tile_reads_without_an_etag_fail_the_run_rather_than_go_unchecked",
        Clean,
    ),
    case(
        DENIED,
        "sca-e2e",
        Some("faults"),
        "a_bucket_in_another_region_is_named_with_its_region",
        Clean,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "a_trainer_killed_without_a_stop_request_is_failed_not_stopped",
        Clean,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "status_records_a_run_whose_launcher_and_trainer_died_as_failed",
        Clean,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "a_dead_newer_twin_does_not_hide_an_older_one_still_training",
        Survived,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "a_warm_start_takes_the_model_a_killed_launchers_run_left_unrecorded",
        Survived,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "max_runtime_holds_after_the_launcher_is_killed",
        Clean,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "docker_max_runtime_holds_after_the_launcher_is_killed",
        Clean,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "a_docker_run_is_not_judged_through_another_engine",
        Survived,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "a_container_removed_under_its_launcher_is_recorded_so",
        Clean,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "local_stop_checkpoints_and_records_stopped",
        Survived,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "docker_stop_sends_sigterm_and_the_job_is_stopped",
        Survived,
    ),
    case(
        KILL,
        "sca-train",
        Some("train"),
        "sigterm_and_sigkill_resume_to_the_same_result",
        Survived,
    ),
    case(
        KILL,
        "sca-train",
        Some("train"),
        "a_stop_during_validation_keeps_the_epochs_training",
        Survived,
    ),
    case(
        PIPE,
        "sca-e2e",
        Some("experiment"),
        "a_closed_stdout_neither_stops_the_training_nor_its_record",
        Survived,
    ),
    case(
        PIPE,
        "xtask",
        None,
        "experiment::local::tests::a_closed_stdout_neither_stops_the_log_nor_the_wait",
        Survived,
    ),
    case(
        PIPE,
        "xtask",
        None,
        "experiment::local::tests::an_unwritable_log_still_drains_to_stdout",
        Survived,
    ),
    case(
        PIPE,
        "sca-train",
        None,
        "progress::tests::a_closed_stdout_drops_the_line_without_panicking",
        Survived,
    ),
    case(
        CKPT,
        "sca-train",
        Some("train"),
        "an_unreadable_newest_checkpoint_resumes_from_the_previous_one",
        Survived,
    ),
    case(
        CKPT,
        "sca-train",
        None,
        "checkpoint::tests::order_is_numeric_and_stale_temporaries_go",
        Survived,
    ),
    case(
        CKPT,
        "sca-train",
        Some("train"),
        "a_checkpoint_of_another_job_is_refused_and_the_same_job_resumes",
        Clean,
    ),
    case(
        DISK,
        "sca-train",
        Some("train"),
        "a_stop_whose_model_is_not_written_leaves_no_marker_claiming_it",
        Clean,
    ),
    case(
        KILL,
        "sca-train",
        Some("train"),
        "a_resume_from_an_epochs_checkpoint_prints_its_metric_lines_again",
        Survived,
    ),
    case(
        CKPT,
        "sca-train",
        Some("train"),
        "a_checkpoint_trained_on_another_device_is_refused_and_an_older_one_resumes",
        Clean,
    ),
    case(
        CKPT,
        "sca-train",
        None,
        "checkpoint::tests::save_never_prunes_what_it_wrote_nor_files_named_above_it",
        Survived,
    ),
    case(
        CKPT,
        "xtask",
        None,
        "experiment::sagemaker::request::tests::each_job_checkpoints_under_its_own_prefix",
        Survived,
    ),
    case(
        READS,
        "sca-train",
        Some("train"),
        "resume_skips_without_reading_and_read_errors_fail_the_run",
        Clean,
    ),
    case(
        READS,
        "sca-train",
        Some("data"),
        "a_read_error_fails_validation_instead_of_dropping_the_tile",
        Clean,
    ),
    case(
        HOSTILE,
        "sca-train",
        Some("data"),
        "hostile::a_tiff_claiming_65535_bands_or_a_huge_size_is_a_bad_tile",
        Clean,
    ),
    case(
        HOSTILE,
        "sca-train",
        Some("data"),
        "hostile::a_png_bomb_is_refused_before_it_is_decompressed",
        Clean,
    ),
    case(
        HOSTILE,
        "sca-train",
        Some("data"),
        "hostile::an_object_larger_than_the_cap_is_refused_without_reading_it",
        Clean,
    ),
    case(
        HOSTILE,
        "sca-train",
        Some("data"),
        "hostile::a_model_archive_with_a_huge_entry_size_is_an_error",
        Clean,
    ),
    case(
        ARCHIVE,
        "xtask",
        None,
        "experiment::artifacts::tests::only_root_artifacts_are_written_without_modes",
        Survived,
    ),
    case(
        ARCHIVE,
        "xtask",
        None,
        "experiment::artifacts::tests::over_the_cap_is_refused_naming_archive_entry_and_cap",
        Clean,
    ),
    case(
        ARCHIVE,
        "xtask",
        None,
        "experiment::artifacts::tests::links_and_duplicates_under_known_names_are_refused",
        Clean,
    ),
    case(
        ARCHIVE,
        "xtask",
        None,
        "experiment::artifacts::tests::garbage_is_an_error_not_a_panic",
        Clean,
    ),
    case(
        RECORD,
        "xtask",
        None,
        "experiment::record::tests::concurrent_updates_lose_nothing",
        Survived,
    ),
    case(
        RECORD,
        "xtask",
        None,
        "experiment::local::tests::a_reused_pid_is_not_the_trainer",
        Clean,
    ),
    case(
        RECORD,
        "xtask",
        None,
        "experiment::contract::tests::a_trainer_that_ended_unseen_failed_unless_asked_to_stop",
        Clean,
    ),
    case(
        SECRETS,
        "sca-e2e",
        Some("image"),
        "context_reports_credential_files_and_exits_non_zero",
        Clean,
    ),
    case(
        SECRETS,
        "sca-e2e",
        Some("image"),
        "credential_guard_refuses_and_names_each_file",
        Clean,
    ),
    case(
        SECRETS,
        "xtask",
        None,
        "image::push::tests::the_ecr_token_goes_to_ecr_hosts_only",
        Clean,
    ),
    case(
        LAUNCH,
        "sca-e2e",
        Some("experiment"),
        "sagemaker_launch_faults_say_what_to_do_and_create_nothing",
        Clean,
    ),
    case(
        PANIC,
        "sca-train",
        Some("train"),
        "a_panic_writes_the_failure_file",
        Clean,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "status_concludes_a_docker_run_whose_launcher_died",
        Survived,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "status_concludes_a_docker_run_whose_container_was_pruned",
        Survived,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "following_the_log_of_a_run_whose_launcher_died_ends_with_the_run",
        Survived,
    ),
    case(
        RECORD,
        "sca-e2e",
        Some("experiment"),
        "a_docker_launcher_outrun_by_a_status_returns_the_recorded_end",
        Survived,
    ),
    case(
        LAUNCH,
        "sca-e2e",
        Some("faults"),
        "a_training_job_created_without_an_answer_is_found_and_recorded",
        Survived,
    ),
    case(
        DISK,
        "sca-train",
        Some("train"),
        "a_full_disk_mid_checkpoint_fails_cleanly_and_the_restart_resumes_exactly",
        Clean,
    ),
    case(
        HOSTILE,
        "sca-train",
        Some("train"),
        "tiles_left_out_are_listed_with_the_model",
        Survived,
    ),
    case(
        LAUNCH,
        "sca-e2e",
        Some("faults"),
        "a_create_refused_after_a_lost_answer_that_took_is_found_and_recorded",
        Survived,
    ),
    case(
        LAUNCH,
        "sca-e2e",
        Some("faults"),
        "a_quota_refusal_after_a_lost_answer_that_took_is_found_and_recorded",
        Survived,
    ),
    case(
        LAUNCH,
        "sca-e2e",
        Some("faults"),
        "a_refused_create_is_looked_up_by_describe_not_a_lagging_listing",
        Survived,
    ),
    case(
        LAUNCH,
        "sca-e2e",
        Some("faults"),
        "a_capacity_wait_outlasts_a_lookup_that_cannot_tell",
        Survived,
    ),
    case(
        LAUNCH,
        "sca-e2e",
        Some("faults"),
        "a_quota_the_job_can_never_fit_is_refused_at_once",
        Clean,
    ),
    case(
        LAUNCH,
        "sca-e2e",
        Some("faults"),
        "following_a_job_outlasts_lost_describe_answers",
        Survived,
    ),
    case(
        MOVED,
        "sca-e2e",
        Some("experiment"),
        "a_commit_during_the_trainer_build_launches_nothing",
        Clean,
    ),
    case(
        MOVED,
        "sca-e2e",
        Some("experiment"),
        "a_commit_during_the_images_host_build_builds_nothing",
        Clean,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "status_records_a_run_that_completed_after_its_launcher_died",
        Survived,
    ),
    case(
        START,
        "sca-e2e",
        Some("experiment"),
        "a_container_the_engine_cannot_start_is_recorded_failed",
        Clean,
    ),
    case(
        START,
        "sca-e2e",
        Some("experiment"),
        "a_container_created_and_never_started_is_failed_by_status",
        Clean,
    ),
    case(
        START,
        "sca-e2e",
        Some("experiment"),
        "a_trainer_that_cannot_start_is_recorded_failed",
        Clean,
    ),
    case(
        PIPE,
        "sca-e2e",
        Some("experiment"),
        "a_docker_run_outlives_its_closed_stdout_and_stderr",
        Survived,
    ),
    case(
        PIPE,
        "sca-train",
        Some("train"),
        "a_closed_stderr_keeps_the_reason_in_the_failure_file",
        Clean,
    ),
    case(
        PANIC,
        "sca-data",
        None,
        "loader::tests::a_reader_that_panics_fails_the_pass_instead_of_hanging",
        Clean,
    ),
    case(
        KILL,
        "sca-data",
        None,
        "loader::tests::an_interrupt_ends_the_wait_for_a_stalled_read",
        Survived,
    ),
    case(
        SECRETS,
        "sca-e2e",
        Some("image"),
        "a_build_argument_holding_a_secret_is_refused",
        Clean,
    ),
    case(
        RECORD,
        "sca-e2e",
        Some("faults"),
        "a_stale_status_never_puts_over_an_end_in_s3",
        Survived,
    ),
    case(
        RECORD,
        "sca-e2e",
        Some("faults"),
        "a_status_whose_look_at_the_bucket_breaks_off_never_puts_over_an_end",
        Survived,
    ),
    case(
        TWICE,
        "sca-e2e",
        Some("experiment"),
        "simultaneous_launches_of_one_experiment_run_it_once",
        Survived,
    ),
    case(
        TWICE,
        "sca-e2e",
        Some("sweep"),
        "a_sweep_started_twice_at_once_runs_each_point_once",
        Survived,
    ),
    case(
        TWICE,
        "sca-e2e",
        Some("faults"),
        "two_machines_launching_one_experiment_at_once_run_it_once",
        Survived,
    ),
    case(
        TWICE,
        "sca-e2e",
        Some("faults"),
        "a_create_that_arrives_after_its_claim_lapsed_makes_no_second_job",
        Survived,
    ),
    case(
        TWICE,
        "sca-e2e",
        Some("faults"),
        "a_file_put_beside_a_launchs_upload_makes_it_withdraw",
        Clean,
    ),
    case(
        TWICE,
        "sca-e2e",
        Some("faults"),
        "a_withdrawal_that_loses_its_claim_midway_puts_the_channel_back",
        Survived,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "a_ctrl_c_is_recorded_as_a_stop_request_even_if_the_launcher_dies",
        Survived,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "a_sigterm_at_the_launcher_stops_the_run_as_ctrl_c_does",
        Survived,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "a_sigterm_at_a_sweep_before_its_point_listens_stops_that_point",
        Survived,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("experiment"),
        "stopping_a_docker_run_that_already_ended_records_how_it_ended",
        Clean,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("faults"),
        "another_machines_live_claim_refuses_a_launch_here",
        Survived,
    ),
    case(
        KILL,
        "sca-e2e",
        Some("faults"),
        "a_relaunch_takes_over_the_claim_of_its_killed_launcher",
        Survived,
    ),
    case(
        TWICE,
        "sca-e2e",
        Some("faults"),
        "a_job_created_without_a_record_in_the_bucket_keeps_its_claim",
        Survived,
    ),
    case(
        LAUNCH,
        "sca-e2e",
        Some("faults"),
        "a_claim_whose_put_answer_was_lost_is_the_launchs_own",
        Survived,
    ),
    case(
        TWICE,
        "sca-data",
        None,
        "synth::tests::concurrent_callers_never_see_a_half_made_dataset",
        Survived,
    ),
    case(
        KILL,
        "sca-data",
        None,
        "synth::tests::a_killed_generators_remains_are_made_again",
        Survived,
    ),
    case(
        KILL,
        "sca-train",
        Some("train"),
        "a_sigterm_during_data_validation_stops_before_training",
        Clean,
    ),
];

impl flags::BenchFaults {
    pub fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let shared = services::up_shared(&root)?;
        let outcome = run_cases(&root, &shared.env.vars);
        shared.release(&root)?;
        let passed = outcome?;
        let body = render(&passed);
        println!("{body}");
        let held = passed.values().all(|ok| *ok);
        if !self.no_record {
            super::record_on(&root, "faults", &body, &super::machine())?;
        }
        Ok(if held {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// Runs every case's test; whether each passed, by test name.
fn run_cases(
    root: &std::path::Path,
    env: &[(String, String)],
) -> Result<BTreeMap<&'static str, bool>> {
    let mut groups: BTreeMap<(&str, Option<&str>), Vec<&str>> = BTreeMap::new();
    for c in CASES {
        groups
            .entry((c.package, c.target))
            .or_default()
            .push(c.test);
    }
    let mut passed = BTreeMap::new();
    let sh = workspace::shell(root)?;
    for ((package, target), tests) in groups {
        let cmd = workspace::cargo(&sh)
            .args(["test", "--locked", "-p", package])
            .envs(env.iter().map(|(k, v)| (k, v)));
        let cmd = match target {
            Some(t) => cmd.args(["--test", t]),
            // xtask's unit tests too: its modules are its library's.
            None => cmd.arg("--lib"),
        };
        // A failing case exits non-zero; its result is read from the output.
        let cmd = cmd
            .args(["--", "--exact", "--test-threads", "2"])
            .args(&tests)
            .ignore_status();
        let what = format!("{package} {}", target.unwrap_or("unit tests"));
        eprintln!("running {} fault case(s) of {what}", tests.len());
        let out = cmd
            .output()
            .with_context(|| format!("running cargo test ({what})"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        for t in tests {
            match result_of(&stdout, t) {
                Some(ok) => {
                    passed.insert(t, ok);
                }
                None => bail!(
                    "{what}: no result for `{t}` (renamed or removed? update xtask/src/bench/faults.rs)\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
    }
    Ok(passed)
}

/// `Some(passed)` from libtest's `test NAME ... ok|FAILED` line for `name`.
fn result_of(stdout: &str, name: &str) -> Option<bool> {
    stdout.lines().find_map(|l| {
        let rest = l.strip_prefix("test ")?.strip_prefix(name)?;
        let verdict = rest.strip_prefix(" ... ")?;
        Some(verdict.trim() == "ok")
    })
}

fn render(passed: &BTreeMap<&'static str, bool>) -> String {
    // class -> (cases, survived, failed cleanly, did not hold)
    let mut rows: Vec<(&str, [usize; 4])> = Vec::new();
    let mut failed = Vec::new();
    for c in CASES {
        let i = match rows.iter().position(|(k, _)| *k == c.class) {
            Some(i) => i,
            None => {
                rows.push((c.class, [0; 4]));
                rows.len() - 1
            }
        };
        let r = &mut rows[i].1;
        r[0] += 1;
        match (passed.get(c.test).copied().unwrap_or(false), c.holds) {
            (true, Holds::Survived) => r[1] += 1,
            (true, Holds::FailedCleanly) => r[2] += 1,
            (false, _) => {
                r[3] += 1;
                failed.push(c.test);
            }
        }
    }
    let mut s = String::from(
        "`cargo xtask bench faults`: every fault-injection test of the workspace (the list is in `xtask/src/bench/faults.rs`), run against the services. A case *survived* when the run went on to the result of a run without the fault (the same weights, bit for bit, where it trains); it *failed cleanly* when it stopped with a non-zero exit, a record and failure file naming the cause, and nothing half-written; a failing test counts as *lost data or a lying record*.\n\n| fault class | cases | survived | failed cleanly | lost data or a lying record |\n|---|---|---|---|---|\n",
    );
    let mut total = [0usize; 4];
    for (class, r) in &rows {
        s += &format!("| {class} | {} | {} | {} | {} |\n", r[0], r[1], r[2], r[3]);
        for k in 0..4 {
            total[k] += r[k];
        }
    }
    s += &format!(
        "| **all** | **{}** | **{}** | **{}** | **{}** |\n",
        total[0], total[1], total[2], total[3]
    );
    if !failed.is_empty() {
        s += &format!("\nDid not hold: {}.\n", failed.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_lines_give_each_result_and_a_prefix_is_not_a_match() {
        let out = "running 2 tests\ntest a::b ... ok\ntest a::bc ... FAILED\ntest c ... ignored\n";
        assert_eq!(result_of(out, "a::b"), Some(true));
        assert_eq!(result_of(out, "a::bc"), Some(false));
        assert_eq!(result_of(out, "c"), Some(false));
        assert_eq!(result_of(out, "a"), None);
    }

    #[test]
    fn the_table_counts_each_class_and_a_failure_is_lost_data() {
        let mut passed: BTreeMap<&'static str, bool> =
            CASES.iter().map(|c| (c.test, true)).collect();
        let s = render(&passed);
        assert!(
            s.contains(&format!("| **all** | **{}** |", CASES.len())),
            "{s}"
        );
        assert!(s.contains(&format!("| {DENIED} | 2 | 0 | 2 | 0 |")), "{s}");
        assert!(s.ends_with("| **0** |\n"), "{s}");
        passed.insert(CASES[0].test, false);
        let s = render(&passed);
        assert!(s.contains(&format!("| {S3} | 2 | 0 | 1 | 1 |")), "{s}");
        assert!(
            s.contains(&format!("Did not hold: {}.", CASES[0].test)),
            "{s}"
        );
    }

    #[test]
    fn every_case_is_listed_once() {
        let mut names: Vec<_> = CASES.iter().map(|c| c.test).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CASES.len());
    }
}
