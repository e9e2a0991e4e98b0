//! The frontend: worker threads serving an scst_user fd.
