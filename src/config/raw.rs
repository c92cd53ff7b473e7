//! Serde mirror of the TOML (owned by the config helper).
