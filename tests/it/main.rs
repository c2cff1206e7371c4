//! The one integration-test binary: the daemon driven through its real edges.

mod corpus;
mod crash;
mod flow;
mod hardening;
mod harness;
mod mailstack;
mod smtp;
mod tokens;
