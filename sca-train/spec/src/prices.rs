//! What a training job may cost: SageMaker's on-demand training price per
//! instance type, the worst case a job's limits allow, the cost SageMaker's
//! billed seconds imply after the fact, and the `job.max_cost_usd` check.
//!
//! The prices were transcribed, not fetched: this machine has no internet.
//! They are the on-demand prices of SageMaker *training* instances (not
//! notebook, processing or hosting) in us-east-1 as the public pricing page
//! (<https://aws.amazon.com/sagemaker/pricing/>, "On-Demand Pricing",
//! "Training") listed them in 2024, written down from memory; us-west-2 lists
//! the same figures for these types. Lines marked `estimate` are types the
//! transcriber did not remember a listed figure for: the EC2 price of the
//! type times SageMaker's usual mark-up for its family. Check a figure
//! against the page before trusting it to the cent, and update the table and
//! [`PRICE_SOURCE`] together. Other regions have no prices here: their cost
//! is unknown and said so, never guessed.

use crate::defaults::ResolvedJob;
use crate::sweep::SweepPlan;

/// Where [`hourly_usd`]'s figures come from, for anything that prints a cost.
pub const PRICE_SOURCE: &str = "AWS SageMaker pricing page, On-Demand Training, us-east-1 and us-west-2, as listed in 2024; transcribed from memory, not fetched (types marked `estimate` in sca-train/spec/src/prices.rs are EC2 price x SageMaker mark-up)";

/// The regions [`hourly_usd`] knows; both list the prices of [`TRAINING_USD_PER_HOUR`].
pub const PRICED_REGIONS: &[&str] = &["us-east-1", "us-west-2"];

/// On-demand USD per instance-hour of SageMaker training (see the module doc).
const TRAINING_USD_PER_HOUR: &[(&str, f64)] = &[
    ("ml.m4.xlarge", 0.24),
    ("ml.m4.2xlarge", 0.48),
    ("ml.m4.4xlarge", 0.96),
    ("ml.m4.10xlarge", 2.40),
    ("ml.m4.16xlarge", 3.84),
    ("ml.m5.large", 0.115),
    ("ml.m5.xlarge", 0.23),
    ("ml.m5.2xlarge", 0.461),
    ("ml.m5.4xlarge", 0.922),
    ("ml.m5.12xlarge", 2.765),
    ("ml.m5.24xlarge", 5.53),
    ("ml.m6i.large", 0.115),
    ("ml.m6i.xlarge", 0.23),
    ("ml.m6i.2xlarge", 0.461),
    ("ml.m6i.4xlarge", 0.922),
    ("ml.m6i.8xlarge", 1.843),
    ("ml.m6i.12xlarge", 2.765),
    ("ml.m6i.16xlarge", 3.686),
    ("ml.m6i.24xlarge", 5.53),
    ("ml.m6i.32xlarge", 7.373),
    ("ml.m7i.large", 0.121),     // estimate
    ("ml.m7i.xlarge", 0.242),    // estimate
    ("ml.m7i.2xlarge", 0.484),   // estimate
    ("ml.m7i.4xlarge", 0.968),   // estimate
    ("ml.m7i.8xlarge", 1.935),   // estimate
    ("ml.m7i.12xlarge", 2.903),  // estimate
    ("ml.m7i.16xlarge", 3.871),  // estimate
    ("ml.m7i.24xlarge", 5.806),  // estimate
    ("ml.m7i.48xlarge", 11.612), // estimate
    ("ml.c4.xlarge", 0.239),
    ("ml.c4.2xlarge", 0.477),
    ("ml.c4.4xlarge", 0.955),
    ("ml.c4.8xlarge", 1.91),
    ("ml.c5.xlarge", 0.204),
    ("ml.c5.2xlarge", 0.408),
    ("ml.c5.4xlarge", 0.816),
    ("ml.c5.9xlarge", 1.836),
    ("ml.c5.18xlarge", 3.672),
    ("ml.c5n.xlarge", 0.259),
    ("ml.c5n.2xlarge", 0.518),
    ("ml.c5n.4xlarge", 1.037),
    ("ml.c5n.9xlarge", 2.333),
    ("ml.c5n.18xlarge", 4.666),
    ("ml.c6i.xlarge", 0.204),
    ("ml.c6i.2xlarge", 0.408),
    ("ml.c6i.4xlarge", 0.816),
    ("ml.c6i.8xlarge", 1.632),
    ("ml.c6i.12xlarge", 2.448),
    ("ml.c6i.16xlarge", 3.264),
    ("ml.c6i.24xlarge", 4.896),
    ("ml.c6i.32xlarge", 6.528),
    ("ml.c7i.large", 0.107),     // estimate
    ("ml.c7i.xlarge", 0.214),    // estimate
    ("ml.c7i.2xlarge", 0.428),   // estimate
    ("ml.c7i.4xlarge", 0.857),   // estimate
    ("ml.c7i.8xlarge", 1.714),   // estimate
    ("ml.c7i.12xlarge", 2.570),  // estimate
    ("ml.c7i.16xlarge", 3.427),  // estimate
    ("ml.c7i.24xlarge", 5.141),  // estimate
    ("ml.c7i.48xlarge", 10.282), // estimate
    ("ml.r5.large", 0.151),
    ("ml.r5.xlarge", 0.302),
    ("ml.r5.2xlarge", 0.605),
    ("ml.r5.4xlarge", 1.21),
    ("ml.r5.8xlarge", 2.419),
    ("ml.r5.12xlarge", 3.629),
    ("ml.r5.16xlarge", 4.838),
    ("ml.r5.24xlarge", 7.258),
    ("ml.p2.xlarge", 1.125),
    ("ml.p2.8xlarge", 8.64),
    ("ml.p2.16xlarge", 17.28),
    ("ml.p3.2xlarge", 3.825),
    ("ml.p3.8xlarge", 14.688),
    ("ml.p3.16xlarge", 28.152),
    ("ml.p3dn.24xlarge", 35.894),
    ("ml.p4d.24xlarge", 37.688),
    ("ml.p4de.24xlarge", 47.11), // estimate
    ("ml.p5.48xlarge", 113.068),
    ("ml.p5e.48xlarge", 124.375),  // estimate
    ("ml.p5en.48xlarge", 130.075), // estimate
    ("ml.g4dn.xlarge", 0.736),
    ("ml.g4dn.2xlarge", 0.94),
    ("ml.g4dn.4xlarge", 1.505),
    ("ml.g4dn.8xlarge", 2.72),
    ("ml.g4dn.12xlarge", 4.89),
    ("ml.g4dn.16xlarge", 5.44),
    ("ml.g5.xlarge", 1.408),
    ("ml.g5.2xlarge", 1.515),
    ("ml.g5.4xlarge", 2.03),
    ("ml.g5.8xlarge", 3.06),
    ("ml.g5.12xlarge", 7.09),
    ("ml.g5.16xlarge", 5.12),
    ("ml.g5.24xlarge", 10.18),
    ("ml.g5.48xlarge", 20.36),
    ("ml.g6.xlarge", 1.006),       // estimate
    ("ml.g6.2xlarge", 1.222),      // estimate
    ("ml.g6.4xlarge", 1.654),      // estimate
    ("ml.g6.8xlarge", 2.518),      // estimate
    ("ml.g6.12xlarge", 5.752),     // estimate
    ("ml.g6.16xlarge", 4.246),     // estimate
    ("ml.g6.24xlarge", 8.344),     // estimate
    ("ml.g6.48xlarge", 16.688),    // estimate
    ("ml.g6e.xlarge", 2.326),      // estimate
    ("ml.g6e.2xlarge", 2.803),     // estimate
    ("ml.g6e.4xlarge", 3.755),     // estimate
    ("ml.g6e.8xlarge", 5.661),     // estimate
    ("ml.g6e.12xlarge", 13.116),   // estimate
    ("ml.g6e.16xlarge", 9.471),    // estimate
    ("ml.g6e.24xlarge", 18.832),   // estimate
    ("ml.g6e.48xlarge", 37.664),   // estimate
    ("ml.trn1.2xlarge", 1.544),    // estimate
    ("ml.trn1.32xlarge", 24.725),  // estimate
    ("ml.trn1n.32xlarge", 28.497), // estimate
];

/// On-demand USD per hour of one `instance_type` instance training in
/// `region`; `None` for a type or region the table does not price.
pub fn hourly_usd(instance_type: &str, region: &str) -> Option<f64> {
    if !PRICED_REGIONS.contains(&region) {
        return None;
    }
    TRAINING_USD_PER_HOUR
        .iter()
        .find(|(t, _)| *t == instance_type)
        .map(|(_, usd)| *usd)
}

/// The most a job can cost, from its limits.
///
/// SageMaker stops a job at `MaxRuntimeInSeconds` of training time, on demand
/// and with managed spot alike, and bills `BillableTimeInSeconds` x instance
/// count at the on-demand rate; with spot, billable time is the training time
/// less the spot saving, and time spent waiting for capacity (up to
/// `max_wait`) is not billed. So `max_runtime` x price x instances bounds both,
/// and spot's saving, which is unknown until the job ends, only lowers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub instance_type: String,
    pub region: String,
    /// On-demand USD per instance-hour.
    pub hourly_usd: f64,
    pub instance_count: u32,
    pub max_runtime_secs: u64,
    /// `max_runtime` x `hourly_usd` x `instance_count`: the on-demand worst case.
    pub on_demand_usd: f64,
    /// For a managed spot job, the most it can be billed: the same figure as
    /// `on_demand_usd` (see the type's doc); `None` for an on-demand job.
    pub spot_ceiling_usd: Option<f64>,
}

impl Cost {
    /// The figure a limit is checked against: the worst case whichever way the job runs.
    pub fn worst_usd(&self) -> f64 {
        self.spot_ceiling_usd.unwrap_or(self.on_demand_usd)
    }
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at most {} ({} at {}/h x {} x {})",
            usd(self.on_demand_usd),
            self.instance_type,
            usd_rate(self.hourly_usd),
            plural(self.instance_count, "instance"),
            humantime::format_duration(std::time::Duration::from_secs(self.max_runtime_secs)),
        )?;
        if let Some(ceiling) = self.spot_ceiling_usd {
            write!(
                f,
                "; with spot at most {}, less the spot saving, which is known when the job ends",
                usd(ceiling)
            )?;
        }
        Ok(())
    }
}

/// The worst case of `job` (see [`Cost`]); `None` when [`hourly_usd`] has no
/// price for its instance type in its region.
pub fn worst_case(job: &ResolvedJob) -> Option<Cost> {
    let hourly = hourly_usd(&job.instance_type, &job.region)?;
    let on_demand_usd =
        hourly * job.max_runtime_secs as f64 / 3600.0 * f64::from(job.instance_count);
    Some(Cost {
        instance_type: job.instance_type.clone(),
        region: job.region.clone(),
        hourly_usd: hourly,
        instance_count: job.instance_count,
        max_runtime_secs: job.max_runtime_secs,
        on_demand_usd,
        spot_ceiling_usd: job.max_wait_secs.map(|_| on_demand_usd),
    })
}

/// The sum of the worst cases of a sweep's points; `None` when a point's
/// price is unknown.
pub fn sweep_worst_case(plan: &SweepPlan) -> Option<f64> {
    plan.points
        .iter()
        .map(|p| worst_case(&p.job).map(|c| c.worst_usd()))
        .sum()
}

/// What an ended job cost, from `DescribeTrainingJob`'s `TrainingTimeInSeconds`
/// and `BillableTimeInSeconds`.
#[derive(Debug, Clone, PartialEq)]
pub struct Billed {
    /// `BillableTimeInSeconds` x instance count x the on-demand rate, which is
    /// how SageMaker bills on-demand and managed spot jobs alike.
    pub usd: f64,
    /// The spot saving, `1 - billable / training` (0 for an on-demand job).
    pub spot_saving: f64,
}

/// The cost SageMaker's billed seconds imply. `BillableTimeInSeconds` is per
/// instance ("multiply by InstanceCount", says the API reference); `None`
/// when the price is unknown.
pub fn billed(
    instance_type: &str,
    region: &str,
    instance_count: u32,
    training_secs: u64,
    billable_secs: u64,
) -> Option<Billed> {
    let hourly = hourly_usd(instance_type, region)?;
    let spot_saving = if training_secs == 0 {
        0.0
    } else {
        (1.0 - billable_secs as f64 / training_secs as f64).max(0.0)
    };
    Some(Billed {
        usd: hourly * billable_secs as f64 / 3600.0 * f64::from(instance_count),
        spot_saving,
    })
}

/// A launch refused by `job.max_cost_usd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    /// The figure and the limit.
    pub message: String,
    /// The fix.
    pub help: String,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; help: {}", self.message, self.help)
    }
}

impl std::error::Error for OverBudget {}

/// Check one job against `limit` (its `job.max_cost_usd`): `Ok` with the
/// worst case (`None` when the price is unknown and there is no limit),
/// `Err` when the worst case is above the limit or cannot be computed.
pub fn check_max_cost(limit: Option<f64>, job: &ResolvedJob) -> Result<Option<Cost>, OverBudget> {
    let cost = worst_case(job);
    let Some(limit) = limit else {
        return Ok(cost);
    };
    let Some(cost) = cost else {
        return Err(unpriced(limit, &job.instance_type, &job.region));
    };
    let worst = cost.worst_usd();
    if within(worst, limit) {
        return Ok(Some(cost));
    }
    // The longest max_runtime that keeps within the limit, as the first fix.
    let per_sec = cost.hourly_usd / 3600.0 * f64::from(cost.instance_count);
    let fits = (limit / per_sec).floor() as u64;
    let runtime = if fits == 0 {
        String::new()
    } else {
        format!(
            "lower job.max_runtime to at most \"{}\", ",
            humantime::format_duration(std::time::Duration::from_secs(fits))
        )
    };
    Err(OverBudget {
        message: format!(
            "worst-case cost {} is above job.max_cost_usd = {}: {cost}",
            usd(worst),
            usd(limit)
        ),
        help: format!("{runtime}pick a cheaper job.instance_type, or raise job.max_cost_usd"),
    })
}

/// Check a sweep's total worst case against `limit` (the sweep file's
/// `job.max_cost_usd`): `Ok` with the total (`None` when a price is unknown
/// and there is no limit).
pub fn check_sweep_max_cost(
    limit: Option<f64>,
    plan: &SweepPlan,
) -> Result<Option<f64>, OverBudget> {
    let Some(limit) = limit else {
        return Ok(sweep_worst_case(plan));
    };
    let total = plan
        .points
        .iter()
        .map(|p| limited_worst_usd(limit, &p.job))
        .sum::<Result<f64, _>>()?;
    if within(total, limit) {
        return Ok(Some(total));
    }
    let n = plan.points.len();
    Err(OverBudget {
        message: format!(
            "the sweep's worst-case cost {} ({}, each at most its max_runtime) is above job.max_cost_usd = {}",
            usd(total),
            plural(n as u32, "point"),
            usd(limit)
        ),
        help: "sweep fewer points, lower job.max_runtime, pick a cheaper job.instance_type, or raise job.max_cost_usd (a sweep's limit is on its total)".into(),
    })
}

/// A job's worst case in USD, checked against a `limit`: `Err` when its
/// price is unknown, so the limit cannot be checked.
pub fn limited_worst_usd(limit: f64, job: &ResolvedJob) -> Result<f64, OverBudget> {
    worst_case(job)
        .map(|c| c.worst_usd())
        .ok_or_else(|| unpriced(limit, &job.instance_type, &job.region))
}

fn unpriced(limit: f64, instance_type: &str, region: &str) -> OverBudget {
    OverBudget {
        message: format!(
            "job.max_cost_usd = {} cannot be checked: no price for `{instance_type}` in {region}",
            usd(limit)
        ),
        help: format!(
            "prices are known for {} (sca-train/spec/src/prices.rs): launch there, add the region's prices, or remove max_cost_usd",
            PRICED_REGIONS.join(" and ")
        ),
    }
}

/// `$12.34`.
/// Whether `usd` is within `limit`, allowing for float sums: three points
/// of $0.23 add up to 0.6900000000000001, which must not be "above $0.69".
pub fn within(usd: f64, limit: f64) -> bool {
    usd <= limit * (1.0 + 1e-9)
}

pub(crate) fn usd(x: f64) -> String {
    format!("${x:.2}")
}

/// `$0.115`: hourly rates keep the table's precision.
fn usd_rate(x: f64) -> String {
    let s = format!("{x:.3}");
    format!("${}", s.trim_end_matches('0').trim_end_matches('.'))
}

fn plural(n: u32, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TRAINING_INSTANCE_TYPES;

    fn job(instance_type: &str, region: &str, count: u32, runtime: u64, spot: bool) -> ResolvedJob {
        ResolvedJob {
            region: region.into(),
            role_arn: String::new(),
            output: String::new(),
            config_bucket: String::new(),
            ecr_repository: String::new(),
            image_name: String::new(),
            instance_type: instance_type.into(),
            instance_count: count,
            volume_gb: 50,
            max_runtime_secs: runtime,
            max_wait_secs: spot.then_some(runtime * 2),
            checkpoint_s3: None,
        }
    }

    #[test]
    fn every_validated_instance_type_has_a_price_in_every_priced_region() {
        for region in PRICED_REGIONS {
            for t in TRAINING_INSTANCE_TYPES {
                let p = hourly_usd(t, region);
                assert!(
                    p.is_some_and(|p| p > 0.0 && p < 200.0),
                    "{t} in {region}: {p:?}"
                );
            }
        }
        // No stale or duplicate rows.
        for (i, (t, _)) in TRAINING_USD_PER_HOUR.iter().enumerate() {
            assert!(
                TRAINING_INSTANCE_TYPES.contains(t),
                "{t} is not a validated type"
            );
            assert!(
                !TRAINING_USD_PER_HOUR[..i].iter().any(|(u, _)| u == t),
                "{t} twice"
            );
        }
    }

    #[test]
    fn within_a_family_price_grows_with_size() {
        // A transposed digit is the likeliest transcription error; sizes of one
        // family cost more as they grow (g5.16xlarge, with fewer GPUs than
        // g5.12xlarge, is the known exception, as are g6 and g6e).
        let size = |t: &str| -> f64 {
            let s = t.rsplit('.').next().unwrap();
            match s {
                "large" => 0.5,
                "xlarge" => 1.0,
                _ => s.trim_end_matches("xlarge").parse().unwrap(),
            }
        };
        for (a, pa) in TRAINING_USD_PER_HOUR {
            for (b, pb) in TRAINING_USD_PER_HOUR {
                let fam = |t: &str| t.rsplit_once('.').unwrap().0.to_string();
                if fam(a) == fam(b) && size(a) < size(b) && !a.starts_with("ml.g") {
                    assert!(pa < pb, "{a} {pa} >= {b} {pb}");
                }
            }
        }
    }

    #[test]
    fn unknown_region_or_type_has_no_price() {
        assert_eq!(hourly_usd("ml.m5.xlarge", "eu-west-1"), None);
        assert_eq!(hourly_usd("ml.m5.huge", "us-east-1"), None);
        assert_eq!(hourly_usd("ml.m5.xlarge", "us-west-2"), Some(0.23));
        assert!(worst_case(&job("ml.m5.xlarge", "eu-west-1", 1, 3600, false)).is_none());
    }

    #[test]
    fn worst_case_is_runtime_times_price_times_instances() {
        let c = worst_case(&job("ml.p3.2xlarge", "us-east-1", 2, 7 * 3600, false)).unwrap();
        assert!((c.on_demand_usd - 3.825 * 7.0 * 2.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.spot_ceiling_usd, None);
        assert_eq!(
            c.to_string(),
            "at most $53.55 (ml.p3.2xlarge at $3.825/h x 2 instances x 7h)"
        );
        let s = worst_case(&job("ml.p3.2xlarge", "us-east-1", 1, 1800, true)).unwrap();
        assert_eq!(s.spot_ceiling_usd, Some(s.on_demand_usd));
        assert!((s.worst_usd() - 1.9125).abs() < 1e-9);
        assert!(s.to_string().contains("with spot at most $1.91"), "{s}");
    }

    #[test]
    fn billed_uses_billable_seconds_per_instance() {
        // On demand: billable = training.
        let b = billed("ml.m5.xlarge", "us-west-2", 1, 3600, 3600).unwrap();
        assert!(
            (b.usd - 0.23).abs() < 1e-12 && b.spot_saving == 0.0,
            "{b:?}"
        );
        // Spot, 70% saving, 2 instances.
        let b = billed("ml.p3.2xlarge", "us-east-1", 2, 10_000, 3_000).unwrap();
        assert!(
            (b.usd - 3.825 * 3000.0 / 3600.0 * 2.0).abs() < 1e-9,
            "{b:?}"
        );
        assert!((b.spot_saving - 0.7).abs() < 1e-12);
        assert_eq!(
            billed("ml.m5.xlarge", "us-west-2", 1, 0, 0).unwrap().usd,
            0.0
        );
        assert!(billed("ml.m5.xlarge", "ap-south-1", 1, 1, 1).is_none());
    }

    #[test]
    fn max_cost_refuses_with_the_figure_the_limit_and_the_fix() {
        let j = job("ml.p3.2xlarge", "us-west-2", 1, 7 * 3600, false);
        assert!(check_max_cost(None, &j).unwrap().is_some());
        assert!(check_max_cost(Some(30.0), &j).is_ok());
        let e = check_max_cost(Some(10.0), &j).unwrap_err();
        assert_eq!(
            e.message,
            "worst-case cost $26.77 is above job.max_cost_usd = $10.00: at most $26.77 (ml.p3.2xlarge at $3.825/h x 1 instance x 7h)"
        );
        // 10 / 3.825 h = 2h 36m 51s.
        assert!(
            e.help
                .starts_with("lower job.max_runtime to at most \"2h 36m 51s\""),
            "{}",
            e.help
        );
        // Unpriced: no limit, no error; a limit cannot be checked.
        let far = job("ml.p3.2xlarge", "eu-central-1", 1, 3600, false);
        assert_eq!(check_max_cost(None, &far), Ok(None));
        let e = check_max_cost(Some(10.0), &far).unwrap_err();
        assert!(
            e.message
                .contains("no price for `ml.p3.2xlarge` in eu-central-1"),
            "{e}"
        );
    }
}
