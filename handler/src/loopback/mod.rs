//! The loopback kernel: an in-process model of the scst_user kernel side.
