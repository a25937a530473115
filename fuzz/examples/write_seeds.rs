//! Writes the seed frames (one valid frame of every message kind) into `corpus/<target>/`, the
//! directory `cargo fuzz run <target>` starts from: `cargo run --example write_seeds`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in [
        ("wire_host_msg", plughost_fuzz::host_seeds()),
        ("wire_service_msg", plughost_fuzz::service_seeds()),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, frame) in seeds {
            std::fs::write(dir.join(format!("seed_{name}")), frame)?;
        }
        println!("{}", dir.display());
    }
    let (requests, replies) = plughost_fuzz::control_seeds();
    for (target, seeds) in [("control_request", requests), ("control_reply", replies)] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, line) in seeds.into_iter().enumerate() {
            std::fs::write(dir.join(format!("seed_{i}")), line)?;
        }
        println!("{}", dir.display());
    }
    Ok(())
}
