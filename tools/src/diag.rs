//! `scst-accel diag`: open a board the way `serve` would, print what the driver learned
//! (geometry, registers, queue rings) and release it in the teardown order. The on-demand
//! register/ring dump for a device that is not serving; a serving process dumps its command
//! states, registers and rings on SIGUSR1 instead (see `serve`).

use crate::backend::BoardArg;
use crate::disk::DiskArgs;
use crate::exit;
use clap::Args;
use serde_json::json;

/// `diag` arguments.
#[derive(Args, Debug)]
pub struct DiagArgs {
    #[command(flatten)]
    disk: DiskArgs,
    /// The board to open.
    #[arg(long, value_enum, default_value_t = BoardArg::Sim)]
    board: BoardArg,
    /// PCI address of the function (hardware boards).
    #[arg(long)]
    pci: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl DiagArgs {
    /// The disk's settings, for `main` to note which were given ([`DiskArgs::note_given`]).
    pub fn disk_mut(&mut self) -> &mut DiskArgs {
        &mut self.disk
    }
}

/// Run; returns the process exit code.
pub fn run(args: DiagArgs) -> u8 {
    let blocks = match args.disk.validate() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("scst-accel diag: {e}");
            return exit::USAGE;
        }
    };
    let backend = match crate::backend::build(args.board, &args.disk, blocks, args.pci.as_deref(), &[]) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("scst-accel diag: {e}");
            return e.exit_code;
        }
    };
    let info = backend.store.info();
    let registers = backend
        .store
        .dump()
        .unwrap_or_else(|| "no device (RAM store)".to_owned());
    let queues = backend.queue_dumps();
    let released = backend.shutdown_unserved();
    let clean = released.mapped_after == 0 && released.leaked_buffers == 0;
    if args.json {
        let out = json!({
            "board": format!("{:?}", args.board).to_lowercase(),
            "block_size": info.block_size,
            "num_blocks": info.num_blocks,
            "max_transfer_blocks": info.max_transfer_blocks,
            "supports_unmap": info.supports_unmap,
            "volatile_cache": info.volatile_cache,
            "registers": registers,
            "queues": queues,
            "release_ms": released.release_ms,
            "released_cleanly": clean,
        });
        println!("{out:#}");
    } else {
        println!(
            "geometry: {} blocks of {} bytes, max transfer {} blocks, unmap {}, volatile cache {}",
            info.num_blocks,
            info.block_size,
            info.max_transfer_blocks,
            info.supports_unmap,
            info.volatile_cache
        );
        println!("{registers}");
        for q in &queues {
            println!("{q}");
        }
        println!(
            "released in {:.1} ms{}",
            released.release_ms,
            if clean { "" } else { " (NOT clean: see the log)" }
        );
    }
    if clean {
        0
    } else {
        exit::SOFTWARE
    }
}
