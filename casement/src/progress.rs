//! Terminal progress for `casement apply`: an indicatif bar on stderr when it is a terminal.

use casement_scheduler::apply::Progress;

/// An indicatif progress bar as the apply's [`Progress`].
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self) {
        self.0.inc(1);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A progress bar on stderr when it is a terminal, else nothing.
pub fn terminal_progress() -> Box<dyn Progress> {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} writing twins {bar:40} {pos}/{len} ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        Box::new(Bar(bar))
    } else {
        Box::new(())
    }
}
