fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .bytes(".broker.v1")
        .file_descriptor_set_path(out_dir.join("broker_v1_descriptor.bin"))
        .compile_protos(
            &[
                "broker/v1/queue.proto",
                "broker/v1/topic.proto",
                "broker/v1/cluster.proto",
            ],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=broker/v1");
    Ok(())
}
