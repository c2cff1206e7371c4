//! invited: an email-driven invitation daemon. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod app;
pub mod backup;
pub mod classify;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod http;
pub mod imap;
pub mod maildir;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod outbox;
pub mod pages;
pub mod private;
pub mod rules;
pub mod sender;
pub mod smtp;
pub mod store;
pub mod templates;
pub mod text;
pub mod token;
