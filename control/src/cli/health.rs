//! `rafael health [--admin URL] [--timeout D]`: asks a running rafael's `/readyz`, for container
//! health checks in images that carry no curl (the Dockerfile's runtime image has no shell).

use std::{process::ExitCode, time::Duration};

/// Exit 0 when `/readyz` answers 200 within `timeout`; otherwise 1, with why on stderr.
pub fn health(admin: &str, timeout: Duration) -> ExitCode {
    let url = format!("{}/readyz", admin.trim_end_matches('/'));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let answer = runtime.block_on(async {
        tokio::time::timeout(timeout, crate::client::call("GET", &url, None, None)).await
    });
    match answer {
        Ok(Ok((200, _))) => ExitCode::SUCCESS,
        Ok(Ok((status, body))) => {
            eprintln!("not ready: {url} answered {status}: {}", body.trim());
            ExitCode::from(1)
        }
        Ok(Err(error)) => {
            eprintln!("not ready: {url}: {error}");
            ExitCode::from(1)
        }
        Err(_) => {
            eprintln!("not ready: {url} did not answer within {timeout:?}");
            ExitCode::from(1)
        }
    }
}
