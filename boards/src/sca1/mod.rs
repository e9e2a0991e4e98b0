//! The SCA-1 reference accelerator (docs/accelerator.md): register map and wire formats.

pub mod desc;
pub mod regs;
