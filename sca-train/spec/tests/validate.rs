//! Validation: every class of bad input gives a located diagnostic, and no
//! input makes the validator panic.

use sca_spec::{validate_bytes, validate_file, validate_str, Diagnostic, WorkspaceDefaults};

const VALID: &str = r#"
[experiment]
name = "unit-test"
seed = 3

[dataset]
imagery = "s3://planet-snowcover-imagery"
masks = "s3://planet-snowcover-snow"
imagery_regex = "20180528_.*_tiled$"
mask_regex = "ASO_3M_SD_USCATE_20180528_binary$"

[[channels]]
bands = [1, 2, 3, 4]
mean = [0.1, 0.1, 0.1, 0.1]
std = [0.2, 0.2, 0.2, 0.2]

[[classes]]
name = "snow"
color = "white"

[train]
epochs = 3
batch_size = 4

[job]
instance_type = "ml.p3.2xlarge"
max_runtime = "2h"
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

fn diagnostics(text: &str) -> Vec<Diagnostic> {
    validate_str("exp.toml", text, &defaults()).diagnostics
}

/// `text` gives exactly one diagnostic, at `line`, about `key`, whose message,
/// expectation or help contains `needle`.
#[track_caller]
fn check(text: &str, line: usize, key: &str, needle: &str) {
    let ds = diagnostics(text);
    assert_eq!(ds.len(), 1, "expected one diagnostic, got {ds:#?}");
    let d = &ds[0];
    let all = format!(
        "{} | {} | {}",
        d.message,
        d.expected.clone().unwrap_or_default(),
        d.help.clone().unwrap_or_default()
    );
    assert_eq!((d.line, d.key.as_str()), (line, key), "{d:#?}");
    assert!(d.column >= 1, "{d:#?}");
    assert!(all.contains(needle), "`{needle}` not in `{all}`");
    assert!(
        d.to_string().starts_with(&format!("exp.toml:{line}:")),
        "{d}"
    );
}

/// VALID with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from}");
    VALID.replacen(from, to, 1)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

#[test]
fn valid_file_has_no_diagnostics_and_resolves_defaults() {
    let report = validate_str("exp.toml", VALID, &defaults());
    assert!(report.is_valid(), "{:#?}", report.diagnostics);
    let job = report.job.unwrap();
    assert_eq!(job.region, "us-west-2");
    assert_eq!(job.max_runtime_secs, 7200);
    let exp = report.experiment.unwrap();
    assert_eq!(exp.dataset.tile_size, 512, "default tile size");
    assert_eq!(exp.dataset.zoom, 15, "default zoom");
}

#[test]
fn malformed_toml_is_located() {
    let text = edit("batch_size = 4", "batch_size = = 4");
    check(&text, line_of(&text, "batch_size"), "", "invalid TOML");
}

#[test]
fn misspelled_key_suggests_the_right_one() {
    let text = edit("batch_size = 4", "bach_size = 4");
    check(
        &text,
        line_of(&text, "bach_size"),
        "train.bach_size",
        "did you mean `batch_size`?",
    );
    let text = edit("[train]", "[trian]");
    check(
        &text,
        line_of(&text, "[trian]"),
        "trian",
        "did you mean `train`?",
    );
}

#[test]
fn wrong_type_is_located() {
    let text = edit("epochs = 3", "epochs = \"three\"");
    check(&text, line_of(&text, "epochs"), "train.epochs", "integer");
}

#[test]
fn out_of_range_number_is_located() {
    let text = edit("batch_size = 4", "batch_size = 0");
    check(
        &text,
        line_of(&text, "batch_size"),
        "train.batch_size",
        "minimum",
    );
    // Past what the field holds: the schema's bound, at its key, not the
    // typed parse's bare "invalid value".
    let text = edit(
        "batch_size = 4",
        "batch_size = 4\ncheckpoint_every = 4294967296",
    );
    check(
        &text,
        line_of(&text, "checkpoint_every"),
        "train.checkpoint_every",
        "maximum",
    );
}

#[test]
fn missing_required_table_names_it() {
    let text = VALID.replace("[[classes]]\nname = \"snow\"\ncolor = \"white\"\n", "");
    check(&text, 1, "", "missing required key `classes`");
}

#[test]
fn enum_typo_suggests_variant() {
    let text = edit("[train]", "[model]\nloss = \"lovaz\"\n\n[train]");
    check(
        &text,
        line_of(&text, "lovaz"),
        "model.loss",
        "did you mean `lovasz`?",
    );
    let text = edit("[train]", "[model]\narchitecture = \"unte\"\n\n[train]");
    check(
        &text,
        line_of(&text, "unte"),
        "model.architecture",
        "did you mean `unet`?",
    );
}

#[test]
fn channel_lengths_must_agree() {
    let text = edit("mean = [0.1, 0.1, 0.1, 0.1]", "mean = [0.1, 0.1, 0.1]");
    check(
        &text,
        line_of(&text, "mean ="),
        "channels[0].mean",
        "4 values",
    );
}

/// A 1 x 1 bottom: batch norm there over a batch of one tile has one
/// value a channel, which the trainer would refuse mid-run.
#[test]
fn a_one_pixel_bottom_with_batch_norm_is_refused() {
    let text = edit("[[channels]]", "tile_size = 64\n\n[[channels]]")
        .replace("[train]", "[model]\ndepth = 6\n\n[train]");
    check(
        &text,
        line_of(&text, "depth = 6"),
        "model.depth",
        "lower model.depth to 5, or use tiles of 128 pixels",
    );
    assert!(diagnostics(&text.replace("depth = 6", "depth = 5")).is_empty());
    let no_bn = text.replace("depth = 6", "depth = 6\nbatch_norm = false");
    assert!(diagnostics(&no_bn).is_empty(), "{:#?}", diagnostics(&no_bn));
}

#[test]
fn tile_size_must_divide_by_32() {
    let text = edit("[[channels]]", "tile_size = 500\n\n[[channels]]");
    check(
        &text,
        line_of(&text, "tile_size"),
        "dataset.tile_size",
        "multiple of 32",
    );
}

#[test]
fn bad_regex_is_reported() {
    let text = edit("20180528_.*_tiled$", "20180528_(.*_tiled$");
    check(
        &text,
        line_of(&text, "imagery_regex"),
        "dataset.imagery_regex",
        "does not compile",
    );
    // Parses, but compiles past the size limit the data listing enforces.
    let text = edit("20180528_.*_tiled$", "20180528_\\\\w{1000}\\\\w{1000}");
    check(
        &text,
        line_of(&text, "imagery_regex"),
        "dataset.imagery_regex",
        "size limit",
    );
    // Nested counts past u64: no overflow (a panic in a debug build, a
    // count wrapped to 0 and the pattern never compiled in a release one).
    for re in [
        "((a{10000000}){10000000}){10000000}",
        "(((a{65536}){65536}){65536}){65536}",
    ] {
        let text = edit("20180528_.*_tiled$", re);
        check(
            &text,
            line_of(&text, "imagery_regex"),
            "dataset.imagery_regex",
            "size limit",
        );
    }
}

#[test]
fn bad_s3_uri_is_reported() {
    let text = edit("s3://planet-snowcover-snow", "s3://Bad_Bucket/x");
    check(&text, line_of(&text, "masks ="), "dataset.masks", "bucket");
    let text = edit("s3://planet-snowcover-snow", "gs://bucket/x");
    check(
        &text,
        line_of(&text, "masks ="),
        "dataset.masks",
        "not supported",
    );
}

#[test]
fn role_arn_shape_is_checked() {
    let text = edit(
        "max_runtime = \"2h\"",
        "max_runtime = \"2h\"\nrole_arn = \"arn:aws:iam::123:role/x\"",
    );
    check(
        &text,
        line_of(&text, "role_arn"),
        "job.role_arn",
        "arn:aws:iam::",
    );
}

#[test]
fn role_arn_from_nowhere_is_reported() {
    let mut d = defaults();
    d.role_arn = None;
    let ds = validate_str("exp.toml", VALID, &d).diagnostics;
    assert_eq!(ds.len(), 1, "{ds:#?}");
    assert!(ds[0]
        .help
        .as_deref()
        .unwrap()
        .contains("[workspace.metadata.sca]"));
}

#[test]
fn long_name_explains_the_job_suffix() {
    let text = edit(
        "name = \"unit-test\"",
        &format!("name = \"{}\"", "n".repeat(40)),
    );
    check(&text, line_of(&text, "name ="), "experiment.name", "63");
}

#[test]
fn unknown_instance_type_suggests_one() {
    let text = edit("ml.p3.2xlarge", "ml.p3.2xlarg");
    check(
        &text,
        line_of(&text, "instance_type"),
        "job.instance_type",
        "did you mean `ml.p3.2xlarge`?",
    );
    let text = edit("ml.p3.2xlarge", "ml.p9.2xlarge");
    check(
        &text,
        line_of(&text, "instance_type"),
        "job.instance_type",
        "not a SageMaker training instance type",
    );
}

#[test]
fn cuda_needs_a_gpu_instance_type() {
    let volta = edit("batch_size = 4", "batch_size = 4\ndevice = \"cuda\"");
    // ml.p3's V100 has a GPU, but one the image's kernels cannot be built for.
    check(
        &volta,
        line_of(&volta, "device"),
        "train.device",
        "NVIDIA V100 GPUs of `ml.p3.2xlarge` (compute capability 7.0) are older",
    );
    let turing = volta.replace("ml.p3.2xlarge", "ml.g4dn.xlarge");
    check(
        &turing,
        line_of(&turing, "device"),
        "train.device",
        "(compute capability 7.5) are older than the image's GPU kernels can be built for (8.0 and newer)",
    );
    for t in [
        "ml.p4d.24xlarge",
        "ml.g5.xlarge",
        "ml.g6e.xlarge",
        "ml.p5.48xlarge",
    ] {
        let gpu = volta.replace("ml.p3.2xlarge", t);
        assert_eq!(
            diagnostics(&gpu),
            vec![],
            "{t} has a GPU the kernels run on"
        );
    }
    let gpu = volta.replace("ml.p3.2xlarge", "ml.g5.xlarge");
    let text = gpu.replace("ml.g5.xlarge", "ml.m5.xlarge");
    check(
        &text,
        line_of(&text, "device"),
        "train.device",
        "`ml.m5.xlarge` has no GPU",
    );
    // auto falls back to the CPU, so it is fine anywhere; a typo is an enum error.
    assert_eq!(diagnostics(&text.replace("\"cuda\"", "\"auto\"")), vec![]);
    let typo = text.replace("\"cuda\"", "\"gpu\"");
    assert!(
        diagnostics(&typo).iter().any(|d| d.key == "train.device"),
        "{:#?}",
        diagnostics(&typo)
    );
}

#[test]
fn bf16_needs_the_cuda_device() {
    let gpu = edit(
        "batch_size = 4",
        "batch_size = 4\ndevice = \"cuda\"\nprecision = \"bf16\"",
    )
    .replace("ml.p3.2xlarge", "ml.g5.xlarge");
    assert_eq!(diagnostics(&gpu), vec![], "bf16 on an A10G");
    for other in ["cpu", "auto"] {
        let text = gpu.replace("\"cuda\"", &format!("\"{other}\""));
        check(
            &text,
            line_of(&text, "precision"),
            "train.precision",
            &format!("precision = \"bf16\" but device = \"{other}\""),
        );
    }
    let typo = gpu.replace("\"bf16\"", "\"fp16\"");
    assert!(
        diagnostics(&typo)
            .iter()
            .any(|d| d.key == "train.precision"),
        "{:#?}",
        diagnostics(&typo)
    );
}

#[test]
fn spot_needs_a_long_enough_wait_and_checkpoints() {
    let text = edit(
        "max_runtime = \"2h\"",
        "max_runtime = \"2h\"\ncheckpoint_s3 = \"s3://sca-ckpt/x\"\nspot = { max_wait = \"1h\" }",
    );
    check(
        &text,
        line_of(&text, "spot"),
        "job.spot.max_wait",
        "max_wait >= max_runtime",
    );
    let text = edit(
        "max_runtime = \"2h\"",
        "max_runtime = \"2h\"\nspot = { max_wait = \"3h\" }",
    );
    check(&text, line_of(&text, "spot"), "job.spot", "checkpoint_s3");
    // A wait the API's 32-bit field cannot hold is refused, not wrapped.
    let text = edit(
        "max_runtime = \"2h\"",
        "max_runtime = \"2h\"\ncheckpoint_s3 = \"s3://sca-ckpt/x\"\nspot = { max_wait = \"100y\" }",
    );
    check(
        &text,
        line_of(&text, "spot"),
        "job.spot.max_wait",
        "outside SageMaker's limits",
    );
    // A misspelled key inside the table is named, with the right one (it
    // was one "not valid under any of the schemas" error for the table).
    let text = edit(
        "max_runtime = \"2h\"",
        "max_runtime = \"2h\"\ncheckpoint_s3 = \"s3://sca-ckpt/x\"\nspot = { max_wiat = \"3h\" }",
    );
    let ds = diagnostics(&text);
    assert!(
        ds.iter()
            .any(|d| d.key == "job.spot.max_wiat"
                && d.to_string().contains("did you mean `max_wait`?")),
        "{ds:#?}"
    );
}

#[test]
fn a_tag_sagemaker_would_refuse_is_reported() {
    let text = format!("{}\n[job.tags]\nnote = \"lr sweep (v2)\"\n", edit("", ""));
    check(
        &text,
        line_of(&text, "note ="),
        "job.tags.note",
        "does not allow",
    );
    // Letters of any script, spaces and the allowed marks pass; length is
    // counted in characters, not bytes.
    let text = format!(
        "{}\n[job.tags]\nnote = \"Schneehöhe: lr=1e-3 @ run/2\"\n\"{}\" = \"x\"\n",
        edit("", ""),
        "é".repeat(100)
    );
    assert!(diagnostics(&text).is_empty(), "{:#?}", diagnostics(&text));
}

#[test]
fn bad_duration_is_reported() {
    let text = edit("max_runtime = \"2h\"", "max_runtime = \"2 fortnights\"");
    check(
        &text,
        line_of(&text, "max_runtime"),
        "job.max_runtime",
        "duration",
    );
}

#[test]
fn every_error_of_a_file_is_reported() {
    let text = edit("batch_size = 4", "bach_size = 4")
        .replace("epochs = 3", "epochs = -1")
        .replace("color = \"white\"", "colour = \"white\"");
    let ds = diagnostics(&text);
    assert_eq!(ds.len(), 4, "{ds:#?}"); // bach_size, epochs, colour (unknown) + color (missing)
}

#[test]
fn empty_file() {
    let ds = diagnostics("  \n");
    assert_eq!(ds.len(), 1);
    assert!(ds[0].message.contains("empty"), "{:?}", ds[0]);
    assert_eq!(ds[0].line, 1);
}

#[test]
fn non_utf8_is_located() {
    let mut bytes = b"[experiment]\nname = \"a".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    let ds = validate_bytes("exp.toml", &bytes, &defaults()).diagnostics;
    assert_eq!(ds.len(), 1);
    assert_eq!((ds[0].line, ds[0].column), (2, 10), "{:?}", ds[0]);
    assert!(ds[0].message.contains("UTF-8"));
}

#[test]
fn files_that_are_not_experiment_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = validate_file(&dir.path().join("nope.toml"), &defaults());
    assert!(missing.diagnostics[0].message.contains("no such file"));
    let directory = validate_file(dir.path(), &defaults());
    assert!(directory.diagnostics[0].message.contains("directory"));
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "#".repeat(10 * 1024 * 1024)).unwrap();
    let big = validate_file(&big, &defaults());
    assert!(
        big.diagnostics[0].message.contains("limited to"),
        "{:?}",
        big.diagnostics
    );
}

#[test]
fn nan_is_not_a_number() {
    let text = edit("mean = [0.1, 0.1, 0.1, 0.1]", "mean = [0.1, nan, 0.1, 0.1]");
    check(
        &text,
        line_of(&text, "mean ="),
        "channels[0].mean[1]",
        "number",
    );
}

mod no_panic {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = validate_bytes("fuzz.toml", &bytes, &defaults());
        }

        /// Valid TOML documents built from the format's own keys with arbitrary values.
        #[test]
        fn arbitrary_documents(doc in document()) {
            let _ = validate_str("fuzz.toml", &doc, &defaults());
        }

        /// Single-line mutations of a valid file: deletions and replacements.
        #[test]
        fn mutated_valid_file(line in 0usize..40, replacement in "[ -~]{0,20}") {
            let mut lines: Vec<&str> = VALID.lines().collect();
            if line < lines.len() { lines[line] = &replacement; }
            let _ = validate_str("fuzz.toml", &lines.join("\n"), &defaults());
        }
    }

    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(|i| i.to_string()),
            any::<f64>().prop_map(|f| if f.is_finite() {
                format!("{f:?}")
            } else {
                "nan".into()
            }),
            any::<bool>().prop_map(|b| b.to_string()),
            "[a-z0-9:/._ -]{0,12}".prop_map(|s| format!("{s:?}")),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(", "))),
                proptest::collection::vec((key(), inner), 0..3).prop_map(|kv| {
                    let mut seen = std::collections::HashSet::new();
                    let kv: Vec<_> = kv
                        .into_iter()
                        .filter(|(k, _)| seen.insert(k.clone()))
                        .map(|(k, v)| format!("{k} = {v}"))
                        .collect();
                    format!("{{ {} }}", kv.join(", "))
                }),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("name"),
            Just("seed"),
            Just("imagery"),
            Just("masks"),
            Just("tile_size"),
            Just("bands"),
            Just("mean"),
            Just("std"),
            Just("loss"),
            Just("depth"),
            Just("epochs"),
            Just("spot"),
            Just("max_wait"),
            Just("tags"),
            Just("zoom"),
            Just("bce"),
        ]
        .prop_map(String::from)
    }

    fn document() -> impl Strategy<Value = String> {
        let table = prop_oneof![
            Just("[experiment]"),
            Just("[dataset]"),
            Just("[[channels]]"),
            Just("[[classes]]"),
            Just("[model]"),
            Just("[train]"),
            Just("[job]"),
            Just("[job.tags]"),
        ];
        proptest::collection::vec(
            (table, proptest::collection::vec((key(), value()), 0..5)),
            0..7,
        )
        .prop_map(|tables| {
            let mut out = String::new();
            for (header, kvs) in tables {
                out.push_str(header);
                out.push('\n');
                let mut seen = std::collections::HashSet::new();
                for (k, v) in kvs {
                    if seen.insert(k.clone()) {
                        out.push_str(&format!("{k} = {v}\n"));
                    }
                }
            }
            out
        })
    }
}

/// Reports of `files` (name, text), checked across each other and `elsewhere`.
fn across(files: &[(&str, &str)], elsewhere: &[(&str, &str)]) -> Vec<(String, sca_spec::Report)> {
    let mut reports: Vec<(String, sca_spec::Report)> = files
        .iter()
        .map(|(f, t)| (f.to_string(), validate_str(f, t, &defaults())))
        .collect();
    // A name given as `sweep:<name>` is a sweep's.
    let elsewhere: Vec<(String, String, bool)> = elsewhere
        .iter()
        .map(|(n, f)| match n.strip_prefix("sweep:") {
            Some(n) => (n.to_string(), f.to_string(), true),
            None => (n.to_string(), f.to_string(), false),
        })
        .collect();
    sca_spec::check_across(&mut reports, &elsewhere);
    reports
}

#[test]
fn warm_starts_name_a_defined_experiment_and_names_are_unique() {
    let step1 = edit("name = \"unit-test\"", "name = \"step-1\"");
    let warm = |from: &str| {
        edit("name = \"unit-test\"", "name = \"step-2\"").replace(
            "[train]",
            &format!("[model]\ninit_checkpoint = \"experiment:{from}\"\n\n[train]"),
        )
    };
    // Defined among the files, elsewhere in the repository, or itself: fine.
    let ok = across(&[("a.toml", &step1), ("b.toml", &warm("step-1"))], &[]);
    assert!(ok.iter().all(|(_, r)| r.is_valid()), "{ok:#?}");
    let ok = across(
        &[("b.toml", &warm("step-1"))],
        &[("step-1", "experiments/a.toml")],
    );
    assert!(ok[0].1.is_valid() && ok[0].1.experiment.is_some());
    assert!(across(&[("b.toml", &warm("step-2"))], &[])[0].1.is_valid());

    // A typo: located at the key, with the closest defined name.
    let text = warm("step-l");
    let r = &across(&[("b.toml", &text)], &[("step-1", "experiments/a.toml")])[0].1;
    assert!(r.experiment.is_none() && r.job.is_none());
    let [d] = &r.diagnostics[..] else {
        panic!("{r:#?}")
    };
    assert_eq!(
        (d.line, d.key.as_str()),
        (line_of(&text, "init_checkpoint"), "model.init_checkpoint")
    );
    assert!(
        d.message
            .contains("`step-l`, which no experiment file defines"),
        "{d}"
    );
    assert_eq!(d.help.as_deref(), Some("did you mean `experiment:step-1`?"));

    // A sweep runs as its points: a point may be warm-started from, the
    // sweep itself may not (no run is ever named after it).
    let sweep = edit("name = \"unit-test\"", "name = \"sw\"").replace(
        "[train]",
        "[sweep]\ngrid = { \"train.learning_rate\" = [1e-3, 3e-3] }\n\n[train]",
    );
    let r = across(&[("s.toml", &sweep)], &[]);
    let point = r[0].1.sweep.as_ref().expect("a valid sweep").points[1]
        .name
        .clone();
    let ok = across(&[("s.toml", &sweep), ("b.toml", &warm(&point))], &[]);
    assert!(ok.iter().all(|(_, r)| r.is_valid()), "{ok:#?}");
    let ok = across(
        &[("b.toml", &warm(&point))],
        &[("sweep:sw", "experiments/s.toml")],
    );
    assert!(ok[0].1.is_valid(), "{ok:#?}");
    let from_sweep = warm("sw");
    for elsewhere in [&[][..], &[("sweep:sw", "experiments/s.toml")][..]] {
        let files: Vec<(&str, &str)> = if elsewhere.is_empty() {
            vec![("s.toml", &sweep), ("b.toml", &from_sweep)]
        } else {
            vec![("b.toml", &from_sweep)]
        };
        let r = across(&files, elsewhere);
        let b = &r.last().unwrap().1;
        let [d] = &b.diagnostics[..] else {
            panic!("{r:#?}")
        };
        assert!(d.message.contains("a sweep never runs as itself"), "{d}");
        assert!(
            d.expected
                .as_deref()
                .unwrap()
                .contains("experiment:sw-<8 hex digits>"),
            "{d}"
        );
    }
    // Not a point of it: no such run.
    let r = across(
        &[("b.toml", &warm("sw-zz"))],
        &[("sweep:sw", "experiments/s.toml")],
    );
    assert!(!r[0].1.is_valid(), "{r:#?}");

    // One name, two files: both are told where the other is.
    let r = across(&[("a.toml", &step1), ("c.toml", &step1)], &[]);
    for (file, other) in [(0, "c.toml"), (1, "a.toml")] {
        let [d] = &r[file].1.diagnostics[..] else {
            panic!("{r:#?}")
        };
        assert_eq!(d.key, "experiment.name");
        assert!(
            d.message.ends_with(&format!("is also defined in {other}")),
            "{d}"
        );
    }
    let r = across(&[("a.toml", &step1)], &[("step-1", "experiments/old.toml")]);
    assert!(r[0].1.diagnostics[0]
        .message
        .contains("experiments/old.toml"));
    // An invalid file is left as it is.
    let broken = step1.replace("epochs = 3", "epochs = -3");
    let r = across(&[("a.toml", &broken), ("c.toml", &step1)], &[]);
    assert_eq!(r[0].1.diagnostics.len(), 1);
    assert!(r[1].1.is_valid());
}

#[test]
fn class_colours_have_their_css_values() {
    use sca_spec::validate::color_rgb;
    assert_eq!(color_rgb("pink"), Some([255, 192, 203]));
    assert_eq!(color_rgb("white"), Some([255, 255, 255]));
    assert_eq!(color_rgb("#FFa500"), Some([255, 165, 0]));
    for bad in ["#ff", "#gg0000", "#ffé00", "Pink", "", "#+f+f+f", "#-1-1-1"] {
        assert_eq!(color_rgb(bad), None, "{bad}");
    }
}
