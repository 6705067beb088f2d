use std::path::PathBuf;

use aeris_edge::config::{Layers, KEYS_HELP};
use aeris_runtime::Workers;
use clap::Parser;

/// The Aeris edge agent: takes sensor readings from the board's MQTT broker,
/// validates them, keeps every one in a crash-safe SQLite buffer and syncs
/// them to the cloud broker, deleting each only once the cloud acknowledged it.
#[derive(Parser, Debug)]
#[command(name = "aeris-edge", version, after_long_help = KEYS_HELP, after_help = "Run with --help for every config key.")]
struct Cli {
    /// TOML config file; keys not in it keep their defaults, and AERIS_*
    /// environment variables override both.
    #[arg(short, long, env = "AERIS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the merged configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    logging: aeris_runtime::LogArgs,
}

/// One malloc arena for the whole agent. glibc gives threads that allocate
/// their own arenas (up to eight per core), and the free pages each keeps
/// stay resident: with one, the agent's peak RSS in aeris-bench-edge fell
/// from 16.1-16.4 MB to 14.4-14.6 MB at the same rate (README). The
/// agent's threads allocate little, so they do not wait on each other.
/// `MALLOC_ARENA_MAX` or an `arena_max` in `GLIBC_TUNABLES` still decide.
///
/// Large blocks stay on glibc's own mmap threshold: fixed at 64 KiB (so a
/// batch's columns went back to the kernel after each batch), it cost ten
/// times the page faults and 18 % more system time in aeris-bench-edge.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn one_malloc_arena() {
    let tuned = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if !tuned {
        // SAFETY: mallopt only sets an allocator parameter, and it runs
        // before the agent starts any thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

fn main() -> std::process::ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    let layers = Layers::new(cli.config.clone());
    let loaded = match layers.load_current() {
        Ok(c) => c,
        Err(e) => {
            let file = cli
                .config
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(no file)".into());
            eprintln!("aeris-edge: bad configuration ({file}): {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if cli.print_config {
        match toml::to_string_pretty(&loaded.config) {
            Ok(s) => {
                print!("{s}");
                return std::process::ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("aeris-edge: cannot print config: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    // One worker thread: the agent's tasks hand work to each other (ingest,
    // the buffer thread's commits, acks, the uplink) far more than they
    // compute, and with a worker per core every hand-over woke another
    // thread. One worker: about 20 % less CPU per reading and a higher
    // rate (README, "Edge agent end to end"). The buffer and blocking work
    // keep their own threads; TOKIO_WORKER_THREADS overrides the count.
    aeris_runtime::run_until_signal("aeris-edge", &cli.logging, Workers::Fixed(1), |shutdown| {
        aeris_edge::run_layered(layers, loaded, aeris_edge::Telemetry::default(), shutdown)
    })
}
