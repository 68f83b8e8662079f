//! A real gRPC call end to end through the `rafael` binary over h2c: grpcio client, rafael,
//! grpcio server. Unary, server streaming, and an error status carried in trailers. The
//! example of `examples/grpc/`: its server and client, and its config with free ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

const RAFAEL: &str = env!("CARGO_BIN_EXE_rafael");
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/grpc/echo.py");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/grpc/rafael.toml");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first line `child` prints on stdout.
fn first_line(child: &mut Child) -> String {
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the process printed its first line")
}

#[test]
fn grpc_unary_streaming_and_error_status_pass_through_over_h2c() {
    let mut server = Command::new("python3")
        .args([PEER, "server"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let port = first_line(&mut server);
    let _server = Killed(server);
    let port: u16 = port.trim().parse().unwrap_or_else(|_| {
        panic!("echo.py server printed {port:?}; is grpcio installed? `.ci/setup` installs it (PyPI grpcio)")
    });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rafael.toml");
    // The example's config, on free ports.
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    assert!(example.contains("127.0.0.1:50051") && example.contains("127.0.0.1:15001"));
    std::fs::write(
        &config,
        example
            .replace("127.0.0.1:50051", &format!("127.0.0.1:{port}"))
            .replace("127.0.0.1:15001", "127.0.0.1:0")
            .replace("127.0.0.1:9901", "127.0.0.1:0"),
    )
    .unwrap();
    let mut rafael = Command::new(RAFAEL)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(rafael.stderr.take().unwrap());
    let _rafael = Killed(rafael);
    let mut proxy: Option<SocketAddr> = None;
    for line in stderr.lines().map_while(Result::ok) {
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        if json["fields"]["message"] == "listening" {
            proxy = json["fields"]["address"]
                .as_str()
                .map(|a| a.parse().unwrap());
            break;
        }
    }
    let proxy = proxy.expect("rafael logs its listener address");

    let output = Command::new("python3")
        .args([PEER, "client", &proxy.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "say echo:hello",
            "count 0,1,2,3,4",
            "fail NOT_FOUND no such order: 42",
        ]
    );
}
