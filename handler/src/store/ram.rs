//! RAM store.
