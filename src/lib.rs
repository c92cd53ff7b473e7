//! zkrender: keep local files equal to what ZooKeeper holds, and tell the application.
//!
//! ```text
//! zkrender.toml -> config -> runtime --spawns--+-> source (ZooKeeper session + watches)
//!                                              |     | SourceEvent::Update { dep, value }
//!                                              |     v (mpsc)        ^ Command::Watch(deps)
//!                                              +-> pipeline: store -> render -> sink -> notify
//!                                              |     (one task; owns all state; no shared locks)
//!                                              |     | StatusReport (watch channel)
//!                                              +-> ops: /healthz /readyz /metrics /status
//! ```
//!
//! Modules are listed in pipeline order.

pub mod cli;
pub mod config;
pub mod diff;
pub mod error;
pub mod exec;
pub mod formats;
pub mod hotreload;
pub mod init;
pub mod model;
pub mod notify;
pub mod ops;
pub mod pipeline;
pub mod process;
pub mod render;
pub mod runtime;
pub mod sink;
pub mod source;
pub mod status;
pub mod store;
