//! custody's application layer: the use cases that the entry points (the
//! HTTP server, the job runner, the command line) share, written once over
//! `store` and `git`. An entry point authenticates, parses, calls one of
//! these and renders; it decides nothing itself.
//!
//! So far it holds what governs a release (`releases`); merging and deciding
//! a push still live in the server (ARCHITECTURE.md).

#![forbid(unsafe_code)]

pub mod releases;
