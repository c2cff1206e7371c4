//! The one integration-test binary: the daemon driven through its real edges.

mod backup;
mod cli;
mod corpus;
mod crash;
mod domain;
mod flow;
mod hardening;
mod harness;
mod mailstack;
mod service;
mod smtp;
mod tokens;
mod upgrade;
