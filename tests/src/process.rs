//! The project's binaries as child processes: started with environment
//! configuration, SIGKILLed on request or on drop, logs kept in a file that a
//! failing test prints.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `target/<profile>/<name>`: next to the test executable's `deps/`
/// folder, or beside a benchmark binary in `target/<profile>/`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let beside = exe.parent().map(|d| d.join(name)).filter(|p| p.exists());
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = beside.unwrap_or_else(|| dir.join(name));
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; scripts/test.sh does)",
        path.display()
    );
    path
}

pub struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts binary `name` with `env` (added to the inherited environment),
    /// appending its stderr to `log`.
    pub fn start(name: &str, env: &[(&str, String)], log: PathBuf) -> Proc {
        Self::start_program(name, binary(name), Vec::new(), env, log)
    }

    /// Runs `path`, a binary for the boards (aarch64), under qemu-user with
    /// the aarch64 glibc of Debian's `libc6-arm64-cross`.
    pub fn start_under_qemu(path: &Path, env: &[(&str, String)], log: PathBuf) -> Proc {
        let args = ["-L", "/usr/aarch64-linux-gnu"]
            .into_iter()
            .map(str::to_owned)
            .chain([path.display().to_string()])
            .collect();
        Self::start_program(
            "qemu-aarch64-static",
            PathBuf::from("qemu-aarch64-static"),
            args,
            env,
            log,
        )
    }

    /// Starts the program at `program` with `args`.
    pub fn start_program(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        env: &[(&str, String)],
        log: PathBuf,
    ) -> Proc {
        let mut p = Proc {
            name: name.to_owned(),
            program,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            log,
            child: None,
        };
        p.launch();
        p
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("AERIS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().ok()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A process's peak resident set (`VmHWM` of `/proc/PID/status`), bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
