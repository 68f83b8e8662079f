//! The smallest pingora proxy that forwards every request to one upstream with keep-alive:
//! `pingora-bench-proxy LISTEN UPSTREAM`.

use async_trait::async_trait;
use pingora::prelude::*;

struct Forward {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().expect("usage: pingora-bench-proxy LISTEN UPSTREAM");
    let upstream = args.next().expect("usage: pingora-bench-proxy LISTEN UPSTREAM");
    let mut server = Server::new(None).expect("pingora server");
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Forward { upstream });
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
