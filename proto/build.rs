fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .bytes(".broker.v1")
        .compile_protos(&["broker/v1/queue.proto", "broker/v1/topic.proto"], &["."])?;
    println!("cargo:rerun-if-changed=broker/v1");
    Ok(())
}
