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
mod smtp;
mod smtp_script;
mod tokens;
mod upgrade;
