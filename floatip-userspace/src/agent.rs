//! `floatip agent`: the long-running service of a gateway. It serves the HTTP API (`api`) on
//! the same state database and pinned maps as the CLI, so both can be used at once; the
//! programs stay attached through their pins whatever happens to the agent.

mod config;
mod group;
mod worker;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context, Result};
use axum_server::{Handle, tls_rustls::RustlsConfig};

pub use self::{
    config::{AgentArgs, Config, DEFAULT_CONFIG, DEFAULT_LISTEN},
    worker::Worker,
};
use crate::{
    api,
    control::{Gateway, follow_in_background},
    dataplane::AttachOptions,
    garp::Announcer,
    store::StoreSpec,
};

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(config: Config) -> Result<()> {
    if config.group.is_some() {
        // A gateway of a group answers for nothing until it is elected to (attach below
        // would otherwise have it answer for every pool).
        crate::control::set_owned(Default::default());
    }
    let mut synced_at = None;
    if !config.external.is_empty() {
        // The boot case: the interfaces in the configuration get the programs, and fresh maps
        // get every pool and association back from the database.
        let opts = AttachOptions {
            external: config.external.clone(),
            internal: config.internal.clone(),
            mode: config.mode,
            max_associations: config.max_associations,
            counters: None,
        };
        // As `floatip attach`: maps pinned from another database are refused, not reloaded.
        let report = Gateway::new(&config.bpffs).attach(&config.store, &opts, false)?;
        for w in &report.warnings {
            eprintln!("floatip agent: warning: {w}");
        }
        let restored = report.restored;
        synced_at = report.store_revision.map(|r| (r, report.pools.clone()));
        eprintln!(
            "floatip agent: attached in {} mode: external {}, internal {}; {restored} associations repaired",
            opts.mode.as_str(),
            opts.external.join(","),
            opts.internal.join(",")
        );
    }
    let announcer =
        Arc::new(Announcer::start().context("cannot open a socket for gratuitous ARP")?);
    let worker = Worker::start(
        config.store.clone(),
        config.bpffs.clone(),
        announcer.clone(),
    )?;
    let group = match (&config.group, &config.store) {
        (Some(g), StoreSpec::Etcd(endpoints)) => Some(group::GroupTask::start(
            g.clone(),
            endpoints.clone(),
            config.bpffs.clone(),
            worker.clone(),
            synced_at,
        )?),
        _ => None,
    };
    let served = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(serve(config, worker));
    if let Some(g) = group {
        g.stop();
    }
    // Associations answered just before the stop are still announced.
    announcer.flush();
    served
}

async fn serve(config: Config, worker: Worker) -> Result<()> {
    let tls = match &config.tls {
        Some((cert, key)) => {
            // One process-wide provider; `Err` means one is installed already.
            let _ = rustls::crypto::ring::default_provider().install_default();
            Some(
                RustlsConfig::from_pem_file(cert, key)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot load TLS certificate {} and key {}",
                            cert.display(),
                            key.display()
                        )
                    })?,
            )
        }
        None => None,
    };
    let state = Arc::new(api::Api::new(worker, &config));
    let handle = Handle::new();
    let mut servers = tokio::task::JoinSet::new();
    let separate_metrics = config.metrics_listen.is_some();
    servers.spawn(listen(
        config.listen,
        api::router(state.clone(), !separate_metrics),
        tls.clone(),
        handle.clone(),
        "API",
    )?);
    if let Some(addr) = config.metrics_listen {
        servers.spawn(listen(
            addr,
            api::metrics_router(state.clone()),
            tls,
            handle.clone(),
            "metrics",
        )?);
    }
    // Only once the configuration and the listeners are good, so a bad
    // start fails in one line and changes nothing.
    let follower = config
        .follow
        .then(|| follow_in_background(config.bpffs.clone(), "floatip agent"));
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!("floatip agent: stopping");
        handle.graceful_shutdown(Some(Duration::from_secs(5)));
    });
    let mut served = Ok(());
    while let Some(done) = servers.join_next().await {
        if let Err(e) = done.context("a listener task failed").and_then(|r| r) {
            served = Err(e);
            break;
        }
    }
    if let Some((stop, thread)) = follower {
        stop.store(true, Ordering::SeqCst);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    served
}

/// Binds `addr` now (so a busy port fails the start, and port 0 reports the port it got) and
/// returns the server future.
fn listen(
    addr: SocketAddr,
    app: axum::Router,
    tls: Option<RustlsConfig>,
    handle: Handle,
    what: &'static str,
) -> Result<impl Future<Output = Result<()>> + Send + 'static> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("floatip agent: serving the {what} on {scheme}://{local}");
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    Ok(async move {
        match tls {
            Some(tls) => {
                axum_server::from_tcp_rustls(listener, tls)
                    .handle(handle)
                    .serve(service)
                    .await
            }
            None => {
                axum_server::from_tcp(listener)
                    .handle(handle)
                    .serve(service)
                    .await
            }
        }
        .with_context(|| format!("the {what} server on {local} failed"))
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
