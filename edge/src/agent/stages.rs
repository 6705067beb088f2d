//! The build and spawn steps: each stage built from its own settings and
//! the telemetry, then spawned into its phase.

use std::sync::{Arc, Mutex};

use aeris_wire::ModelVersion;
use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::info;

use super::commands::route_commands;
use super::inference::{start_inference, Scoring};
use super::live::Live;
use super::phase::{Phase, Phases};
use super::remote::Configurer;
use super::{Running, Telemetry};
use crate::buffer::Buffer;
use crate::config::Config;
use crate::ota::{self, slots::Slots, slots::Trial};
use crate::uplink::{self, Identity};

/// Builds every stage from its settings and spawns it into its phase. Bad
/// settings (certificates, models folder, health port) end the start here,
/// before any task runs.
pub(super) async fn spawn(
    config: &Arc<Config>,
    t: &Telemetry,
    boot_id: u64,
    configurer: Configurer,
) -> anyhow::Result<Running> {
    let (buffer, buffer_thread, identity) = open(config, t, boot_id).await?;
    let config_state = configurer.state.subscribe();
    // Bad certificate files stop the start, naming the key.
    let tls = uplink::tls::client_config(&config.cloud.tls)?;
    let phases = Phases::new();
    serve_health(config, t, &phases.serving).await?;
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let active_models = Arc::new(Mutex::new(Vec::new()));
    let (inference, model_commands) = if config.infer.enabled {
        let scoring = Scoring {
            metrics: t.infer.clone(),
            active: active_models.clone(),
            events: event_tx.clone(),
        };
        let (inference, commands) = start_inference(config, scoring, &phases.head).await?;
        (Some(inference), Some(commands))
    } else {
        (None, None)
    };
    let alerts = event_tx.clone();
    let report = ota::Reporter {
        device: config.device_id.clone(),
        tx: event_tx,
    };
    let (ota, ota_tx) = spawn_ota(config, t, report, &phases.head);
    let (ingest_live, ingest_settings) = watch::channel(Arc::new(ingest_settings(config)));
    let ingest = {
        let (buffer, metrics, probes) = (buffer.clone(), t.ingest.clone(), t.probes.clone());
        phases.head.spawn(|stop| {
            crate::ingest::run(
                ingest_settings,
                buffer,
                metrics,
                probes,
                stop,
                inference,
                Some(alerts),
            )
        })
    };
    spawn_notify(t, &buffer, &phases.head);
    let (command_tx, command_rx) = mpsc::unbounded_channel();
    // Ends when the uplink, the only sender, has ended.
    phases
        .tail
        .spawn(|_| route_commands(command_rx, model_commands, ota_tx, configurer));
    let (uplink_live, uplink_settings) = watch::channel(Arc::new(uplink_settings(config)));
    let uplink = spawn_uplink(
        t,
        &buffer,
        tls,
        (identity, config_state, uplink_settings),
        active_models,
        &phases.tail,
        event_rx,
        command_tx,
    );
    let live = Live {
        ingest: ingest_live,
        uplink: uplink_live,
        buffer: buffer.clone(),
    };
    Ok(Running {
        phases,
        live,
        buffer,
        buffer_thread,
        ingest,
        uplink,
        ota,
    })
}

/// Opens the buffer and logs what it holds; returns this run's identity.
async fn open(
    config: &Config,
    t: &Telemetry,
    boot_id: u64,
) -> anyhow::Result<(Buffer, std::thread::JoinHandle<()>, Identity)> {
    let path = config.buffer_path();
    let (buffer, buffer_thread) = Buffer::open(
        &path,
        crate::buffer::Settings::from_config(&config.buffer, &config.preprocess),
        t.buffer.clone(),
    )
    .with_context(|| format!("cannot open buffer {}", path.display()))?;
    let snapshot = buffer.snapshot().await?;
    let identity = Identity {
        boot_id,
        agent_version: ota::running_version(),
    };
    info!(
        device = %config.device_id,
        boot_id = identity.boot_id,
        buffer = %path.display(),
        held = snapshot.depth.readings,
        acked_held = snapshot.depth.acked_held,
        next_seq = snapshot.next_seq,
        budget_bytes = config.buffer.max_bytes,
        "agent starting"
    );
    Ok((buffer, buffer_thread, identity))
}

/// `/healthz`, `/readyz` and `/metrics`. An agent without them cannot be
/// watched: a port that cannot be bound (another agent still on it) ends
/// the start with an error, and systemd starts it again.
async fn serve_health(config: &Config, t: &Telemetry, phase: &Phase) -> anyhow::Result<()> {
    if config.health_listen.is_empty() {
        return Ok(());
    }
    let listener = crate::health::http::bind(&config.health_listen)
        .await
        .with_context(|| {
            format!(
                "cannot serve /healthz and /metrics on health_listen {}",
                config.health_listen
            )
        })?;
    let (probes, registry) = (t.probes.clone(), Arc::new(t.registry()));
    phase.spawn(|stop| crate::health::http::serve(listener, probes, registry, stop));
    Ok(())
}

/// The update installer, and on trial the check that confirms this
/// version once it did real work (else a trial left by the last run is
/// reported).
fn spawn_ota(
    config: &Config,
    t: &Telemetry,
    report: ota::Reporter,
    phase: &Phase,
) -> (JoinHandle<Option<Trial>>, mpsc::Sender<ota::OtaCommand>) {
    let slots = Slots::new(&config.ota.root);
    if ota::trial::in_trial() {
        let needs_model = config.infer.enabled && !config.infer.models.is_empty();
        let t2 = t.clone();
        let work = move || ota::trial::Work {
            subscribed: t2.probes.ready(),
            acked: t2.uplink.readings_acked.get() > 0,
            model_ran: t2.infer.runs.get() > 0,
        };
        let report = report.clone();
        phase
            .spawn(|stop| ota::trial::confirm_when_working(slots, work, needs_model, report, stop));
    } else {
        ota::report_leftover(&slots, &report, &t.ota);
    }
    let (ota_tx, ota_rx) = mpsc::channel(1);
    let (ota_config, metrics) = (Arc::new(config.ota.clone()), t.ota.clone());
    let task = phase.spawn(|stop| ota::serve(ota_config, metrics, report, ota_rx, stop));
    (task, ota_tx)
}

/// systemd notify and watchdog, with the status line's totals.
fn spawn_notify(t: &Telemetry, buffer: &Buffer, phase: &Phase) {
    let probe = buffer.clone();
    let held = move || {
        let buffer = probe.clone();
        async move { buffer.snapshot().await.ok().map(|s| s.depth.readings) }
    };
    let t2 = t.clone();
    let counts = move || crate::health::systemd::Counts {
        accepted: t2.ingest.accepted.get(),
        acked: t2.uplink.readings_acked.get(),
        rejected: t2.ingest.rejected(),
    };
    let probes = t.probes.clone();
    phase.spawn(|stop| crate::health::systemd::run(probes, held, counts, stop));
}

/// Ingest's settings within `config`.
pub(super) fn ingest_settings(config: &Config) -> crate::ingest::Settings {
    crate::ingest::Settings {
        device_id: config.device_id.clone(),
        local: config.local.clone(),
        ingest: config.ingest.clone(),
        sensors: config.sensors.clone(),
        preprocess: config.preprocess.clone(),
        cadence_ms: config.infer.cadence_ms(),
    }
}

/// The uplink's settings within `config`.
pub(super) fn uplink_settings(config: &Config) -> uplink::Settings {
    uplink::Settings {
        device_id: config.device_id.clone(),
        groups: config.groups.clone(),
        cloud: config.cloud.clone(),
        uplink: config.uplink.clone(),
        shutdown_grace: config.shutdown_grace,
    }
}

/// The uplink, reporting the active models in its status and the
/// configuration state on `up/config`.
#[allow(clippy::too_many_arguments)]
fn spawn_uplink(
    t: &Telemetry,
    buffer: &Buffer,
    tls: Option<Arc<rustls::ClientConfig>>,
    (identity, config_state, mut live): (
        Identity,
        watch::Receiver<uplink::ConfigState>,
        watch::Receiver<Arc<uplink::Settings>>,
    ),
    active_models: Arc<Mutex<Vec<ModelVersion>>>,
    phase: &Phase,
    event_rx: mpsc::UnboundedReceiver<aeris_wire::Event>,
    command_tx: mpsc::UnboundedSender<aeris_wire::Command>,
) -> JoinHandle<anyhow::Result<()>> {
    let settings = live.borrow_and_update().clone();
    let cx = uplink::Context {
        metrics: t.uplink.clone(),
        probes: t.probes.clone(),
        models: Arc::new(move || active_models.lock().map(|m| m.clone()).unwrap_or_default()),
        config_state,
        settings: live,
    };
    let buffer = buffer.clone();
    phase.spawn(|stop| {
        uplink::run(
            settings, tls, buffer, cx, identity, stop, event_rx, command_tx,
        )
    })
}
