//! The one integration-test binary: the daemon driven through its real edges.

mod corpus;
mod crash;
mod edge;
mod flow;
mod harness;
mod mailstack;
mod slowclient;
mod smtp;
mod tokens;
