//! A real Mosquitto broker on a free port, killed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Config lines replacing `allow_anonymous true`.
    auth: Option<String>,
}

fn binary() -> PathBuf {
    for dir in ["/usr/sbin", "/usr/local/sbin", "/usr/bin"] {
        let p = Path::new(dir).join("mosquitto");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("mosquitto")
}

impl Mosquitto {
    /// The broker's process id (for measuring its memory).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts a plain listener on 127.0.0.1 with anonymous access, no
    /// persistence, and queues deep enough that a slow client loses nothing.
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = Mosquitto {
            port: crate::free_port(),
            dir,
            child: None,
            auth: None,
        };
        m.launch_on_free_port(|_| None);
        m
    }

    /// Launches, and while the bind fails (a port picked free was taken by
    /// another socket before the broker bound it) tries again on new ports;
    /// `reconfigure` may pick new ports for extra listeners too.
    fn launch_on_free_port(&mut self, mut reconfigure: impl FnMut(&Path) -> Option<String>) {
        let mut last = String::new();
        for attempt in 0..5 {
            if attempt > 0 {
                self.port = crate::free_port();
                if let Some(auth) = reconfigure(self.dir.path()) {
                    self.auth = Some(auth);
                }
            }
            match self.try_launch() {
                Ok(()) => return,
                Err(log) => last = log,
            }
        }
        panic!("mosquitto did not start after 5 attempts: {last}");
    }

    /// Starts a broker that admits only `users` (name, password) and
    /// applies the ACL file `acl`.
    pub fn start_with_auth(users: &[(&str, &str)], acl: &Path) -> Mosquitto {
        Self::start_with_auth_and(users, acl, |_| String::new())
    }

    /// As [`Mosquitto::start_with_auth`], plus the config lines `extra`
    /// returns for the broker's own folder (e.g. a TLS listener whose
    /// files were put there).
    pub fn start_with_auth_and(
        users: &[(&str, &str)],
        acl: &Path,
        extra: impl Fn(&Path) -> String,
    ) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let passwd = dir.path().join("passwd");
        for (i, (user, pass)) in users.iter().enumerate() {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let ok = cmd
                .arg("-b")
                .arg(&passwd)
                .args([user, pass])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "mosquitto_passwd failed (Debian package `mosquitto`)");
        }
        let first_extra = extra(dir.path());
        // Mosquitto started as root drops to its own user before reading
        // these files (test secrets only).
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644));
        }
        let mut m = Mosquitto {
            port: crate::free_port(),
            dir,
            child: None,
            auth: Some(auth_block(&passwd, acl, &first_extra)),
        };
        let dir = m.dir.path().to_owned();
        m.launch_on_free_port(|_| Some(auth_block(&dir.join("passwd"), acl, &extra(&dir))));
        m
    }

    fn launch(&mut self) {
        // The same port again (a restart): retry while it is briefly taken.
        let mut last = String::new();
        for _ in 0..5 {
            match self.try_launch() {
                Ok(()) => return,
                Err(log) => last = log,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("mosquitto did not listen on {}: {last}", self.port);
    }

    fn try_launch(&mut self) -> Result<(), String> {
        let conf = self.dir.path().join("mosquitto.conf");
        let auth = self
            .auth
            .clone()
            .unwrap_or_else(|| "allow_anonymous true\n".into());
        let text = format!(
            "listener {} 127.0.0.1\n{auth}persistence false\n\
             max_queued_messages 1000000\nmax_inflight_messages 100\nmessage_size_limit 33554432\n",
            self.port
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        // The log is kept across restarts: this launch is up once it adds
        // a "running" line (written after its listener is bound).
        let running = |log: &str| log.matches(" running").count();
        let before = running(&self.log());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("mosquitto log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start mosquitto: install the Debian package `mosquitto` (scripts/test.sh does)");
        self.child = Some(child);
        let start = Instant::now();
        // A connect alone could reach another process that took the port
        // first (a broker that failed to bind exits a moment later).
        while running(&self.log()) == before
            || TcpStream::connect(("127.0.0.1", self.port)).is_err()
        {
            let exited = self
                .child
                .as_mut()
                .map(|c| matches!(c.try_wait(), Ok(Some(_))))
                .unwrap_or(true);
            if exited || start.elapsed() > Duration::from_secs(10) {
                self.kill();
                return Err(self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the broker (SIGKILL: in-flight messages and sessions are lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed broker again on the same port.
    pub fn start_again(&mut self) {
        self.launch();
    }

    /// Kills and starts the broker again on the same port.
    pub fn restart(&mut self, down_for: Duration) {
        self.kill();
        std::thread::sleep(down_for);
        self.launch();
    }

    /// The broker's own folder (config, log, files a test put there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

fn auth_block(passwd: &Path, acl: &Path, extra: &str) -> String {
    format!(
        "per_listener_settings false\nallow_anonymous false\npassword_file {}\nacl_file {}\nlog_type all\n{extra}",
        passwd.display(),
        acl.display(),
    )
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
