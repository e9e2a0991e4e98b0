//! The interface version string the kernel checks at registration (spec §1.4):
//! `SCST_VERSION_NAME ++ DEV_USER_INTF_VER ++ SCST_CONST_INTF_VER`, the last two being SHA-1s of
//! `scst_user.h` and `scst_const.h` generated at module build time. It changes with every SCST
//! release even though the ABI layout has not changed since 2015, so it is configurable.
//!
//! To find the string a running kernel expects: register with any string and read dmesg
//! ("Incorrect version of user device NAME (GOT). Expected: WANT"), or concatenate the three
//! macros from the installed `include/scst/scst_itf_ver.h` and `scst_const.h`.

/// `DEV_USER_INTF_VER`: SHA-1 of `scst_user.h`, identical for 3.8 through 3.11.
pub const DEV_USER_INTF_VER: &str = "230a30730ec749a9738ef33d6d17b1e6739bd195";

/// A known SCST release and its version string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownVersion {
    /// Short name accepted on the command line (`--scst-version 3.11`).
    pub name: &'static str,
    /// `SCST_VERSION_NAME`.
    pub scst_version: &'static str,
    /// `SCST_CONST_INTF_VER`.
    pub const_intf_ver: &'static str,
}

impl KnownVersion {
    /// The full string passed in `version_str`.
    pub fn version_string(&self) -> String {
        format!(
            "{}{}{}",
            self.scst_version, DEV_USER_INTF_VER, self.const_intf_ver
        )
    }
}

/// SCST master, 3.11.0-pre (the default).
pub const SCST_3_11: KnownVersion = KnownVersion {
    name: "3.11",
    scst_version: "3.11.0-pre",
    const_intf_ver: "f03678ef2265294f64bc9fca39567ca80671f7d8",
};
/// SCST 3.10.x.
pub const SCST_3_10: KnownVersion = KnownVersion {
    name: "3.10",
    scst_version: "3.10.0",
    const_intf_ver: "85aa8654196eb07e34d2b0762f5607fb4b70af8b",
};
/// SCST 3.9.
pub const SCST_3_9: KnownVersion = KnownVersion {
    name: "3.9",
    scst_version: "3.9.0",
    const_intf_ver: "58760c5ceec7d20ce59c725a4a7a1f005466a6d0",
};
/// SCST 3.8.
pub const SCST_3_8: KnownVersion = KnownVersion {
    name: "3.8",
    scst_version: "3.8.0",
    const_intf_ver: "7a108855086ad9ef49bdefa1a5819df2db0aba62",
};
/// Kernels built from the upstream-style kernel patch use literal placeholders (spec §1.4).
pub const SCST_KERNEL_PATCH: KnownVersion = KnownVersion {
    name: "kernel-patch",
    scst_version: "3.11.0-pre",
    const_intf_ver: "SCST_CONST_INTF_VER",
};

/// Every known version, default first.
pub const KNOWN_VERSIONS: [KnownVersion; 4] = [SCST_3_11, SCST_3_10, SCST_3_9, SCST_3_8];

/// The default version string (SCST 3.11).
pub fn default_version_string() -> String {
    SCST_3_11.version_string()
}

/// Resolve a `--scst-version` value: a known short name (`3.11`, `3.10`, `3.9`, `3.8`) or a
/// full version string given literally.
pub fn resolve(value: &str) -> String {
    match KNOWN_VERSIONS.iter().find(|v| v.name == value) {
        Some(v) => v.version_string(),
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_3_11_string_is_90_characters() {
        // spec §1.4: 90 chars + NUL = 91 bytes.
        assert_eq!(SCST_3_11.version_string().len(), 90);
        assert!(SCST_3_11.version_string().starts_with("3.11.0-pre230a3073"));
    }

    #[test]
    fn short_names_resolve_and_literals_pass_through() {
        assert_eq!(resolve("3.10"), SCST_3_10.version_string());
        assert_eq!(resolve("custom-string"), "custom-string");
    }
}
