//! Progress on stderr: indicatif bars on a terminal, plain lines otherwise
//! (CI logs), so that stdout carries only results (image id, digest).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether stderr is a terminal (bars) or not (plain lines).
pub fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// A byte-count progress report (context upload, layer push).
#[derive(Clone)]
pub struct Bar {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    /// Plain mode: the last quarter printed.
    printed: Arc<AtomicU64>,
}

impl Bar {
    pub fn bytes(label: &str, total: u64) -> Self {
        let bar = interactive().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar
        });
        if bar.is_none() {
            eprintln!("{label}: 0 of {}", super::context::human_bytes(total));
        }
        Bar {
            bar,
            label: label.into(),
            total,
            printed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A bar without a known total: a spinner with the latest status.
    pub fn spinner(label: &str) -> Self {
        let bar = interactive().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix}: {wide_msg}")
                    .expect("a valid template"),
            );
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Bar {
            bar,
            label: label.into(),
            total: 0,
            printed: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn set_position(&self, done: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None if self.total > 0 => {
                let quarter = done * 4 / self.total;
                if quarter > self.printed.fetch_max(quarter, Ordering::Relaxed) && quarter < 4 {
                    eprintln!("{}: {}%", self.label, quarter * 25);
                }
            }
            None => {}
        }
    }

    /// A status message: the spinner's text, or a plain line.
    pub fn status(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(msg.to_string()),
            None => eprintln!("{}: {msg}", self.label),
        }
    }

    /// A line printed above the bar.
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }

    pub fn finish(&self, msg: &str) {
        match &self.bar {
            Some(bar) if self.total == 0 => bar.finish_with_message(msg.to_string()),
            Some(bar) => bar.finish_with_message(format!("{}: {msg}", self.label)),
            None => eprintln!("{}: {msg}", self.label),
        }
    }

    pub fn abandon(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}
