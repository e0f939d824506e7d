//! Writes every target's seeds (`nexus_node::fuzz::seeds`) to `fuzz/corpus/<target>/`, where
//! `cargo fuzz run <target>` starts from them.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, _) in nexus_node::fuzz::TARGETS {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in nexus_node::fuzz::seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed)?;
        }
        println!("{name}: {} seeds in {}", nexus_node::fuzz::seeds(name).len(), dir.display());
    }
    Ok(())
}
