//! The one integration-test binary: the daemon driven through its real edges.

mod cli;
mod corpus;
mod crash;
mod domain;
mod flow;
mod hardening;
mod harness;
mod mailstack;
mod smtp;
mod tokens;
mod upgrade;
