//! A last-resort cleaner for processes a test started.
//!
//! `Drop` and `atexit` handle the normal cases. When the test process is killed outright
//! (SIGKILL from a timeout, Ctrl-C), neither runs, and a PostgreSQL server or a gateway
//! would be left behind. The watchdog is a tiny `sh` in its own session whose stdin is a
//! pipe from the test process: when the test process dies the pipe closes, `read` sees
//! end-of-file and the script runs its clean-up. A normal shutdown "disarms" it first by
//! writing a line, so it exits without doing anything.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};

pub(crate) struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Spawns `sh -c '<wait for EOF>; <cleanup>' sh <args…>`; `cleanup` sees the args as `$1…`.
    pub(crate) fn spawn(cleanup: &str, args: &[&str]) -> std::io::Result<Watchdog> {
        let script = format!(
            "if read -r line && [ \"$line\" = disarm ]; then exit 0; fi\n{cleanup}\nexit 0\n"
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .arg("gate-test-watchdog")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/");
        // SAFETY: setsid is async-signal-safe; its own session keeps the watchdog out of the
        // terminal's process group, so a Ctrl-C that kills the tests does not kill it too.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        Ok(Watchdog { child, stdin })
    }

    /// Tells the watchdog that clean-up already happened, and reaps it.
    pub(crate) fn disarm(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"disarm\n");
            drop(stdin);
            let _ = self.child.wait();
        }
    }
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watchdog(pid {})", self.child.id())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}
