//! Reading and validating the configuration file (TOML): every error with its line and what
//! to do. See [`super`] for what a valid file gives.
