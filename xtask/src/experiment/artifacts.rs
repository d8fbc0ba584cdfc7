//! What `experiment fetch` takes out of a job's `model.tar.gz`: only the
//! files the trainer writes into `/opt/ml/model`, at the archive's root,
//! within a size cap, streamed (never the whole archive in memory), into a
//! fresh directory that is renamed into place, without the archive's modes.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sca_spec::contract::model_files::MODEL;

/// The most an archive may unpack to, counted over every entry's size (the
/// skipped ones too, so a bomb is refused before it is read): a model of the
/// largest U-Net validation accepts is a few hundred MB.
pub const MAX_UNPACKED_BYTES: u64 = 4 << 30;

/// `name` if it is a file the trainer writes in the model directory
/// (the contract's [`model_files`](sca_spec::contract::model_files)).
pub fn is_artifact(name: &str) -> bool {
    sca_spec::contract::model_files::is_trainer_file(name)
}

/// What [`unpack`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// The files written, sorted.
    pub files: Vec<String>,
    /// The entries left out, as the archive names them.
    pub skipped: Vec<String>,
}

/// Unpack the gzipped tar read from `archive` (named `name` in messages)
/// into the empty directory `dir`: the artefacts at its root, each once, as
/// plain files (no modes kept, so nothing becomes executable); the root
/// directory entry silently, anything else skipped. Entries elsewhere or
/// unknown are skipped rather than refused: a newer trainer may write a file
/// this checkout does not know, and refusing would leave that job's model
/// unfetchable here, while skipping writes nothing unexpected and the caller
/// names every skipped entry. A known name that is not a regular file (a
/// link, a device) or that comes twice is refused: that archive was not
/// packed from a model directory.
pub fn unpack(archive: impl Read, name: &str, dir: &Path, cap: u64) -> Result<Unpacked> {
    // Its entries' headers capped too: the tar reader holds them whole.
    let (stream, allowance) = sca_data::metered::metered(flate2::read::GzDecoder::new(archive));
    let mut tar = tar::Archive::new(stream);
    let mut out = Unpacked::default();
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for entry in tar
        .entries()
        .with_context(|| format!("{name} is not a gzipped tar"))?
    {
        let mut entry =
            entry.with_context(|| format!("reading {name}: not a gzipped tar, or cut short"))?;
        allowance.entry(entry.raw_file_position(), entry.size());
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        total = total.saturating_add(entry.size());
        if total > cap {
            bail!(
                "{name}: at entry `{path}` its contents exceed the cap of {cap} bytes (an archive packed from a model directory is far smaller): not unpacked"
            );
        }
        let kind = entry.header().entry_type();
        let bare = path.trim_start_matches("./");
        if kind.is_dir() && matches!(bare, "" | "." | "/") {
            continue;
        }
        if bare.contains('/') || !is_artifact(bare) {
            out.skipped.push(path);
            continue;
        }
        if !kind.is_file() {
            bail!("{name}: `{path}` is a {kind:?} entry, not a regular file: not unpacked");
        }
        if !seen.insert(bare.to_string()) {
            bail!("{name}: `{path}` comes twice: not unpacked");
        }
        let target = dir.join(bare);
        // `create_new`: the directory is fresh, so an existing file is a bug, never overwritten.
        let mut file = std::fs::File::create_new(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        std::io::copy(&mut entry, &mut file)
            .with_context(|| format!("unpacking `{path}` from {name} to {}", target.display()))?;
        out.files.push(bare.to_string());
    }
    out.files.sort();
    Ok(out)
}

/// Fill `dest` with what `fill` writes into a fresh sibling directory, then
/// rename it into place; `what` (the job) has no artefacts when `fill` wrote
/// none, and `dest` is then left as it was. An existing `dest` is replaced
/// only when it holds nothing but artefacts (an earlier fetch's):
/// `--to ~/models` must not delete someone's files; and one holding a
/// model only by a fetch that has one.
pub fn into_fresh_dir(
    dest: &Path,
    what: &str,
    fill: impl FnOnce(&Path) -> Result<Unpacked>,
) -> Result<Unpacked> {
    if dest.exists() {
        let entries = std::fs::read_dir(dest).with_context(|| {
            format!("{} exists and is not a readable directory", dest.display())
        })?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dest.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type()?.is_file() || !is_artifact(&name) {
                bail!(
                    "{} holds `{name}`, which no fetch writes: fetch replaces its destination whole; remove it or choose another --to",
                    dest.display()
                );
            }
        }
    }
    // A model here is replaced only by one: the split lists a failed or
    // running job's trainer wrote at its start are no model.
    let has_model = dest.join(MODEL).is_file();
    let mut value = None;
    crate::fsx::replace_dir(dest, |work| {
        // A temporary directory is private (0700); a fetched model is not.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755))?;
        }
        let unpacked = fill(work)?;
        if unpacked.files.is_empty() {
            bail!("{what} has no model artifacts");
        }
        if has_model && !unpacked.files.iter().any(|f| f == MODEL) {
            let skipped = match unpacked.skipped.is_empty() {
                true => String::new(),
                false => format!(", and left out {}", unpacked.skipped.join(", ")),
            };
            bail!(
                "{what} has no {MODEL} (only {}{skipped}): its job saved no model (`cargo xtask experiment status` says how it ended), so the model in {} is left as it was; fetch it elsewhere with --to",
                unpacked.files.join(", "),
                dest.display()
            );
        }
        value = Some(unpacked);
        Ok(())
    })?;
    Ok(value.expect("replace_dir ran fill"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `model.tar.gz` of `(path, mode, kind, bytes)` entries, written raw so
    /// that hostile paths (`..`, absolute) get in as they are.
    fn tgz(entries: &[(&str, u32, tar::EntryType, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (path, mode, kind, bytes) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_mode(*mode);
            h.set_entry_type(*kind);
            h.set_size(bytes.len() as u64);
            h.set_cksum();
            b.append(&h, *bytes).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    const FILE: tar::EntryType = tar::EntryType::Regular;

    fn listing(root: &Path) -> Vec<String> {
        let mut all = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                all.push(p.strip_prefix(root).unwrap().display().to_string());
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
        all.sort();
        all
    }

    #[test]
    fn only_root_artifacts_are_written_without_modes() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("fetched");
        let archive = tgz(&[
            ("./", 0o755, tar::EntryType::Directory, b""),
            ("./model.safetensors", 0o755, FILE, b"weights"),
            ("./metrics.json", 0o644, FILE, b"[]"),
            ("./overlay-12-3-4.png", 0o644, FILE, b"png"),
            ("../evil", 0o644, FILE, b"x"),
            ("/tmp/abs-evil", 0o644, FILE, b"x"),
            ("a/b/c/model.safetensors", 0o644, FILE, b"deep"),
            ("./run.sh", 0o755, FILE, b"#!/bin/sh"),
            ("./overlay-1-2.png", 0o644, FILE, b"x"),
        ]);
        let got = into_fresh_dir(&dest, "job", |d| {
            unpack(&archive[..], "model.tar.gz", d, MAX_UNPACKED_BYTES)
        })
        .unwrap();
        assert_eq!(
            got.files,
            ["metrics.json", "model.safetensors", "overlay-12-3-4.png"]
        );
        assert_eq!(
            got.skipped,
            [
                "../evil",
                "/tmp/abs-evil",
                "a/b/c/model.safetensors",
                "./run.sh",
                "./overlay-1-2.png"
            ]
        );
        // Nothing beside the destination, nothing under it but the three.
        assert_eq!(
            listing(root.path()),
            [
                "fetched",
                "fetched/metrics.json",
                "fetched/model.safetensors",
                "fetched/overlay-12-3-4.png"
            ]
        );
        assert_eq!(
            std::fs::read(dest.join("model.safetensors")).unwrap(),
            b"weights"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dest.join("model.safetensors"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0, "an executable bit was kept: {mode:o}");
        }
    }

    #[test]
    fn over_the_cap_is_refused_naming_archive_entry_and_cap() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("fetched");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("metrics.json"), "old").unwrap();
        let archive = tgz(&[
            ("./metrics.json", 0o644, FILE, &[b'a'; 600][..]),
            ("./unknown.bin", 0o644, FILE, &[0; 600][..]),
        ]);
        let e = into_fresh_dir(&dest, "job", |d| {
            unpack(&archive[..], "s3://b/j/output/model.tar.gz", d, 1000)
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        for part in [
            "s3://b/j/output/model.tar.gz",
            "`./unknown.bin`",
            "1000 bytes",
        ] {
            assert!(msg.contains(part), "{part} not in: {msg}");
        }
        // The earlier fetch is left as it was, and no work directory remains.
        assert_eq!(listing(root.path()), ["fetched", "fetched/metrics.json"]);
        assert_eq!(
            std::fs::read_to_string(dest.join("metrics.json")).unwrap(),
            "old"
        );
    }

    /// A long name is read whole before its entry is seen: one of more
    /// than a megabyte is refused as it is read, not held in memory.
    #[test]
    fn a_huge_long_name_is_refused_before_it_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let long = vec![b'a'; 2 << 20];
        let archive = tgz(&[
            ("././@LongLink", 0o644, tar::EntryType::GNULongName, &long),
            ("./metrics.json", 0o644, FILE, b"{}"),
        ]);
        let e = unpack(&archive[..], "m.tar.gz", dir.path(), 1000).unwrap_err();
        assert!(format!("{e:#}").contains("exceed 1048576 bytes"), "{e:#}");
        // A long name of a usual length is fine (and its entry skipped:
        // the name is not an artefact's).
        let name = "x/".repeat(200) + "metrics.json";
        let archive = tgz(&[
            (
                "././@LongLink",
                0o644,
                tar::EntryType::GNULongName,
                name.as_bytes(),
            ),
            ("./metrics.json", 0o644, FILE, b"{}"),
            ("./model.safetensors", 0o644, FILE, &[7; 3000][..]),
        ]);
        let got = unpack(&archive[..], "m.tar.gz", dir.path(), 1 << 20).unwrap();
        assert_eq!(got.files, ["model.safetensors"]);
        assert_eq!(got.skipped, [name]);
    }

    #[test]
    fn links_and_duplicates_under_known_names_are_refused() {
        let archive = tgz(&[("./model.safetensors", 0o777, tar::EntryType::Symlink, b"")]);
        let dir = tempfile::tempdir().unwrap();
        let e = unpack(&archive[..], "model.tar.gz", dir.path(), 1000).unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");

        let archive = tgz(&[
            ("./metrics.json", 0o644, FILE, b"1"),
            ("metrics.json", 0o644, FILE, b"2"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let e = unpack(&archive[..], "model.tar.gz", dir.path(), 1000).unwrap_err();
        assert!(format!("{e:#}").contains("comes twice"), "{e:#}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let e = unpack(&b"not a gzip"[..], "model.tar.gz", dir.path(), 1000).unwrap_err();
        assert!(format!("{e:#}").contains("model.tar.gz"), "{e:#}");
    }

    /// A job that saved no model (failed after its split lists were
    /// written, or still running) leaves a model fetched before in place,
    /// and fills a destination that held none.
    #[test]
    fn a_fetch_without_a_model_keeps_a_model_fetched_before() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("current");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join(MODEL), "good").unwrap();
        let e = into_fresh_dir(&dest, "job", |d| {
            std::fs::write(d.join("train_ids.txt"), "1/2/3\n")?;
            Ok(Unpacked {
                files: vec!["train_ids.txt".into()],
                skipped: vec![],
            })
        })
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("job has no model.safetensors (only train_ids.txt)"),
            "{e:#}"
        );
        assert_eq!(std::fs::read_to_string(dest.join(MODEL)).unwrap(), "good");
        assert!(!dest.join("train_ids.txt").exists());
        // Where no model stands, what the job left is fetched.
        let fresh = root.path().join("fresh");
        let got = into_fresh_dir(&fresh, "job", |d| {
            std::fs::write(d.join("train_ids.txt"), "1/2/3\n")?;
            Ok(Unpacked {
                files: vec!["train_ids.txt".into()],
                skipped: vec![],
            })
        })
        .unwrap();
        assert_eq!(got.files, ["train_ids.txt"]);
    }

    #[test]
    fn a_destination_holding_other_files_is_not_replaced() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("thesis.tex"), "mine").unwrap();
        let e = into_fresh_dir(root.path(), "job", |_| Ok(Unpacked::default())).unwrap_err();
        assert!(format!("{e:#}").contains("thesis.tex"), "{e:#}");
        assert!(root.path().join("thesis.tex").is_file());
    }

    /// What the docker backend packs (as SageMaker does) unpacks whole.
    #[test]
    #[cfg(feature = "full")]
    fn a_packed_model_directory_unpacks_whole() {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("model");
        std::fs::create_dir(&model).unwrap();
        for name in sca_spec::contract::model_files::ALL
            .iter()
            .copied()
            .chain(["overlay-1-2-3.png"])
        {
            std::fs::write(model.join(name), name).unwrap();
        }
        let tgz = root.path().join("model.tar.gz");
        crate::experiment::docker::pack_model(&model, &tgz).unwrap();
        let dest = root.path().join("fetched");
        let file = std::fs::File::open(&tgz).unwrap();
        let got = into_fresh_dir(&dest, "job", |d| {
            unpack(file, "model.tar.gz", d, MAX_UNPACKED_BYTES)
        })
        .unwrap();
        assert_eq!(
            got.files.len(),
            sca_spec::contract::model_files::ALL.len() + 1,
            "{got:?}"
        );
        assert!(got.skipped.is_empty(), "{got:?}");
        assert_eq!(
            std::fs::read_to_string(dest.join("metrics.csv")).unwrap(),
            "metrics.csv"
        );
    }

    #[test]
    fn artifact_names() {
        for ok in ["model.safetensors", "val_ids.txt", "overlay-0-10-200.png"] {
            assert!(is_artifact(ok), "{ok}");
        }
        for no in [
            "",
            ".",
            "..",
            "overlay-a-1-2.png",
            "overlay--1-2.png",
            "x/metrics.json",
            "model.safetensors.tmp",
        ] {
            assert!(!is_artifact(no), "{no}");
        }
    }
}
