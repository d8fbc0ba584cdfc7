//! Expansion, child files and located errors of sweeps.

use super::*;
use crate::validate::{validate_for_training, validate_str, Diagnostic};

const BASE: &str = r#"#:schema ../schema/experiment.schema.json
# keep this comment
[experiment]
name = "sw"
seed = 3

[dataset]
imagery = "s3://planet-snowcover-imagery"
masks = "s3://planet-snowcover-snow"
imagery_regex = "20180528_.*_tiled$"
mask_regex = "ASO_3M_SD_USCATE_20180528_binary$"
tile_size = 128

[[channels]]
bands = [1, 2, 3, 4]
mean = [0.1, 0.1, 0.1, 0.1]
std = [0.2, 0.2, 0.2, 0.2]

[[classes]]
name = "snow"
color = "white"

[model]
depth = 3
loss = { bce = 0.5, dice = 0.5 }

[train]
epochs = 3
learning_rate = 0.003  # tuned by hand

[job]
instance_type = "ml.m5.xlarge"
max_runtime = "1h"
"#;

fn defaults() -> WorkspaceDefaults {
    WorkspaceDefaults {
        region: Some("us-west-2".into()),
        ecr_repository: Some("sca-train".into()),
        image_name: Some("sca-train".into()),
        config_bucket: Some("sca-config".into()),
        role_arn: Some("arn:aws:iam::123456789012:role/SageMaker".into()),
        output: Some("s3://sca-models".into()),
    }
}

/// BASE with `sweep` as its `[sweep]` table.
fn with_sweep(sweep: &str) -> String {
    format!("{BASE}\n[sweep]\n{sweep}\n")
}

#[track_caller]
fn plan(text: &str) -> SweepPlan {
    match expand("exp.toml", text.as_bytes(), &defaults()) {
        Ok(p) => p,
        Err(r) => panic!("{:#?}", r.diagnostics),
    }
}

#[track_caller]
fn errors(text: &str) -> Vec<Diagnostic> {
    let r = expand("exp.toml", text.as_bytes(), &defaults()).unwrap_err();
    assert!(!r.diagnostics.is_empty());
    r.diagnostics
}

/// 1-based line and column of the `nth` (0-based) occurrence of `needle`,
/// or of the place of its `|` in it.
fn at(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let mark = needle.find('|').unwrap_or(0);
    let needle = needle.replace('|', "");
    let offset = text.match_indices(&needle).nth(nth).expect(&needle).0;
    crate::validate::line_col(text, offset + mark)
}

/// `text` gives exactly one diagnostic, at `needle`'s `nth` occurrence, whose
/// text contains every one of `says`.
#[track_caller]
fn check(text: &str, needle: &str, nth: usize, says: &[&str]) {
    let ds = errors(text);
    assert_eq!(ds.len(), 1, "{ds:#?}");
    let d = &ds[0];
    assert_eq!((d.line, d.column), at(text, needle, nth), "{d}");
    let shown = d.to_string();
    for s in says {
        assert!(shown.contains(s), "`{s}` not in `{shown}`");
    }
}

fn column(plan: &SweepPlan, key: &str) -> Vec<String> {
    plan.points
        .iter()
        .map(|p| p.values[key].to_string())
        .collect()
}

#[test]
fn grid_is_the_product_first_key_slowest() {
    let p = plan(&with_sweep(
        r#"grid = { "train.learning_rate" = [1e-3, 3e-3, 1e-2], "model.depth" = [2, 3] }"#,
    ));
    assert_eq!(p.points.len(), 6);
    assert_eq!(
        column(&p, "train.learning_rate"),
        ["0.001", "0.001", "0.003", "0.003", "0.01", "0.01"]
    );
    assert_eq!(column(&p, "model.depth"), ["2", "3", "2", "3", "2", "3"]);
    assert_eq!(p.name, "sw");
    assert_eq!(p.objective, None);
    // Grid tables may be written as sub-tables too, and order follows the file.
    let q = plan(&with_sweep(
        "[sweep.grid]\n\"model.depth\" = [2, 3]\n\"train.learning_rate\" = [1e-3, 3e-3, 1e-2]",
    ));
    assert_eq!(column(&q, "model.depth"), ["2", "2", "2", "3", "3", "3"]);
    // The same points, so the same names, whatever the order.
    let mut a: Vec<_> = p.points.iter().map(|x| &x.name).collect();
    let mut b: Vec<_> = q.points.iter().map(|x| &x.name).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn names_are_the_sweep_name_and_the_sha8_of_the_point() {
    let p = plan(&with_sweep(
        r#"grid = { "train.learning_rate" = [1e-3], "model.depth" = [2] }"#,
    ));
    let canonical = r#"{"model.depth":2,"train.learning_rate":0.001}"#;
    let want = format!("sw-{}", &hex_sha256(canonical.as_bytes())[..8]);
    assert_eq!(p.points[0].name, want);
    assert_eq!(
        p.points[0].describe(),
        "model.depth = 2, train.learning_rate = 0.001"
    );
    // Object keys are sorted too, however the table was written.
    let a = plan(&with_sweep(
        r#"grid = { "model.loss" = [{ dice = 1.0, bce = 0.5 }] }"#,
    ));
    let b = plan(&with_sweep(
        r#"grid = { "model.loss" = [{ bce = 0.5, dice = 1.0 }] }"#,
    ));
    assert_eq!(a.points[0].name, b.points[0].name);
}

#[test]
fn identical_points_are_one_child() {
    let p = plan(&with_sweep(r#"grid = { "model.depth" = [2, 3, 2] }"#));
    assert_eq!(column(&p, "model.depth"), ["2", "3"]);
    // One number written two ways is one setting, and one child.
    let p = plan(&with_sweep(
        r#"grid = { "train.learning_rate" = [1, 1.0, 0.5], "model.loss" = [{ bce = 1 }, { bce = 1.0 }] }"#,
    ));
    assert_eq!(column(&p, "train.learning_rate"), ["1", "0.5"]);
    let q = plan(&with_sweep(
        "random = { \"model.depth\" = { int_uniform = [2, 3] }, \"model.loss\" = { choice = [\"bce\", \"dice\"] } }\nsamples = 60",
    ));
    assert_eq!(q.points.len(), 4, "2 depths x 2 losses, drawn 60 times");
    let mut names: Vec<_> = q.points.iter().map(|x| &x.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 4);
}

#[test]
fn random_draws_are_seeded_in_range_and_stable() {
    let sweep = |seed: u64, samples: u32| {
        with_sweep(&format!(
            r#"[sweep.random]
"train.learning_rate" = {{ log_uniform = [1e-5, 1e-2] }}
"train.augmentation.flip" = {{ uniform = [0.1, 0.9] }}
"train.epochs" = {{ int_uniform = [1, 3] }}
[sweep]
samples = {samples}"#
        ))
        .replace("[sweep]\n[sweep.random]", "[sweep.random]")
        .replace("seed = 3", &format!("seed = {seed}"))
    };
    let a = plan(&sweep(3, 40));
    assert_eq!(a, plan(&sweep(3, 40)), "same file, same points");
    assert_eq!(a.points.len(), 40);
    let mut epochs = std::collections::BTreeSet::new();
    for p in &a.points {
        let lr = p.values["train.learning_rate"].as_f64().unwrap();
        let flip = p.values["train.augmentation.flip"].as_f64().unwrap();
        let e = p.values["train.epochs"].as_i64().unwrap();
        assert!((1e-5..=1e-2).contains(&lr), "{lr}");
        assert!((0.1..=0.9).contains(&flip), "{flip}");
        assert_eq!(
            format!("{:.3e}", lr).parse::<f64>().unwrap(),
            lr,
            "4 digits"
        );
        epochs.insert(e);
    }
    assert_eq!(epochs.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
    // Log-uniform: about a third of the draws in each decade.
    let low = a
        .points
        .iter()
        .filter(|p| p.values["train.learning_rate"].as_f64().unwrap() < 1e-4)
        .count();
    assert!((5..=22).contains(&low), "{low} of 40 below 1e-4");
    // Another seed draws others; more samples keep the first ones.
    assert_ne!(plan(&sweep(4, 40)).points[0].values, a.points[0].values);
    let more = plan(&sweep(3, 50));
    assert_eq!(more.points[..40], a.points[..]);
}

#[test]
fn the_stream_is_fixed() {
    // Pins SplitMix64 and the seeding: a change renames every random point.
    let mut r = SplitMix64(0);
    assert_eq!(r.next(), 0xe220_a839_7b1d_cdaf);
    let mut r = SplitMix64::new(3, "{}", "train.learning_rate");
    let u = r.unit();
    assert!((0.0..1.0).contains(&u));
    assert_eq!(r.below(1), 0);
    assert_eq!(round4(0.000123456), 0.0001235);
    assert_eq!(round4(31.25), 31.25);
}

#[test]
fn every_grid_point_gets_its_samples() {
    let p = plan(&with_sweep(
        "grid = { \"model.depth\" = [2, 3] }\nrandom = { \"train.learning_rate\" = { uniform = [0.001, 0.01] } }\nsamples = 3",
    ));
    assert_eq!(column(&p, "model.depth"), ["2", "2", "2", "3", "3", "3"]);
    // Each grid point draws its own values.
    assert_ne!(
        p.points[0].values["train.learning_rate"],
        p.points[3].values["train.learning_rate"]
    );
}

/// A synthetic dataset's tiles are made once per root: a sweep varying how
/// they are made is refused at the key, before any point launches; one
/// value for all points is no variation.
#[test]
fn a_sweep_varying_synthetic_tiles_is_refused_at_the_key() {
    let local = |text: String| {
        text.replace("s3://planet-snowcover-imagery", "data")
            .replace("s3://planet-snowcover-snow", "data")
    };
    let synthetic = |grid: &str| {
        local(with_sweep(&format!("grid = {{ {grid} }}"))).replace(
            "tile_size = 128",
            "tile_size = 128\nsynthetic = { tiles = 12 }",
        )
    };
    let made_once = |text: &str| {
        errors(text)
            .iter()
            .any(|d| d.message.contains("a dataset root's tiles are made once"))
    };
    for grid in [
        r#""dataset.synthetic.tiles" = [10, 20]"#,
        r#""dataset.synthetic.seed" = [1, 2]"#,
        r#""dataset.tile_size" = [64, 256]"#,
    ] {
        assert!(made_once(&synthetic(grid)), "{grid}");
    }
    // Made synthetic by the sweep itself.
    let text = local(with_sweep(
        r#"grid = { "dataset.synthetic.tiles" = [10, 20] }"#,
    ));
    assert!(made_once(&text));
    plan(&synthetic(
        r#""dataset.synthetic.tiles" = [10], "train.learning_rate" = [1e-3, 3e-3]"#,
    ));
    // One value written two ways is one value.
    plan(&synthetic(
        r#""dataset.synthetic" = [{tiles=10}, { tiles = 10 }], "train.learning_rate" = [1e-3, 3e-3]"#,
    ));
    plan(&local(with_sweep(
        r#"grid = { "dataset.tile_size" = [64, 256] }"#,
    )));
    // Drawn: varies with more than one draw of more than one value.
    let random = |random: &str, samples: u32| {
        local(with_sweep(&format!(
            "random = {{ {random} }}\nsamples = {samples}"
        )))
        .replace(
            "tile_size = 128",
            "tile_size = 128\nsynthetic = { tiles = 12 }",
        )
    };
    assert!(made_once(&random(
        r#""dataset.synthetic.seed" = { int_uniform = [1, 9] }"#,
        3
    )));
    assert!(made_once(&random(
        r#""dataset.synthetic.tiles" = { choice = [10, 20] }"#,
        2
    )));
    plan(&random(
        r#""dataset.synthetic.seed" = { int_uniform = [1, 9] }"#,
        1,
    ));
    // One sample under a grid of two points is two draws.
    let gridded = random(r#""dataset.synthetic.seed" = { int_uniform = [1, 9] }"#, 1).replace(
        "[sweep]\n",
        "[sweep]\ngrid = { \"train.learning_rate\" = [1e-3, 3e-3] }\n",
    );
    assert!(made_once(&gridded), "{gridded}");
    plan(&random(
        r#""dataset.synthetic.seed" = { int_uniform = [4, 4] }, "train.learning_rate" = { log_uniform = [1e-4, 1e-2] }"#,
        3,
    ));
    plan(&random(
        r#""dataset.synthetic.tiles" = { choice = [10, 10] }, "train.learning_rate" = { log_uniform = [1e-4, 1e-2] }"#,
        3,
    ));
}

/// The sweep file's own values never run: a finding of them that every
/// point overrides is no finding; one a point keeps is still the file's.
#[test]
fn a_parent_value_every_point_replaces_is_not_refused() {
    let gpu = |grid: &str| {
        with_sweep(&format!("grid = {{ {grid} }}")).replace(
            "learning_rate = 0.003",
            "learning_rate = 0.003\ndevice = \"cuda\"",
        )
    };
    // ml.m5.xlarge has no GPU; both points do.
    let p = plan(&gpu(
        r#""job.instance_type" = ["ml.g5.xlarge", "ml.g6.xlarge"]"#,
    ));
    assert_eq!(p.points.len(), 2);
    // A point that keeps a CPU instance: refused, at the file's own key as
    // before, the sweep's findings beside it.
    let e = errors(&gpu(
        r#""job.instance_type" = ["ml.g5.xlarge", "ml.m5.large"]"#,
    ));
    assert!(
        e.iter().any(|d| d.message.contains("ml.m5.xlarge")),
        "{e:#?}"
    );
    let e = errors(&gpu(r#""train.learning_rate" = [1e-3, 3e-3]"#));
    assert!(
        e.iter().any(|d| d.message.contains("ml.m5.xlarge")),
        "{e:#?}"
    );
}

/// Two points whose names clash (their hashes' 8 digits agree) are found,
/// so a sweep never writes one point's file over another's.
#[test]
fn points_of_one_name_are_found() {
    let mut p = plan(&with_sweep(
        r#"grid = { "train.learning_rate" = [1e-3, 2e-3, 3e-3] }"#,
    ));
    assert_eq!(same_name(&p.points), None);
    let clash = p.points[0].name.clone();
    p.points[2].name = clash;
    assert_eq!(same_name(&p.points), Some((0, 2)));
    assert!(shown_values(&p.points[2]).contains("train.learning_rate = 0.003"));
}

#[test]
fn a_child_is_the_parent_with_the_point_set() {
    let text = with_sweep(
        r#"# a comment in the sweep
grid = { "train.learning_rate" = [1e-3], "model.loss.dice" = [0.8], "train.weight_decay" = [0.01], "dataset.synthetic.tiles" = [10] }
max_parallel = 2
objective = { metric = "val_iou", goal = "max" }"#,
    )
    .replace("s3://planet-snowcover-imagery", "data")
    .replace("s3://planet-snowcover-snow", "data");
    let p = plan(&text);
    assert_eq!(p.max_parallel, Some(2));
    assert_eq!(
        p.objective,
        Some(Objective {
            metric: crate::types::Metric::ValIou,
            goal: crate::types::Goal::Max
        })
    );
    let point = &p.points[0];
    let child = String::from_utf8(point.bytes.clone()).unwrap();
    assert!(
        child.starts_with("#:schema ../schema/experiment.schema.json\n# keep this comment\n"),
        "{child}"
    );
    assert!(
        child.contains(&format!("name = \"{}\"\n", point.name)),
        "{child}"
    );
    // Set where it was, as written, with its comment; added where it was not.
    assert!(
        child.contains("learning_rate = 1e-3  # tuned by hand\n"),
        "{child}"
    );
    assert!(
        child.contains("loss = { bce = 0.5, dice = 0.8 }\n"),
        "{child}"
    );
    assert!(child.contains("weight_decay = 0.01\n"), "{child}");
    assert!(
        child.contains("tile_size = 128\n\n[dataset.synthetic]\ntiles = 10\n"),
        "{child}"
    );
    assert!(!child.contains("sweep"), "{child}");
    // Everything else as it was.
    let rest = |t: &str| -> String {
        let changed = [
            "name = \"sw",
            "learning_rate",
            "loss =",
            "weight_decay",
            "[dataset.synthetic]",
            "tiles = 10",
        ];
        t.lines()
            .filter(|l| !l.is_empty() && !changed.iter().any(|p| l.starts_with(p)))
            .take_while(|l| !l.starts_with("[job]"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        rest(&child).contains("[[channels]]\nbands"),
        "{}",
        rest(&child)
    );
    assert_eq!(rest(&child), rest(&text));
    // The child is a valid experiment, for the launcher and for the trainer.
    let r = validate_str(&point.name, &child, &defaults());
    assert!(r.is_valid(), "{:#?}", r.diagnostics);
    let exp = r.experiment.unwrap();
    assert_eq!(exp.experiment.name, point.name);
    assert_eq!(exp.train.learning_rate, 1e-3);
    assert!(exp.sweep.is_none());
    assert_eq!(r.job.unwrap(), point.job);
    assert!(validate_for_training("c.toml", &point.bytes).is_valid());
}

#[test]
fn unknown_key_path_is_located_with_a_suggestion() {
    let text = with_sweep(r#"grid = { "train.lerning_rate" = [1e-3] }"#);
    check(
        &text,
        "\"train.lerning_rate\"",
        0,
        &[
            "unknown key path `train.lerning_rate`",
            "did you mean `train.learning_rate`?",
        ],
    );
    let text = with_sweep("[sweep.random]\n\"model.dpeth\" = { int_uniform = [2, 4] }");
    let text = text.replacen("[sweep]\n", "[sweep]\nsamples = 2\n", 1);
    check(
        &text,
        "\"model.dpeth\"",
        0,
        &["did you mean `model.depth`?"],
    );
    // Keys in arrays of tables are not sweepable.
    let text = with_sweep(r#"grid = { "channels.mean" = [[0.1]] }"#);
    check(&text, "\"channels.mean\"", 0, &["unknown key path"]);
}

#[test]
fn a_bad_value_is_located_at_the_value_naming_the_point() {
    let text =
        with_sweep(r#"grid = { "train.learning_rate" = [1e-3, 3e-3], "model.depth" = [3, 9] }"#);
    check(
        &text,
        "9]",
        0,
        &[
            "exp.toml:",
            "`model.depth`: sweep point train.learning_rate = 1e-3, model.depth = 9 (point 2 of 4; 1 more point fails the same way): 9 is greater than the maximum of 6",
        ],
    );
    let text = with_sweep(r#"grid = { "model.loss" = ["bce", "lovaz"] }"#);
    check(
        &text,
        "\"lovaz\"",
        0,
        &["(point 2 of 2)", "did you mean `lovasz`?"],
    );
    let text = with_sweep(r#"grid = { "train.epochs" = ["three"] }"#);
    check(
        &text,
        "\"three\"",
        0,
        &[
            "sweep point train.epochs = \"three\" (point 1 of 1)",
            "wrong type",
        ],
    );
    // A rule between keys blames the swept one: tile_size 96 and depth 6.
    let text = with_sweep(r#"grid = { "model.depth" = [6] }"#)
        .replace("tile_size = 128", "tile_size = 96");
    check(
        &text,
        "6]",
        0,
        &["model.depth = 6", "tile size 96 is not divisible by 64"],
    );
    // A random draw is blamed on its distribution.
    let text = with_sweep("random = { \"model.depth\" = { int_uniform = [7, 8] } }\nsamples = 1");
    check(
        &text,
        "{ int_uniform",
        0,
        &["sweep point model.depth = ", "maximum of 6"],
    );
}

#[test]
fn keys_that_cannot_be_swept_are_refused() {
    for (key, says) in [
        ("experiment.name", "children are named for you"),
        ("sweep.samples", "does not vary itself"),
        ("job.max_cost_usd", "limit is on the total"),
        ("model", "is a whole table"),
        ("train..epochs", "not a key path"),
    ] {
        let text = with_sweep(&format!("grid = {{ \"{key}\" = [1] }}"));
        check(&text, &format!("\"{key}\""), 0, &[says]);
    }
    // The seed may be swept: repeats of one configuration.
    assert_eq!(
        plan(&with_sweep(r#"grid = { "experiment.seed" = [1, 2, 3] }"#))
            .points
            .len(),
        3
    );
}

#[test]
fn malformed_sweeps_are_located() {
    let text = with_sweep(r#"random = { "model.depth" = { int_uniform = [2, 4] } }"#);
    check(
        &text,
        "{ \"model.depth\"",
        0,
        &["`random` without `samples`"],
    );
    let text = with_sweep("grid = { \"model.depth\" = [2] }\nsamples = 3");
    check(&text, "samples = |3", 0, &["`samples` without `random`"]);
    let text = with_sweep("max_parallel = 2");
    check(&text, "[|sweep]", 0, &["no keys to vary"]);
    let text = with_sweep(
        "random = { \"train.learning_rate\" = { log_uniform = [0.0, 1e-2] } }\nsamples = 3",
    );
    check(&text, "{ log_uniform", 0, &["0 < lo < hi"]);
    let text = with_sweep("random = { \"train.epochs\" = { int_uniform = [5, 2] } }\nsamples = 3");
    check(&text, "{ int_uniform", 0, &["lo <= hi"]);
    let text = with_sweep(r#"grid = { "model.depth" = [2], "model.depth " = [3] }"#);
    assert!(!errors(&text).is_empty());
    let text = with_sweep("grid = { \"model.loss\" = [\"bce\"] }\nrandom = { \"model.loss.dice\" = { uniform = [0.1, 0.9] } }\nsamples = 2");
    check(&text, "\"model.loss.dice\"", 0, &["overlaps `model.loss`"]);
    let text = with_sweep(r#"grid = { "model.loss.dice" = [0.5] }"#)
        .replace("loss = { bce = 0.5, dice = 0.5 }", "loss = \"bce\"");
    check(
        &text,
        "\"model.loss.dice\"",
        0,
        &["inside `model.loss`, which this file sets to a value"],
    );
    // Schema errors in [sweep] come from the schema, located as usual.
    let text = with_sweep(r#"grid = { "model.depth" = [] }"#);
    check(&text, "[]", 0, &["sweep.grid.model.depth"]);
    let text = with_sweep(r#"objective = { metric = "val_iuo", goal = "max" }"#);
    check(&text, "\"val_iuo\"", 0, &["did you mean `val_iou`?"]);
    let text = with_sweep(r#"grdi = { "model.depth" = [2] }"#);
    check(&text, "grdi", 0, &["did you mean `grid`?"]);
}

#[test]
fn the_name_leaves_room_for_the_point() {
    let text = with_sweep(r#"grid = { "model.depth" = [2] }"#)
        .replace("name = \"sw\"", &format!("name = \"{}\"", "a".repeat(31)));
    check(&text, "\"aaaa", 0, &["at most 30 characters"]);
    let ok = with_sweep(r#"grid = { "model.depth" = [2] }"#)
        .replace("name = \"sw\"", &format!("name = \"{}\"", "a".repeat(30)));
    assert_eq!(plan(&ok).points[0].name.len(), MAX_EXPERIMENT_NAME);
}

#[test]
fn too_many_points_are_refused() {
    let values = (0..40)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let text = with_sweep(&format!(
        r#"grid = {{ "experiment.seed" = [{values}], "train.epochs" = [{values}] }}"#
    ));
    check(&text, "[|sweep]", 0, &["1600 points; at most 1000"]);
}

#[test]
fn the_trainer_refuses_a_sweep_file() {
    let text = with_sweep(r#"grid = { "model.depth" = [2] }"#);
    let r = validate_for_training("exp.toml", text.as_bytes());
    assert_eq!(r.diagnostics.len(), 1, "{:#?}", r.diagnostics);
    let d = &r.diagnostics[0];
    assert_eq!((d.line, d.column), at(&text, "[|sweep]", 0));
    assert!(
        d.to_string()
            .contains("`cargo xtask experiment sweep FILE`"),
        "{d}"
    );
    // The launcher's validation of the same file gives its plan in the report.
    let r = validate_str("exp.toml", &text, &defaults());
    assert!(r.is_valid() && r.sweep.is_some() && r.experiment.is_some());
}

#[test]
fn expanding_a_file_without_a_sweep_says_so() {
    let r = expand("exp.toml", BASE.as_bytes(), &defaults()).unwrap_err();
    assert_eq!(r.diagnostics.len(), 1);
    assert!(
        r.diagnostics[0].message.contains("no [sweep] table"),
        "{:?}",
        r.diagnostics
    );
    assert!(r.experiment.is_none());
    assert!(validate_str("exp.toml", BASE, &defaults()).sweep.is_none());
}

#[test]
fn max_cost_is_checked_for_a_job_and_for_a_sweep_total() {
    // ml.m5.xlarge at $0.23/h for 1h.
    let single = BASE.replace(
        "max_runtime = \"1h\"",
        "max_runtime = \"1h\"\nmax_cost_usd = 0.2",
    );
    let ds = validate_str("exp.toml", &single, &defaults()).diagnostics;
    assert_eq!(ds.len(), 1, "{ds:#?}");
    assert_eq!(
        (ds[0].line, ds[0].column),
        at(&single, "max_cost_usd = |0.2", 0)
    );
    let shown = ds[0].to_string();
    for s in [
        "worst-case cost $0.23 is above job.max_cost_usd = $0.20",
        "lower job.max_runtime to at most \"52m 10s\"",
    ] {
        assert!(shown.contains(s), "`{s}` not in `{shown}`");
    }
    let fits = single.replace("max_cost_usd = 0.2", "max_cost_usd = 0.25");
    assert!(validate_str("exp.toml", &fits, &defaults()).is_valid());
    // Three points of $0.23 each: $0.69 in all, above the limit once (no
    // error per point: each is within it).
    let sweep = with_sweep(r#"grid = { "model.depth" = [2, 3, 4] }"#).replace(
        "max_runtime = \"1h\"",
        "max_runtime = \"1h\"\nmax_cost_usd = 0.5",
    );
    check(
        &sweep,
        "max_cost_usd = |0.5",
        0,
        &[
            "the sweep's worst-case cost $0.69 (3 points",
            "above job.max_cost_usd = $0.50",
        ],
    );
    let p = plan(&sweep.replace("max_cost_usd = 0.5", "max_cost_usd = 0.7"));
    assert!((crate::sweep_worst_case(&p).unwrap() - 0.69).abs() < 1e-9);
    // Exactly at the limit, though 0.23 * 3 adds up to 0.6900000000000001.
    plan(&sweep.replace("max_cost_usd = 0.5", "max_cost_usd = 0.69"));
    // A point over the limit on its own is no point left out: all three
    // are in the total, refused over it.
    let long = with_sweep(r#"grid = { "job.max_runtime" = ["1h", "3h"] }"#).replace(
        "max_runtime = \"1h\"",
        "max_runtime = \"1h\"\nmax_cost_usd = 0.5",
    );
    check(
        &long,
        "max_cost_usd = |0.5",
        0,
        &["the sweep's worst-case cost $0.92 (2 points"],
    );
    let every = with_sweep(r#"grid = { "model.depth" = [2, 3] }"#).replace(
        "max_runtime = \"1h\"",
        "max_runtime = \"3h\"\nmax_cost_usd = 0.5",
    );
    check(
        &every,
        "max_cost_usd = |0.5",
        0,
        &["the sweep's worst-case cost $1.38 (2 points"],
    );
    // Nor a point in a region without prices: the limit cannot be checked.
    let regions = with_sweep(r#"grid = { "job.region" = ["us-west-2", "eu-west-1"] }"#).replace(
        "max_runtime = \"1h\"",
        "max_runtime = \"1h\"\nmax_cost_usd = 5.0",
    );
    check(
        &regions,
        "max_cost_usd = |5.0",
        0,
        &["no price for `ml.m5.xlarge` in eu-west-1"],
    );
    // Not positive, or not a number: the schema's.
    let zero = BASE.replace(
        "max_runtime = \"1h\"",
        "max_runtime = \"1h\"\nmax_cost_usd = 0",
    );
    assert!(!validate_str("exp.toml", &zero, &defaults()).is_valid());
    let nan = BASE.replace(
        "max_runtime = \"1h\"",
        "max_runtime = \"1h\"\nmax_cost_usd = nan",
    );
    assert!(!validate_str("exp.toml", &nan, &defaults()).is_valid());
    // A region without prices cannot be checked against a limit.
    let far = single.replace(
        "max_cost_usd = 0.2",
        "max_cost_usd = 5.0\nregion = \"eu-west-1\"",
    );
    let ds = validate_str("exp.toml", &far, &defaults()).diagnostics;
    assert!(
        ds.len() == 1
            && ds[0]
                .message
                .contains("no price for `ml.m5.xlarge` in eu-west-1"),
        "{ds:#?}"
    );
}

#[test]
fn objective_metrics_name_the_trainers_records() {
    use crate::types::{Goal, Metric};
    assert_eq!(Metric::ValIou.split_and_key(), ("val", "iou"));
    assert_eq!(Metric::TrainLoss.split_and_key(), ("train", "loss"));
    assert!(Goal::Max.better(0.9, 0.8) && !Goal::Max.better(0.8, 0.9));
    assert!(Goal::Min.better(0.1, 0.2));
    assert!(Goal::Max.better(0.1, f64::NAN) && !Goal::Min.better(f64::NAN, 0.1));
}

#[test]
fn grid_values_may_be_tables_written_as_arrays_of_tables() {
    let text = with_sweep(
        "[[sweep.grid.\"model.loss\"]]\nbce = 1.0\n\n[[sweep.grid.\"model.loss\"]]\nbce = 0.5\ndice = 0.5",
    )
    .replace("[sweep]\n[[sweep", "[[sweep");
    let p = plan(&text);
    assert_eq!(
        column(&p, "model.loss"),
        [r#"{"bce":1.0}"#, r#"{"bce":0.5,"dice":0.5}"#]
    );
    let child = String::from_utf8(p.points[1].bytes.clone()).unwrap();
    assert!(
        child.contains("loss = { bce = 0.5, dice = 0.5 }\n"),
        "{child}"
    );
}

#[test]
fn random_choices_may_be_tables_written_as_arrays_of_tables() {
    let text = with_sweep(
        "samples = 20\n\n[[sweep.random.\"model.loss\".choice]]\nbce = 1.0\n\n[[sweep.random.\"model.loss\".choice]]\nbce = 0.5\ndice = 0.5",
    );
    assert!(validate_str("exp.toml", &text, &defaults()).is_valid());
    let p = plan(&text);
    let mut losses = column(&p, "model.loss");
    losses.sort();
    losses.dedup();
    assert_eq!(losses, [r#"{"bce":0.5,"dice":0.5}"#, r#"{"bce":1.0}"#]);
    let child = p
        .points
        .iter()
        .find(|x| x.values["model.loss"].get("dice").is_some())
        .map(|x| String::from_utf8(x.bytes.clone()).unwrap())
        .unwrap();
    assert!(
        child.contains("loss = { bce = 0.5, dice = 0.5 }\n"),
        "{child}"
    );
    // An empty choice is an error naming the key, never a draw from nothing.
    let text = with_sweep("samples = 2\nrandom = { \"model.loss\" = { choice = [] } }");
    check(&text, "{ choice", 0, &["sweep.random.model.loss"]);
}

mod no_panic {
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("model.depth".to_string()),
            Just("model.loss".to_string()),
            Just("model.loss.dice".to_string()),
            Just("train.learning_rate".to_string()),
            Just("train.augmentation".to_string()),
            Just("dataset.synthetic.tiles".to_string()),
            Just("job.instance_type".to_string()),
            "[a-z.]{0,12}",
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("1".to_string()),
            Just("-3".to_string()),
            Just("0.5".to_string()),
            Just("1e308".to_string()),
            Just("nan".to_string()),
            Just("\"bce\"".to_string()),
            Just("\"ml.g5.xlarge\"".to_string()),
            Just("{ bce = 0.5 }".to_string()),
            Just("[]".to_string()),
            Just("true".to_string()),
        ]
    }

    fn distribution() -> impl Strategy<Value = String> {
        prop_oneof![
            (value(), value()).prop_map(|(a, b)| format!("{{ uniform = [{a}, {b}] }}")),
            (value(), value()).prop_map(|(a, b)| format!("{{ log_uniform = [{a}, {b}] }}")),
            (any::<i64>(), any::<i64>())
                .prop_map(|(a, b)| format!("{{ int_uniform = [{a}, {b}] }}")),
            proptest::collection::vec(value(), 0..3)
                .prop_map(|v| format!("{{ choice = [{}] }}", v.join(", "))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn arbitrary_sweeps(
            grid in proptest::collection::vec((key(), proptest::collection::vec(value(), 0..3)), 0..3),
            random in proptest::collection::vec((key(), distribution()), 0..2),
            samples in proptest::option::of(0u32..4),
        ) {
            let mut sweep = String::new();
            let entry = |(k, v): &(String, String)| format!("\"{k}\" = {v}");
            let grid: Vec<_> = grid.iter().map(|(k, v)| (k.clone(), format!("[{}]", v.join(", ")))).collect();
            sweep.push_str(&format!("grid = {{ {} }}\n", grid.iter().map(entry).collect::<Vec<_>>().join(", ")));
            sweep.push_str(&format!("random = {{ {} }}\n", random.iter().map(entry).collect::<Vec<_>>().join(", ")));
            if let Some(n) = samples {
                sweep.push_str(&format!("samples = {n}\n"));
            }
            match expand("fuzz.toml", with_sweep(&sweep).as_bytes(), &defaults()) {
                Ok(plan) => {
                    prop_assert!(!plan.points.is_empty());
                    for p in &plan.points {
                        let r = validate_str(&p.name, std::str::from_utf8(&p.bytes).unwrap(), &defaults());
                        prop_assert!(r.is_valid(), "{:#?}", r.diagnostics);
                    }
                }
                Err(r) => {
                    for d in &r.diagnostics {
                        prop_assert!(d.line >= 1, "{d}");
                    }
                }
            }
        }
    }
}

/// A swept key path written unquoted is a table to TOML: the message says
/// to quote it.
#[test]
fn an_unquoted_swept_key_path_is_told_to_be_quoted() {
    let text = with_sweep("").replace(
        "[sweep]\n",
        "[sweep.grid]\ntrain.learning_rate = [0.001, 0.003]\n",
    );
    let ds = errors(&text);
    assert_eq!(ds.len(), 1, "{ds:#?}");
    let help = ds[0].help.as_deref().unwrap_or_default();
    assert!(
        help.contains("`\"train.learning_rate\" = [...]`"),
        "{:#?}",
        ds[0]
    );
    // Three parts: the whole path.
    let deep = with_sweep("").replace(
        "[sweep]\n",
        "[sweep.grid]\ntrain.augmentation.flip = [0.0, 0.5]\n",
    );
    let ds = errors(&deep);
    let help = ds[0].help.as_deref().unwrap_or_default();
    assert!(
        help.contains("`\"train.augmentation.flip\" = [...]`"),
        "{ds:#?}"
    );
    // Quoted, its value a table, not an array: no word on quoting.
    let quoted = with_sweep("").replace(
        "[sweep]\n",
        "[sweep.grid]\n\"model.loss\" = { bce = 0.5, dice = 0.5 }\n",
    );
    let ds = errors(&quoted);
    assert!(
        ds.iter()
            .all(|d| !d.help.as_deref().unwrap_or_default().contains("quoted key")),
        "{ds:#?}"
    );
}
