use std::path::PathBuf;

use aeris_edge::config::{Config, KEYS_HELP};
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

/// One malloc arena for the whole agent, and large blocks straight from
/// the kernel. glibc gives threads that allocate their own arenas (up to
/// eight per core), and the free pages each keeps stay resident: with one,
/// the agent's peak RSS in aeris-bench-edge fell from 16.1-16.4 MB to
/// 14.4-14.6 MB at the same rate (README). The agent's threads allocate
/// little, so they do not wait on each other. Blocks of 64 KiB and more
/// (a batch's columns while it is encoded) are mapped and unmapped on
/// their own instead of leaving their pages in the heap: glibc would
/// otherwise raise that threshold after the first such block is freed and
/// keep the next ones on the heap. `MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_` or the same settings in `GLIBC_TUNABLES` still
/// decide.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn one_malloc_arena() {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    let tuned =
        |env: &str, tunable: &str| std::env::var_os(env).is_some() || tunables.contains(tunable);
    // SAFETY: mallopt only sets an allocator parameter, and it runs before
    // the agent starts any thread.
    unsafe {
        if !tuned("MALLOC_ARENA_MAX", "arena_max") {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
        if !tuned("MALLOC_MMAP_THRESHOLD_", "mmap_threshold") {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 10);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}

fn main() -> std::process::ExitCode {
    one_malloc_arena();
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
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
        match toml::to_string_pretty(&config) {
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
    aeris_runtime::run_until_signal("aeris-edge", &cli.logging, |shutdown| {
        aeris_edge::run(config, aeris_edge::Telemetry::default(), shutdown)
    })
}
