//! Integration tests: the real ccedge binary against real upstreams on 127.0.0.1, driven by real
//! clients. One test binary (build time); each test has its own ports and folder.

mod harness;

mod auth;
mod browser;
mod cache;
mod cli;
mod demo;
mod digital_channels;
mod doctor;
mod external_auth;
mod finesse_routing;
mod finesse_site;
mod hardening;
mod header_policy;
mod observability;
mod operations;
mod process;
mod proxy_protocol;
mod reference;
mod shared_state;
mod tls;
mod websockets;
