//! `cargo xtask docs screenshot`: generated documentation assets. The README's
//! `docs/report.png` is `experiment report --screenshot` over three toy-sized
//! local runs made for it (a private runs directory in a temporary one, the
//! synthetic dataset): two of one experiment differing in the learning rate
//! and one tile, and a second experiment. The runs pin this checkout's
//! commit with `--allow-dirty`, which does not change the picture.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::{flags, workspace};

/// A U-Net of depth 2 on 64-pixel synthetic tiles: seconds per epoch on a CPU.
fn toy_experiment(name: &str, learning_rate: f64, epochs: u32) -> String {
    format!(
        r#"# Toy-sized run for docs/report.png (`cargo xtask docs screenshot`).
[experiment]
name = "{name}"
description = "toy run for the report screenshot"
seed = 3

[dataset]
imagery = "data"
masks = "data"
imagery_regex = "_AnalyticMS_SR_clip_tiled$"
mask_regex = "_binary$"
tile_size = 64
train_fraction = 0.75
block_zoom = 13
synthetic = {{ tiles = 24, seed = 5 }}

[[channels]]
bands = [1, 2, 3, 4]
mean = [0.35, 0.35, 0.35, 0.35]
std = [0.25, 0.25, 0.25, 0.25]

[[classes]]
name = "snow"
color = "white"

[model]
depth = 2
base_width = 4
loss = {{ bce = 1.0, dice = 0.5 }}

[train]
epochs = {epochs}
batch_size = 4
learning_rate = {learning_rate}
checkpoint_every = 1

[job]
instance_type = "ml.m5.xlarge"
max_runtime = "1h"
"#
    )
}

impl flags::Docs {
    pub fn run(self) -> Result<ExitCode> {
        match self {
            flags::Docs::Screenshot(cmd) => cmd.run(),
        }
    }
}

impl flags::DocsScreenshot {
    fn run(self) -> Result<ExitCode> {
        let root = workspace::root();
        let out = if self.out.is_absolute() {
            self.out.clone()
        } else {
            root.join(&self.out)
        };
        let lab = tempfile::tempdir().context("creating a temporary directory")?;
        let dir = lab.path();
        let runs = dir.join("runs");
        let xtask = std::env::current_exe().context("locating the xtask binary")?;
        let sh = workspace::shell(&root)?;
        sh.set_var("SCA_RUNS_DIR", &runs);
        let run = |sh: &Shell, file: &Path| -> Result<()> {
            cmd!(sh, "{xtask} experiment run {file} --allow-dirty")
                .run()
                .with_context(|| format!("running the toy experiment {}", file.display()))
        };
        let write = |name: &str, text: String| -> Result<std::path::PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let exp = write("toy.toml", toy_experiment("toy-report", 0.01, 4))?;
        run(&sh, &exp)?;
        write("toy.toml", toy_experiment("toy-report", 0.02, 4))?;
        change_one_tile(&dir.join("data"))?;
        run(&sh, &exp)?;
        let other = write("other.toml", toy_experiment("toy-report-other", 0.01, 3))?;
        run(&sh, &other)?;
        let html = dir.join("report.html");
        cmd!(
            sh,
            "{xtask} experiment report --out {html} --screenshot {out}"
        )
        .run()
        .context("writing the report and its screenshot")?;
        println!("{}", out.display());
        Ok(ExitCode::SUCCESS)
    }
}

/// Flip one bit in the middle of the first imagery tile (uncompressed: it
/// still decodes), so the second run's data manifest differs by one tile.
fn change_one_tile(data: &Path) -> Result<()> {
    let mut stack = vec![data.to_path_buf()];
    let mut tiles = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "tif") {
                tiles.push(p);
            }
        }
    }
    tiles.sort();
    let tile = tiles
        .first()
        .with_context(|| format!("no tiles under {}", data.display()))?;
    let mut bytes = std::fs::read(tile)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(tile, bytes).with_context(|| format!("writing {}", tile.display()))?;
    Ok(())
}
