//! The demo `make run` starts: internal servers on loopback for conf/demo.yaml (a Cloud Connect
//! publisher/subscriber pair and Finesse, IdS and CUIC look-alikes), its certificates, and the
//! tour of what to try.
//!
//! Usage: demo serve DIR   (writes DIR/ca.crt and DIR/proxy.{crt,key}, then serves)
//!        demo tour        (prints the tour)

mod tour;
mod upstreams;

use std::path::Path;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["tour"] => print!("{}", tour::text()),
        ["serve", dir] => {
            upstreams::write_certificates(Path::new(dir));
            if let Err(e) = upstreams::serve(&upstreams::NODES).await {
                eprintln!("demo: {e}");
                std::process::exit(1);
            }
            let ports: Vec<String> = upstreams::NODES
                .iter()
                .map(|(node, port)| format!("{node} {port}"))
                .collect();
            eprintln!("demo upstreams on 127.0.0.1: {}", ports.join(", "));
            std::future::pending::<()>().await;
        }
        _ => {
            eprintln!("usage: demo serve DIR | demo tour");
            std::process::exit(2);
        }
    }
}
