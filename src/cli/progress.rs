//! The progress bar of long commands (sweeps): cells done / total and ETA on stderr.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use prh::sweep::Progress;

/// A progress bar on stderr: cells done / total and ETA; hidden when stderr is not a terminal.
pub struct Bar(ProgressBar);

impl Bar {
    pub fn new(quiet: bool) -> Self {
        let pb = ProgressBar::hidden();
        if !quiet && std::io::stderr().is_terminal() {
            pb.set_draw_target(ProgressDrawTarget::stderr());
        }
        pb.set_style(
            ProgressStyle::with_template("{msg:30} [{bar:30}] {pos}/{len} cells, ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Bar(pb)
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, cells: u64) {
        self.0.inc(cells);
    }
    fn message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
