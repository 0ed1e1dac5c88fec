//! Log capture: every log line of the test process goes to the test's
//! output (as `with_test_writer` would) and into a bounded buffer that
//! tests search, e.g. for the error a failed ACME order must log.

use std::io::Write;
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;

/// Bytes of log kept; older lines are dropped first.
const MAX_CAPTURED: usize = 8 * 1024 * 1024;

static CAPTURED: Mutex<String> = Mutex::new(String::new());

/// Log lines captured so far that contain every one of `needles`.
pub fn lines_with(needles: &[&str]) -> Vec<String> {
    let text = CAPTURED.lock().unwrap_or_else(|e| e.into_inner());
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// The writer [`crate::init`] installs.
#[derive(Clone, Copy, Debug, Default)]
pub struct CapturingWriter;

impl Write for CapturingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        // print! is what the test harness captures per test.
        print!("{text}");
        let mut captured = CAPTURED.lock().unwrap_or_else(|e| e.into_inner());
        if captured.len() + text.len() > MAX_CAPTURED {
            let cut = captured.len().min(MAX_CAPTURED / 2);
            let cut = (cut..captured.len())
                .find(|i| captured.is_char_boundary(*i))
                .unwrap_or(0);
            captured.drain(..cut);
        }
        captured.push_str(&text);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CapturingWriter {
    type Writer = CapturingWriter;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}
