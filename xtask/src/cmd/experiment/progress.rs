//! The progress bar of a run's points on stderr ([`indicatif`]): points done of all, time
//! elapsed, the estimate of the time left, and how many points failed. Drawn only when stderr
//! is a terminal (indicatif's stderr target hides itself otherwise), so logs and tests get no
//! bar; the notes said beside it ([`Progress::note`]) are written either way.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The bar's line: `[####>.....] 3/8 points, 00:00:12 elapsed, ETA 20s, 1 failed`.
const TEMPLATE: &str = "  [{bar:30}] {pos}/{len} points, {elapsed_precise} elapsed, ETA {eta}{msg}";

/// The progress of `total` points; shared by the threads that run them.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    failed: AtomicUsize,
}

impl Progress {
    /// On stderr, drawn only when stderr is a terminal.
    pub fn new(total: usize) -> Self {
        Self::with_target(total, ProgressDrawTarget::stderr())
    }

    /// On `target`; nowhere when there is nothing to run.
    pub fn with_target(total: usize, target: ProgressDrawTarget) -> Self {
        let target = if total == 0 { ProgressDrawTarget::hidden() } else { target };
        let bar = ProgressBar::with_draw_target(Some(total as u64), target);
        // TEMPLATE is a constant the tests render: it parses.
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            bar.set_style(style.progress_chars("#>."));
        }
        Self { bar, failed: AtomicUsize::new(0) }
    }

    /// The points start now (the kernel is built, the first guests boot): the time elapsed and
    /// the estimate count from here, and the bar is drawn at 0.
    pub fn start(&self) {
        self.bar.reset_elapsed();
        self.bar.reset_eta();
        self.bar.tick();
    }

    /// A point is done (its result arrived, or it is recorded without one).
    pub fn point(&self) {
        self.bar.inc(1);
    }

    /// `n` of the results counted by [`point`](Self::point) were discarded, their points to
    /// run again: they are not done.
    pub fn discard(&self, n: usize) {
        self.bar.dec((n as u64).min(self.bar.position()));
    }

    /// A point was recorded as failed: counted in the bar's message.
    pub fn failed(&self) {
        let n = self.failed.fetch_add(1, Ordering::SeqCst) + 1;
        self.bar.set_message(format!(", {n} failed"));
    }

    /// Writes `line` to stderr, the bar (if drawn) out of its way.
    pub fn note(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    /// The points done so far.
    #[cfg(test)]
    pub fn done(&self) -> u64 {
        self.bar.position()
    }

    /// Leaves the bar as it is (a run stopped early stays short of the total).
    pub fn end(&self) {
        self.bar.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::TermLike;
    use std::io::IsTerminal;
    use std::sync::{Arc, Mutex};

    /// A terminal that keeps what is written to it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(&format!("{s}\n"));
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            self.0.lock().unwrap().push('\r');
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_bar_counts_points_done_less_the_discarded_and_the_failed_in_its_message() {
        let screen = Screen::default();
        let p = Progress::with_target(4, ProgressDrawTarget::term_like(Box::new(screen.clone())));
        // A boot's three results, two of them then discarded for a rerun: one point done.
        for _ in 0..3 {
            p.point();
        }
        p.discard(2);
        assert_eq!(p.done(), 1);
        // The rerun's two, and a point recorded as failed without a result.
        p.point();
        p.point();
        p.failed();
        p.point();
        assert_eq!(p.done(), 4);
        // Never below none.
        let q = Progress::with_target(2, ProgressDrawTarget::hidden());
        q.point();
        q.discard(5);
        assert_eq!(q.done(), 0);
        p.end();
        let text = screen.0.lock().unwrap().clone();
        let last = text.split(['\r', '\n']).map(str::trim_end).rfind(|l| !l.is_empty()).unwrap_or_default().to_string();
        assert!(last.contains("[##############################] 4/4 points, "), "{last:?}");
        assert!(last.contains(" elapsed, ETA ") && last.ends_with(", 1 failed"), "{last:?}");
    }

    #[test]
    fn the_bar_is_drawn_only_when_stderr_is_a_terminal() {
        assert_eq!(Progress::new(3).bar.is_hidden(), !std::io::stderr().is_terminal());
        assert!(Progress::with_target(3, ProgressDrawTarget::hidden()).bar.is_hidden());
    }

    #[test]
    fn nothing_to_run_draws_no_bar_and_a_started_bar_is_drawn_at_zero() {
        assert!(Progress::new(0).bar.is_hidden());
        let screen = Screen::default();
        let p = Progress::with_target(0, ProgressDrawTarget::term_like(Box::new(screen.clone())));
        p.start();
        p.end();
        assert_eq!(*screen.0.lock().unwrap(), "");
        let p = Progress::with_target(3, ProgressDrawTarget::term_like(Box::new(screen.clone())));
        p.start();
        assert!(screen.0.lock().unwrap().contains("] 0/3 points, "), "{:?}", screen.0.lock().unwrap());
    }

    #[test]
    fn a_run_stopped_early_leaves_the_bar_short_of_the_total() {
        let p = Progress::with_target(5, ProgressDrawTarget::hidden());
        p.point();
        p.end();
        assert_eq!(p.done(), 1);
    }
}
