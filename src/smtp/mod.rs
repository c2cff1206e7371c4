//! Our own SMTP client: one connection (TCP_NODELAY, implicit TLS or STARTTLS through rustls with
//! ring, EHLO capabilities, AUTH PLAIN/LOGIN) and mail transactions over it, pipelined (RFC 2920)
//! when the server offers PIPELINING and in the plain dialogue when it does not. `proto` is the
//! protocol as data; `client` is the I/O. Messages are still built by lettre (`outbox`); the pool
//! of connections and what a failure means for a message live in `sender`.

pub mod client;
pub mod proto;

pub use client::{
    Connection, Error, Failure, Feed, Marks, Running, Security, Server, Stage, Transaction,
};
pub use proto::{Capabilities, Credentials, Mechanism, Reply};
