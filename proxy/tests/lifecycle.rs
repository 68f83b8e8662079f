//! Lifecycle through real sockets: draining on shutdown and reloading under load.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use rafael_proxy::server::DrainOutcome;
use support::*;
use tokio::{net::TcpStream, sync::Notify};

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_refuses_new_connections() {
    let release = Arc::new(Notify::new());
    let upstream = {
        let release = release.clone();
        upstream(Proto::Http1, None, move |_| {
            let release = release.clone();
            async move {
                release.notified().await;
                text(200, "finished")
            }
        })
        .await
    };
    let mut proxy = proxy(&simple_config(upstream.addr, "")).await;
    let client = h1_client();
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { get(&client, &url).await });
    assert!(eventually(Duration::from_secs(5), || upstream.requests() == 1).await);

    let server = proxy.server.take().unwrap();
    let drain = tokio::spawn(server.drain(Duration::from_secs(30)));
    // Once draining, the listener is closed: new connections are refused.
    let addr = proxy.addr;
    let mut refused = false;
    for _ in 0..500 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the listener still accepts while draining");
    assert!(
        !drain.is_finished(),
        "drain waits for the in-flight request"
    );

    release.notify_one();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status.as_u16(), &body[..]), (200, &b"finished"[..]));
    assert_eq!(drain.await.unwrap(), DrainOutcome::Complete);
}

#[tokio::test]
async fn drain_gives_up_at_its_deadline() {
    let upstream = upstream(Proto::Http1, None, |_| async {
        std::future::pending::<()>().await;
        text(200, "never")
    })
    .await;
    let mut proxy = proxy(&simple_config(upstream.addr, "")).await;
    let client = h1_client();
    let url = proxy.url("/");
    let _stuck = tokio::spawn(async move { get(&client, &url).await });
    assert!(eventually(Duration::from_secs(5), || upstream.requests() == 1).await);
    let started = Instant::now();
    let outcome = proxy
        .server
        .take()
        .unwrap()
        .drain(Duration::from_millis(300))
        .await;
    assert_eq!(outcome, DrainOutcome::DeadlineReached);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_no_request() {
    let blue = upstream(Proto::Http1, None, |_| async { text(200, "blue") }).await;
    let green = upstream(Proto::Http1, None, |_| async { text(200, "green") }).await;
    let proxy = proxy(&simple_config(blue.addr, "")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, failures, completed) = (stop.clone(), failures.clone(), completed.clone());
        let client = h1_client();
        let url = proxy.url("/");
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let request = http::Request::get(&url)
                    .body(full(bytes::Bytes::new()))
                    .unwrap();
                match client.request(request).await {
                    Ok(response) if response.status() == 200 => {
                        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let mut last_version = proxy.handle.load().version();
    for i in 0..100 {
        let target = if i % 2 == 0 { green.addr } else { blue.addr };
        // Change the route policy too, so every reload builds new routes.
        let extra = format!("[routes.policy]\ntimeout = \"{}s\"", 5 + i % 3);
        let config = rafael_config::parse(&simple_config(target, &extra)).unwrap();
        let version = proxy.handle.reload(config).unwrap();
        assert!(version > last_version);
        last_version = version;
        let seen = completed.load(Ordering::Relaxed);
        assert!(
            eventually(Duration::from_secs(5), || completed.load(Ordering::Relaxed)
                >= seen + 5)
            .await,
            "traffic keeps flowing"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(completed.load(Ordering::Relaxed) >= 500);
    assert!(
        blue.requests() > 0 && green.requests() > 0,
        "both configs served traffic"
    );
}

#[tokio::test]
async fn a_reload_cannot_rebind_listeners_and_keeps_the_running_config() {
    let upstream = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&simple_config(upstream.addr, "")).await;
    let before = proxy.handle.load().version();
    let moved = simple_config(upstream.addr, "").replace("127.0.0.1:0", "127.0.0.1:1");
    let errors = proxy
        .handle
        .reload(rafael_config::parse(&moved).unwrap())
        .unwrap_err();
    assert!(
        errors
            .to_string()
            .starts_with("listeners[0]: a reload cannot rename or rebind"),
        "{errors}"
    );
    assert_eq!(proxy.handle.load().version(), before);
    assert_eq!(get(&h1_client(), &proxy.url("/")).await.0, 200);
}

#[tokio::test]
async fn reloading_keeps_an_unchanged_upstreams_pool() {
    let upstream = upstream(Proto::Http1, None, |_| async { text(200, "ok") }).await;
    let proxy = proxy(&simple_config(upstream.addr, "")).await;
    let client = h1_client();
    assert_eq!(get(&client, &proxy.url("/")).await.0, 200);
    for _ in 0..10 {
        let config = rafael_config::parse(&simple_config(
            upstream.addr,
            "[routes.policy]\ntimeout = \"9s\"",
        ))
        .unwrap();
        proxy.handle.reload(config).unwrap();
        assert_eq!(get(&client, &proxy.url("/")).await.0, 200);
    }
    assert_eq!(
        upstream.connections(),
        1,
        "the pooled upstream connection survived 10 reloads"
    );
}

/// A burst of new connections waits in the listener's `backlog`, not in SYN retransmits. With
/// nothing accepting, the kernel queues up to `backlog` handshaken connections and drops the
/// SYNs past it, so 300 connects all complete only if the backlog is above 300: at the 128 that
/// `TcpListener::bind` sets, the 130th and later would wait out their timeout.
#[tokio::test]
async fn a_burst_of_new_connections_fits_in_the_listeners_backlog() {
    // The kernel caps every backlog at somaxconn (4096 by default since Linux 5.4).
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .map_or(4096, |text| text.trim().parse().unwrap());
    if somaxconn < 400 {
        eprintln!("skipped: net.core.somaxconn is {somaxconn}, below the backlog this test sets");
        return;
    }
    let unused: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = rafael_config::parse(&config_with(unused, "backlog = 400", "", "")).unwrap();
    let listeners = rafael_proxy::bind_listeners(&config).await.unwrap();
    let addr = listeners[0].socket.local_addr().unwrap();
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..300 {
        connects.spawn(tokio::time::timeout(
            Duration::from_secs(20),
            TcpStream::connect(addr),
        ));
    }
    let mut open = Vec::new();
    while let Some(result) = connects.join_next().await {
        let stream = result
            .unwrap()
            .expect("a connect waited out its timeout: the backlog overflowed");
        open.push(stream.unwrap());
    }
    assert_eq!(open.len(), 300);
}
