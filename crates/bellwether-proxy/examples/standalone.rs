//! A proxy from the library alone, for profiling the data plane without the CLI:
//! `standalone LISTEN tcp|postgres|redis BACKEND_HOST:PORT WORKERS`.

use bellwether_proxy::config::{
    AdminState, CheckKind, HostPort, Protocol, RawBackend, RawConfig, RawListener,
};
use bellwether_proxy::ProxyHandle;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        eprintln!("usage: standalone LISTEN tcp|postgres|redis BACKEND_HOST:PORT WORKERS");
        std::process::exit(2);
    }
    let protocol = match a[2].as_str() {
        "postgres" => Protocol::Postgres,
        "redis" => Protocol::Redis,
        _ => Protocol::Tcp,
    };
    let mut cfg = RawConfig::new(
        vec![RawListener {
            address: a[1].clone(),
            protocol,
            mode: Default::default(),
        }],
        vec![RawBackend {
            name: "b".into(),
            address: HostPort(a[3].clone()),
            weight: 100,
            admin: AdminState::Ready,
            password: None,
            role: None,
        }],
    );
    cfg.health.check = CheckKind::Tcp;
    cfg.workers = Some(a[4].parse().expect("WORKERS is a number"));
    let cfg = cfg.validate("args").expect("valid configuration");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let h = ProxyHandle::start(cfg).await.expect("proxy starts");
        println!("listening on {}", h.listen_addrs()[0]);
        let _ = tokio::signal::ctrl_c().await;
        h.shutdown().await;
    });
}
