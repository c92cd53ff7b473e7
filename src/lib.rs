//! zkrender: keep local files equal to what ZooKeeper holds, and tell the application.
//!
//! ```text
//! zkrender.toml -> config -> runtime --spawns--+-> source (ZooKeeper session + watches)
//!                                              |     | SourceEvent (mpsc)   ^ Command::Watch/Unwatch/Resync
//!                                              |     v                      |
//!                                              +-> pipeline::run (one task; owns the core, no locks)
//!                                              |     store -> render -> sink (pipeline::core, ::install)
//!                                              |     | ReloadBatch (mpsc)   ^ ReloadOutcome (mpsc, the one outcome channel)
//!                                              |     v                      |
//!                                              +-> notify::queue (reloads: signal, http, command, exec child)
//!                                              +-> hotreload (SIGHUP, file changes) --Reconfigure--> pipeline
//!                                              +-> ops: /healthz /readyz /metrics /status
//!                                                    ^ StatusReport (watch) from pipeline via status::telemetry
//! ```
//!
//! Modules are listed in pipeline order: the vocabulary, the front end, the stages a change
//! goes through, then what runs beside them. See ARCHITECTURE.md.

pub mod model;

pub mod cli;
pub mod config;
pub mod runtime;

pub mod source;
pub mod store;
pub mod pipeline;
pub mod render;
pub mod formats;
pub mod sink;
pub mod notify;
pub mod process;
pub mod exec;

pub mod diff;
pub mod error;
pub mod hotreload;
pub mod init;
pub mod ops;
pub mod reference;
pub mod status;
pub mod fleet;
