//! Compiles the protocol definitions in `proto/` with `protox` (a pure-Rust
//! protobuf compiler), so a fresh machine needs only cargo, never `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/csce438.proto",
        "proto/course_coordinator.proto",
        "proto/coordinator.proto",
        "proto/replica.proto",
        "proto/synchronizer.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    // Server reflection (grpcurl, grpcio's reflection client) serves the
    // same descriptors the code was generated from.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        // Snapshot pieces (megabytes) are decoded without a copy.
        .bytes(".tinysns.SnapshotChunk.data")
        .compile_fds(fds)?;
    Ok(())
}
