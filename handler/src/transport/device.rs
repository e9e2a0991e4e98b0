//! The real `/dev/scst_user` transport.
