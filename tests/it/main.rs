//! The one integration-test binary: the daemon driven through its real edges.

mod backup;
mod bounded;
mod bulk;
mod cli;
mod console;
mod corpus;
mod crash;
mod dkim;
mod domain;
mod edge;
mod flow;
mod hardening;
mod harness;
mod mailstack;
mod multi;
mod oauth;
mod pacing;
mod service;
mod slowclient;
mod smtp;
mod smtp_script;
mod staff;
mod tokens;
mod unsubscribe;
mod upgrade;
