mod cidr;
mod config;
mod tls;

fn main() {}
