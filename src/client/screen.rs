//! What the user sees: the title block, the prompt and every line, written
//! to one [`Write`] and flushed at once, so that the client behaves the same
//! on a pipe as on a terminal (SPEC §2). Diagnostics never come here: they
//! go to the log (stderr).

use std::io::Write;
use std::sync::Mutex;

use log::debug;

/// The title block of SPEC §2, one line per entry (the first is the empty line
/// before it).
pub const TITLE: [&str; 8] = [
    "",
    "========= TINY SNS CLIENT =========",
    " Command Lists and Format:",
    " FOLLOW <username>",
    " UNFOLLOW <username>",
    " LIST",
    " TIMELINE",
    "=====================================",
];
/// The prompt, printed without a newline.
pub const PROMPT: &str = "Cmd> ";

/// The user interface on `out`. The mutex lets the reconnect logic and the
/// input handling both print while a failover is in progress; it is never
/// held across an await.
pub(super) struct Ui<W> {
    out: Mutex<W>,
}

impl<W: Write> Ui<W> {
    pub(super) fn new(out: W) -> Self {
        Ui {
            out: Mutex::new(out),
        }
    }

    fn write(&self, text: &str) {
        let mut out = match self.out.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A closed stdout is not a reason to stop: the user may still be
        // typing posts, and diagnostics go to stderr anyway.
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            debug!("cannot write to the output: {e}");
        }
    }

    pub(super) fn line(&self, text: &str) {
        self.write(&format!("{text}\n"));
    }

    pub(super) fn prompt(&self) {
        self.write(PROMPT);
    }

    pub(super) fn title(&self) {
        TITLE.iter().for_each(|l| self.line(l));
    }

    /// What was written, for tests that read the screen back.
    #[cfg(test)]
    pub(super) fn into_inner(self) -> W {
        self.out.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// Records what was written and how often it was flushed.
    #[derive(Default)]
    struct Probe {
        data: Vec<u8>,
        flushed: usize,
    }

    impl Write for Probe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.data.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushed += 1;
            Ok(())
        }
    }

    #[test]
    fn every_write_is_flushed() {
        let ui = Ui::new(Probe::default());
        ui.title();
        ui.prompt();
        ui.line("x");
        let probe = ui.into_inner();
        let text = String::from_utf8(probe.data).expect("utf-8");
        assert!(text.starts_with("\n========= TINY SNS CLIENT =========\n"));
        assert!(text.ends_with("=====================================\nCmd> x\n"));
        assert_eq!(probe.flushed, TITLE.len() + 2);
    }

    /// A closed output: writing fails, the client carries on.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_closed_output_is_not_fatal() {
        let ui = Ui::new(Closed);
        ui.line("lost");
        ui.prompt();
    }
}
