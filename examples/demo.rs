//! Demo upstreams for `make run`: a Cloud Connect publisher/subscriber pair and Finesse, IdS and
//! CUIC look-alikes on loopback, plus the demo's certificates. Each answers with JSON naming
//! itself and listing the headers it received, so the header policy and routing can be seen.
//!
//! Usage: cargo run --example demo -- DIR   (writes DIR/ca.crt, DIR/proxy.{crt,key}, then serves)

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use serde_json::json;
use std::path::Path;

const NODES: [(&str, u16); 5] = [
    ("cloud-connect-publisher", 18445),
    ("cloud-connect-subscriber", 18446),
    ("finesse", 18501),
    ("ids", 18502),
    ("cuic", 18503),
];

fn write_certificates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ccedge demo CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let names = [
        "dc.example.com",
        "finesse1.example.com",
        "cuic1.example.com",
        "localhost",
    ];
    let mut leaf = CertificateParams::new(names.map(String::from).to_vec()).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    leaf.distinguished_name
        .push(DnType::CommonName, "ccedge demo");
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("proxy.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("proxy.key"), key.serialize_pem()).unwrap();
}

async fn answer(
    node: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("<binary>"))))
        .collect();
    let body = json!({
        "answered_by": node,
        "method": req.method().as_str(),
        "target": req.uri().to_string(),
        "headers_received": headers,
    });
    Ok(Response::builder()
        .header("Content-Type", "application/json")
        .header("Server", "demo-upstream")
        .body(Full::new(Bytes::from(format!("{body:#}\n"))))
        .unwrap())
}

#[tokio::main]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/demo".into());
    write_certificates(Path::new(&dir));
    let mut tasks = Vec::new();
    for (node, port) in NODES {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| {
                panic!("demo upstream {node} cannot listen on 127.0.0.1:{port}: {e}")
            });
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(node, req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        }));
        eprintln!("demo upstream {node} on 127.0.0.1:{port}");
    }
    for task in tasks {
        let _ = task.await;
    }
}
